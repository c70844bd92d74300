"""Pod volumes on disk: content, modes, fsGroup ownership, tokens and their rotation (pure I/O)."""

from __future__ import annotations

import base64
import datetime
import itertools
import os
import pathlib
from typing import Any

import pytest

from tests.lab.nodeagent import volumes as volumes_module
from tests.lab.nodeagent.volumes import PodVolumes, VolumeError

OBJECTS: dict[tuple[str, str], dict[str, Any]] = {
    ("ConfigMap", "settings"): {
        "data": {"mode": "fast", "other": "x"},
        "binaryData": {"blob": base64.b64encode(b"\x00\x01").decode()},
    },
    ("Secret", "creds"): {"data": {"pw": base64.b64encode(b"hunter2").decode()}},
    ("ConfigMap", "kube-root-ca.crt"): {"data": {"ca.crt": "CERT"}},
}


class FakeApi:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.serial = itertools.count(1)

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return OBJECTS.get((kind, name))

    def token(self, namespace: str, account: str, body: dict[str, Any]) -> dict[str, Any]:
        self.requests.append({"namespace": namespace, "account": account, **body})
        ttl = body["spec"]["expirationSeconds"]
        expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=ttl)
        return {
            "spec": body["spec"],
            "status": {
                "token": f"token-{next(self.serial)}",
                "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
        }


def make(
    tmp_path: pathlib.Path, volumes: list[dict[str, Any]], api: FakeApi, fs_group: int | None = None
) -> PodVolumes:
    pod = {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"a": "b"}},
        "spec": {
            "serviceAccountName": "trainer",
            "volumes": volumes,
            "securityContext": {"fsGroup": fs_group} if fs_group else {},
            "containers": [{"name": "c", "resources": {"limits": {"memory": "1Gi"}}}],
        },
    }
    return PodVolumes(
        pod,
        tmp_path / "vol",
        get=api.get,
        request_token=api.token,
        host_ip="10.0.0.1",
        node_allocatable={"memory": "8Gi"},
        run_as_user=1000,
    )


def test_configmap_items_modes_and_secret_with_fs_group(tmp_path: pathlib.Path) -> None:
    api = FakeApi()
    vols = make(
        tmp_path,
        [
            {
                "name": "cfg",
                "configMap": {
                    "name": "settings",
                    "items": [{"key": "mode", "path": "conf/mode", "mode": 0o600}],
                },
            },
            {"name": "all", "configMap": {"name": "settings"}},
            {"name": "sec", "secret": {"secretName": "creds", "defaultMode": 0o400}},
            {
                "name": "info",
                "downwardAPI": {
                    "items": [
                        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                        {
                            "path": "mem",
                            "resourceFieldRef": {
                                "containerName": "c",
                                "resource": "limits.memory",
                                "divisor": "1Mi",
                            },
                        },
                    ]
                },
            },
        ],
        api,
        fs_group=2000,
    )
    vols.setup()
    assert (vols.path("cfg") / "conf" / "mode").read_text() == "fast"
    assert not (vols.path("cfg") / "other").exists()
    assert (vols.path("all") / "blob").read_bytes() == b"\x00\x01"
    pw = vols.path("sec") / "pw"
    assert pw.read_text() == "hunter2"
    info = os.stat(pw)
    assert (info.st_gid, info.st_mode & 0o777) == (2000, 0o440)  # fsGroup gains group read
    assert (vols.path("info") / "labels").read_text() == 'a="b"'
    assert (vols.path("info") / "mem").read_text() == "1024"


def test_missing_objects_wait_unless_optional(tmp_path: pathlib.Path) -> None:
    api = FakeApi()
    with pytest.raises(VolumeError, match='configmap "absent" not found'):
        make(tmp_path, [{"name": "x", "configMap": {"name": "absent"}}], api).setup()
    vols = make(
        tmp_path, [{"name": "x", "secret": {"secretName": "absent", "optional": True}}], api
    )
    vols.setup()
    assert list(p.name for p in vols.path("x").iterdir() if not p.name.startswith("..")) == []
    with pytest.raises(VolumeError, match="not supported"):
        make(tmp_path, [{"name": "pvc", "persistentVolumeClaim": {"claimName": "c"}}], api).setup()


def test_projected_token_is_bound_and_rotated_at_80_percent(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = FakeApi()
    vols = make(
        tmp_path,
        [
            {
                "name": "api",
                "projected": {
                    "sources": [
                        {
                            "serviceAccountToken": {
                                "audience": "lab",
                                "expirationSeconds": 600,
                                "path": "token",
                            }
                        },
                        {
                            "configMap": {
                                "name": "kube-root-ca.crt",
                                "items": [{"key": "ca.crt", "path": "ca.crt"}],
                            }
                        },
                        {
                            "downwardAPI": {
                                "items": [
                                    {
                                        "path": "namespace",
                                        "fieldRef": {"fieldPath": "metadata.namespace"},
                                    }
                                ]
                            }
                        },
                    ]
                },
            }
        ],
        api,
    )
    clock = [1000.0]
    monkeypatch.setattr(volumes_module.time, "monotonic", lambda: clock[0])
    vols.setup()
    root = vols.path("api")
    assert (root / "token").read_text() == "token-1"
    assert (root / "ca.crt").read_text() == "CERT"
    assert (root / "namespace").read_text() == "ns"
    assert os.stat(root / "token").st_uid == 1000  # the containers' runAsUser
    request = api.requests[0]
    assert request["account"] == "trainer"
    assert request["spec"]["audiences"] == ["lab"]
    assert request["spec"]["boundObjectRef"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "p",
        "uid": "u1",
    }
    clock[0] += 470  # < 80 % of 600 s
    assert not vols.tokens_due()
    vols.refresh()
    assert (root / "token").read_text() == "token-1"
    clock[0] += 15  # > 80 %
    assert vols.tokens_due()
    vols.refresh()
    assert (root / "token").read_text() == "token-2"
    assert not vols.tokens_due()
