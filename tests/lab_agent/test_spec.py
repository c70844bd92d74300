"""The kubelet rules the node agent applies before it starts a process (pure functions)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from tests.lab.nodeagent import spec as specs
from tests.lab.nodeagent.spec import ConfigError, ImageConfig

TRAINER = ImageConfig(
    prefix="tidetune/trainer",
    entrypoint=("python", "-m"),
    cmd=("train",),
    user="10001",
    env={"PATH": "/venv/bin:/usr/bin"},
)
ALPINE = ImageConfig(prefix="alpine", cmd=("/bin/sh",))


def pod(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "p",
            "namespace": "ns",
            "uid": "u-1",
            "labels": {"a": "1", "b": "2"},
            "annotations": {"note": "x"},
        },
        "spec": {"nodeName": "gpu-0", "serviceAccountName": "sa", **spec},
    }


def lookups(secrets: dict[str, dict[str, str]], configmaps: dict[str, dict[str, str]]) -> Any:
    return (lambda ns, name: secrets.get(name), lambda ns, name: configmaps.get(name))


def env_of(
    container: dict[str, Any], secrets=None, configmaps=None, the_pod=None
) -> dict[str, str]:
    get_secret, get_cm = lookups(secrets or {}, configmaps or {})
    return specs.container_env(
        the_pod or pod(),
        container,
        secrets=get_secret,
        configmaps=get_cm,
        api_host="10.200.0.1",
        api_port=443,
        pod_ip="10.200.1.7",
        host_ip="10.200.1.1",
        node_allocatable={"cpu": "8", "memory": "32Gi"},
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)-$(B)", "1-2"),
        ("$$(A)", "$(A)"),
        ("$(MISSING)", "$(MISSING)"),
        ("$(A", "$(A"),
        ("a$b", "a$b"),
        ("$", "$"),
        ("$$", "$"),
    ],
)
def test_expansion_follows_the_kubelet(text: str, expected: str) -> None:
    assert specs.expand(text, {"A": "1", "B": "2"}) == expected


def test_env_order_refs_and_service_variables() -> None:
    container = {
        "name": "c",
        "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
        "env": [
            {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "GREETING", "value": "hi $(NAME) from $(CM_K)"},
            {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "s", "key": "pw"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "LABEL", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['b']"}}},
            {
                "name": "MEM",
                "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
            },
            {
                "name": "CPU",
                "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}},
            },
        ],
        "resources": {"requests": {"cpu": "250m"}},
    }
    env = env_of(
        container, secrets={"s": {"pw": "hunter2"}}, configmaps={"cm": {"K": "v", "bad key": "x"}}
    )
    assert env["GREETING"] == "hi p from v"
    assert env["PW"] == "hunter2"
    assert env["IP"] == "10.200.1.7"
    assert env["LABEL"] == "2"
    assert env["MEM"] == str(32 * 1024)  # no limit: the node's allocatable
    assert env["CPU"] == "250"
    assert "CM_bad key" not in env
    assert env["KUBERNETES_SERVICE_HOST"] == "10.200.0.1"
    assert env["KUBERNETES_SERVICE_PORT"] == "443"
    assert env["KUBERNETES_PORT_443_TCP"] == "tcp://10.200.0.1:443"


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ({"secretKeyRef": {"name": "nope", "key": "k"}}, 'secret "nope" not found'),
        ({"secretKeyRef": {"name": "s", "key": "k"}}, "couldn't find key k in Secret ns/s"),
        ({"configMapKeyRef": {"name": "nope", "key": "k"}}, 'configmap "nope" not found'),
    ],
)
def test_missing_references_are_config_errors(ref: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        env_of({"name": "c", "env": [{"name": "X", "valueFrom": ref}]}, secrets={"s": {}})


def test_optional_references_are_skipped() -> None:
    env = env_of(
        {
            "name": "c",
            "env": [
                {
                    "name": "X",
                    "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": True}},
                }
            ],
        }
    )
    assert "X" not in env


@pytest.mark.parametrize(
    ("container", "argv"),
    [
        ({}, ["python", "-m", "train"]),
        ({"args": ["serve", "$(PORT)"]}, ["python", "-m", "serve", "8080"]),
        ({"command": ["sh", "-c"]}, ["sh", "-c"]),
        (
            {"command": ["sh"], "args": ["-c", "echo $$(PORT) $(PORT)"]},
            ["sh", "-c", "echo $(PORT) 8080"],
        ),
    ],
)
def test_argv_from_command_args_and_image(container: dict[str, Any], argv: list[str]) -> None:
    assert specs.container_argv(container, TRAINER, {"PORT": "8080"}) == argv


def test_image_resolution_longest_prefix_and_unknown() -> None:
    special = ImageConfig(prefix="tidetune/trainer-gpu")
    images = [TRAINER, ALPINE, special]
    assert specs.resolve_image(images, "docker.io/library/alpine:3.19") is ALPINE
    assert specs.resolve_image(images, "ghcr.io/tidetune/trainer:0.1") is TRAINER
    assert specs.resolve_image(images, "tidetune/trainer-gpu:1") is special
    with pytest.raises(specs.ImageNotFound, match='Failed to pull image "busybox"'):
        specs.resolve_image(images, "busybox")


def test_identity_and_run_as_non_root() -> None:
    the_pod = pod(
        securityContext={
            "runAsUser": 1000,
            "runAsGroup": 3000,
            "fsGroup": 2000,
            "supplementalGroups": [4000],
        }
    )
    ident = specs.identity(the_pod, {"name": "c"}, ALPINE)
    assert (ident.uid, ident.gid, ident.groups) == (1000, 3000, (2000, 4000))
    assert specs.identity(pod(), {"name": "c"}, TRAINER).uid == 10001
    with pytest.raises(ConfigError, match="image will run as root"):
        specs.identity(pod(), {"name": "c", "securityContext": {"runAsNonRoot": True}}, ALPINE)
    with pytest.raises(ConfigError, match="runAsUser breaks non-root policy"):
        specs.identity(
            pod(securityContext={"runAsNonRoot": True, "runAsUser": 0}), {"name": "c"}, TRAINER
        )
    with pytest.raises(ConfigError, match="non-numeric user"):
        specs.identity(
            pod(securityContext={"runAsNonRoot": True}),
            {"name": "c"},
            ImageConfig(prefix="x", user="nobody"),
        )


@pytest.mark.parametrize(
    ("text", "value"),
    [("500m", 0.5), ("1Gi", 2**30), ("2", 2), ("1e3", 1000), ("1.5k", 1500), ("10Mi", 10 * 2**20)],
)
def test_quantities(text: str, value: float) -> None:
    assert specs.parse_quantity(text) == value


def test_bad_quantity_names_the_value() -> None:
    with pytest.raises(ValueError, match="'12x'"):
        specs.parse_quantity("12x")


def test_resolv_conf_cluster_first_and_dns_config() -> None:
    the_pod = pod(
        dnsConfig={"searches": ["extra.local"], "options": [{"name": "ndots", "value": "2"}]}
    )
    text = specs.resolv_conf(
        the_pod,
        cluster_dns="10.200.0.2",
        cluster_domain="cluster.local",
        host_resolv="nameserver 8.8.8.8\nsearch corp.example\n",
    )
    assert text.splitlines() == [
        "nameserver 10.200.0.2",
        "search ns.svc.cluster.local svc.cluster.local cluster.local corp.example extra.local",
        "options ndots:2",
    ]
    host = specs.resolv_conf(
        pod(hostNetwork=True),
        cluster_dns="10.200.0.2",
        cluster_domain="cluster.local",
        host_resolv="nameserver 8.8.8.8\n",
    )
    assert host == "nameserver 8.8.8.8\n"


def test_hosts_file_with_subdomain_and_aliases() -> None:
    the_pod = pod(
        hostname="master-0",
        subdomain="job",
        hostAliases=[{"ip": "1.2.3.4", "hostnames": ["a", "b"]}],
    )
    text = specs.hosts_file(the_pod, "10.200.1.7", "cluster.local")
    assert "10.200.1.7\tmaster-0.job.ns.svc.cluster.local\tmaster-0" in text
    assert "1.2.3.4\ta\tb" in text
    assert text.startswith("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n")


def test_secret_values_decode() -> None:
    data = {"k": base64.b64encode(b"v\xc3\xa9").decode()}
    assert specs.decode_secret(data) == {"k": "vé"}
