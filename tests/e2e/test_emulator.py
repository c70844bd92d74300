"""The Kubernetes side of the lab: the API emulator, and kopf and kubectl working against it.

Each test asserts behaviour a real API server has and stock kmock 0.8 lacked (see
``tests/support/k8s.py``). Figures (latencies, reconcile time) are printed; run with ``-s``.
"""

from __future__ import annotations

import base64
import functools
import http.client
import io
import json
import os
import pathlib
import signal
import ssl
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import kmock
import kubernetes
import pytest
import yaml

from tests.lab.lab import REPO_ROOT, Lab
from tests.support.k8s import EmulatorServer, KubernetesEmulator, ResourceDef

pytestmark = pytest.mark.e2e

FTJ = ("tidetune.io", "v1alpha1", "finetunejobs")
PTJ = ("kubeflow.org", "v1", "pytorchjobs")

WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.test"},
    "spec": {
        "group": "example.test",
        "scope": "Namespaced",
        "names": {
            "plural": "widgets",
            "singular": "widget",
            "kind": "Widget",
            "shortNames": ["wg"],
            "categories": ["gadgets"],
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                    {
                        "name": "Ready",
                        "type": "string",
                        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
                    },
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["color"],
                                "properties": {
                                    "size": {"type": "integer", "minimum": 1, "default": 3},
                                    "color": {"type": "string", "enum": ["red", "blue"]},
                                    "extra": {
                                        "type": "object",
                                        "x-kubernetes-preserve-unknown-fields": True,
                                    },
                                },
                            },
                            "status": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                            },
                        },
                    }
                },
            }
        ],
    },
}


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
) -> Any:
    """Poll until ``predicate()`` is truthy; return its value or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def client_for(server: EmulatorServer) -> kubernetes.client.ApiClient:
    return kubernetes.config.new_client_from_config(config_file=str(server.kubeconfig))


def stored(
    server: EmulatorServer, plural: str, namespace: str | None, name: str
) -> dict[str, Any] | None:
    em = server.emulator
    return server.call(lambda: em.get_object(plural, namespace, name))


def make_namespace(core: kubernetes.client.CoreV1Api, name: str) -> None:
    core.create_namespace({"metadata": {"name": name}})


class RawHTTP:
    """Keep-alive https client with the lab's token (for timing and raw protocol checks)."""

    def __init__(self, server: EmulatorServer) -> None:
        ctx = ssl.create_default_context(cafile=str(server.ca_file))
        self.conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=ctx, timeout=10)
        self.headers = {"Authorization": f"Bearer {server.token}"}

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        data = None if body is None else json.dumps(body).encode()
        hdrs = {**self.headers, "Content-Type": "application/json", **(headers or {})}
        self.conn.request(method, path, body=data, headers=hdrs)
        resp = self.conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()

    def json(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        status, _, data = self.request(method, path, body, **kw)
        return status, json.loads(data)

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def raw(k8s: EmulatorServer) -> Iterator[RawHTTP]:
    client = RawHTTP(k8s)
    yield client
    client.close()


@pytest.fixture
def api(k8s: EmulatorServer) -> kubernetes.client.ApiClient:
    return client_for(k8s)


def ptj(name: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name},
        "spec": {"replicas": 1},
    }
    for key, value in extra.items():
        body[key] = value
    return body


# ---------------------------------------------------------------------------------------------
# API semantics
# ---------------------------------------------------------------------------------------------


def test_create_answers_201_with_the_object_and_server_fields(
    api: kubernetes.client.ApiClient,
) -> None:
    co = kubernetes.client.CustomObjectsApi(api)
    body = ptj("a")  # no metadata.namespace: it comes from the URL
    created = co.create_namespaced_custom_object(*PTJ[:2], "default", PTJ[2], body)
    assert created is not None, "create_namespaced_custom_object needs a 201 to return the object"
    meta = created["metadata"]
    assert meta["namespace"] == "default"
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z")
    assert meta["generation"] == 1 and int(meta["resourceVersion"]) > 0

    with pytest.raises(kubernetes.client.ApiException) as exc:
        co.create_namespaced_custom_object(*PTJ[:2], "default", PTJ[2], ptj("a"))
    assert exc.value.status == 409
    assert json.loads(exc.value.body)["reason"] == "AlreadyExists"

    with pytest.raises(kubernetes.client.ApiException) as exc:
        co.get_namespaced_custom_object(*PTJ[:2], "default", PTJ[2], "nope")
    status = json.loads(exc.value.body)
    assert exc.value.status == 404
    assert status["kind"] == "Status" and status["reason"] == "NotFound"
    assert status["details"] == {"name": "nope", "group": "kubeflow.org", "kind": "pytorchjobs"}

    with pytest.raises(kubernetes.client.ApiException) as exc:
        co.create_namespaced_custom_object(*PTJ[:2], "no-such-ns", PTJ[2], ptj("b"))
    assert exc.value.status == 404
    assert json.loads(exc.value.body)["message"] == 'namespaces "no-such-ns" not found'

    with pytest.raises(kubernetes.client.ApiException) as exc:
        co.create_namespaced_custom_object(*PTJ[:2], "default", PTJ[2], ptj("Bad_Name"))
    assert exc.value.status == 422 and json.loads(exc.value.body)["reason"] == "Invalid"

    generated = co.create_namespaced_custom_object(
        *PTJ[:2], "default", PTJ[2], {"metadata": {"generateName": "gen-"}, "spec": {}}
    )
    assert (
        generated["metadata"]["name"].startswith("gen-") and len(generated["metadata"]["name"]) == 9
    )


def test_resource_version_conflicts_put_and_generation(
    api: kubernetes.client.ApiClient, raw: RawHTTP
) -> None:
    co = kubernetes.client.CustomObjectsApi(api)
    first = co.create_namespaced_custom_object(*PTJ[:2], "default", PTJ[2], ptj("rv"))
    rv1 = first["metadata"]["resourceVersion"]

    # PUT (replace) with the current resourceVersion works and bumps it and the generation.
    first["spec"] = {"replicas": 2}
    replaced = co.replace_namespaced_custom_object(*PTJ[:2], "default", PTJ[2], "rv", first)
    assert int(replaced["metadata"]["resourceVersion"]) > int(rv1)
    assert replaced["metadata"]["generation"] == 2
    assert replaced["metadata"]["uid"] == first["metadata"]["uid"]

    # The same PUT again carries a stale resourceVersion: 409 Conflict.
    with pytest.raises(kubernetes.client.ApiException) as exc:
        co.replace_namespaced_custom_object(*PTJ[:2], "default", PTJ[2], "rv", first)
    assert exc.value.status == 409 and json.loads(exc.value.body)["reason"] == "Conflict"

    # A merge patch carrying a stale resourceVersion: 409 too.
    path = "/apis/kubeflow.org/v1/namespaces/default/pytorchjobs/rv"
    status, body = raw.json(
        "PATCH",
        path,
        {"metadata": {"resourceVersion": rv1}, "spec": {"replicas": 5}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert status == 409, body

    # A JSON patch whose "test" of the resourceVersion fails: 422 (what kopf expects).
    ops = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": rv1},
        {"op": "add", "path": "/metadata/finalizers", "value": ["x/y"]},
    ]
    status, body = raw.json(
        "PATCH", path, ops, headers={"Content-Type": "application/json-patch+json"}
    )
    assert status == 422, body

    # Metadata-only and status changes do not bump the generation; spec changes do.
    labelled = co.patch_namespaced_custom_object(
        *PTJ[:2], "default", PTJ[2], "rv", {"metadata": {"labels": {"a": "b"}}}
    )
    assert labelled["metadata"]["generation"] == 2
    with_status = co.patch_namespaced_custom_object_status(
        *PTJ[:2], "default", PTJ[2], "rv", {"status": {"phase": "X"}}
    )
    assert with_status["metadata"]["generation"] == 2 and with_status["status"] == {"phase": "X"}
    respec = co.patch_namespaced_custom_object(
        *PTJ[:2], "default", PTJ[2], "rv", {"spec": {"replicas": 3}}
    )
    assert respec["metadata"]["generation"] == 3

    # A no-op patch does not bump the resourceVersion.
    again = co.patch_namespaced_custom_object(
        *PTJ[:2], "default", PTJ[2], "rv", {"spec": {"replicas": 3}}
    )
    assert again["metadata"]["resourceVersion"] == respec["metadata"]["resourceVersion"]


def test_status_subresource_is_isolated(api: kubernetes.client.ApiClient) -> None:
    co = kubernetes.client.CustomObjectsApi(api)
    created = co.create_namespaced_custom_object(
        *PTJ[:2], "default", PTJ[2], ptj("st", status={"phase": "Forged"})
    )
    assert "status" not in created, "status is not set on create for a status subresource"

    co.patch_namespaced_custom_object_status(
        *PTJ[:2], "default", PTJ[2], "st", {"status": {"phase": "Running"}, "spec": {"replicas": 9}}
    )
    obj = co.get_namespaced_custom_object(*PTJ[:2], "default", PTJ[2], "st")
    assert obj["status"] == {"phase": "Running"} and obj["spec"] == {"replicas": 1}

    co.patch_namespaced_custom_object(
        *PTJ[:2], "default", PTJ[2], "st", {"status": {"phase": "Hacked"}, "spec": {"replicas": 2}}
    )
    obj = co.get_namespaced_custom_object(*PTJ[:2], "default", PTJ[2], "st")
    assert obj["status"] == {"phase": "Running"} and obj["spec"] == {"replicas": 2}

    obj["status"] = {"phase": "ViaPut"}
    replaced = co.replace_namespaced_custom_object(*PTJ[:2], "default", PTJ[2], "st", obj)
    assert replaced["status"] == {"phase": "Running"}


def test_label_and_field_selectors_on_list(api: kubernetes.client.ApiClient) -> None:
    co = kubernetes.client.CustomObjectsApi(api)
    core = kubernetes.client.CoreV1Api(api)
    make_namespace(core, "sel")
    labels = {
        "j1": {"team": "a", "tier": "gold"},
        "j2": {"team": "b"},
        "j3": {"team": "a", "tier": "silver"},
    }
    for name, lab in labels.items():
        co.create_namespaced_custom_object(
            *PTJ[:2], "sel", PTJ[2], ptj(name, metadata={"name": name, "labels": lab})
        )
    co.create_namespaced_custom_object(*PTJ[:2], "default", PTJ[2], ptj("j1"))

    def names(**kw: Any) -> list[str]:
        result = co.list_namespaced_custom_object(*PTJ[:2], "sel", PTJ[2], **kw)
        return [i["metadata"]["name"] for i in result["items"]]

    assert names(label_selector="team=a") == ["j1", "j3"]
    assert names(label_selector="team==a,tier!=gold") == ["j3"]
    assert names(label_selector="tier in (gold, silver)") == ["j1", "j3"]
    assert names(label_selector="tier notin (gold)") == ["j2", "j3"]
    assert names(label_selector="tier") == ["j1", "j3"]
    assert names(label_selector="!tier") == ["j2"]
    assert names(field_selector="metadata.name=j2") == ["j2"]
    assert names(field_selector="metadata.name!=j2") == ["j1", "j3"]
    everywhere = co.list_cluster_custom_object(
        *PTJ[:2], PTJ[2], field_selector="metadata.namespace=default"
    )
    assert [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in everywhere["items"]] == [
        ("default", "j1")
    ]

    listing = co.list_namespaced_custom_object(*PTJ[:2], "sel", PTJ[2], limit=2)
    assert listing["kind"] == "PyTorchJobList" and listing["apiVersion"] == "kubeflow.org/v1"
    assert int(listing["metadata"]["resourceVersion"]) > 0
    assert len(listing["items"]) == 2 and listing["metadata"]["continue"]
    rest = co.list_namespaced_custom_object(
        *PTJ[:2], "sel", PTJ[2], limit=2, _continue=listing["metadata"]["continue"]
    )
    assert [i["metadata"]["name"] for i in rest["items"]] == ["j3"] and not rest["metadata"].get(
        "continue"
    )

    with pytest.raises(kubernetes.client.ApiException) as exc:
        names(label_selector="team in (a")
    assert exc.value.status == 400


def test_watch_resumes_filters_and_times_out(api: kubernetes.client.ApiClient) -> None:
    co = kubernetes.client.CustomObjectsApi(api)
    co.create_namespaced_custom_object(
        *PTJ[:2], "default", PTJ[2], ptj("w0", metadata={"name": "w0", "labels": {"w": "1"}})
    )
    listing = co.list_namespaced_custom_object(*PTJ[:2], "default", PTJ[2], label_selector="w=1")
    since = listing["metadata"]["resourceVersion"]

    events: list[tuple[str, str]] = []

    def watch() -> None:
        w = kubernetes.watch.Watch()
        for ev in w.stream(
            co.list_namespaced_custom_object,
            *PTJ[:2],
            "default",
            PTJ[2],
            label_selector="w=1",
            resource_version=since,
            timeout_seconds=2,
        ):
            events.append((ev["type"], ev["object"]["metadata"]["name"]))

    started = time.monotonic()
    thread = threading.Thread(target=watch)
    thread.start()
    time.sleep(0.2)
    co.create_namespaced_custom_object(
        *PTJ[:2], "default", PTJ[2], ptj("w1", metadata={"name": "w1", "labels": {"w": "1"}})
    )
    co.create_namespaced_custom_object(*PTJ[:2], "default", PTJ[2], ptj("other"))  # never matches
    co.patch_namespaced_custom_object(*PTJ[:2], "default", PTJ[2], "w1", {"spec": {"replicas": 2}})
    co.patch_namespaced_custom_object(
        *PTJ[:2], "default", PTJ[2], "w0", {"metadata": {"labels": {"w": None}}}
    )
    co.patch_namespaced_custom_object(
        *PTJ[:2], "default", PTJ[2], "other", {"metadata": {"labels": {"w": "1"}}}
    )
    co.delete_namespaced_custom_object(*PTJ[:2], "default", PTJ[2], "w1")
    thread.join(10)
    elapsed = time.monotonic() - started
    assert not thread.is_alive(), "timeoutSeconds=2 must end the watch"
    assert 1.8 <= elapsed < 6, elapsed
    assert events == [
        ("ADDED", "w1"),
        ("MODIFIED", "w1"),
        ("DELETED", "w0"),  # stopped matching the selector
        ("ADDED", "other"),  # started matching it
        ("DELETED", "w1"),
    ]


def test_watch_initial_events_end_with_a_bookmark(k8s: EmulatorServer, raw: RawHTTP) -> None:
    co = kubernetes.client.CustomObjectsApi(client_for(k8s))
    for name in ("i1", "i2"):
        co.create_namespaced_custom_object(*PTJ[:2], "default", PTJ[2], ptj(name))
    path = (
        "/apis/kubeflow.org/v1/namespaces/default/pytorchjobs?watch=true&sendInitialEvents=true"
        "&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan&timeoutSeconds=1"
    )
    status, headers, body = raw.request("GET", path)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    events = [json.loads(line) for line in body.decode().splitlines()]
    assert [(e["type"], e["object"]["metadata"].get("name")) for e in events] == [
        ("ADDED", "i1"),
        ("ADDED", "i2"),
        ("BOOKMARK", None),
    ]
    assert events[-1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}

    # A resourceVersion older than the retained event log: 410 Gone in the stream.
    k8s.call(lambda: setattr(k8s.emulator._logs[PTJ], "trimmed_rv", 10**6))
    status, _, body = raw.request(
        "GET",
        "/apis/kubeflow.org/v1/namespaces/default/pytorchjobs?watch=true"
        "&resourceVersion=1&timeoutSeconds=1",
    )
    event = json.loads(body.decode().splitlines()[0])
    assert event["type"] == "ERROR" and event["object"]["code"] == 410


def test_finalizers_and_owner_reference_cascade(
    api: kubernetes.client.ApiClient, k8s: EmulatorServer
) -> None:
    co = kubernetes.client.CustomObjectsApi(api)
    core = kubernetes.client.CoreV1Api(api)
    owner = co.create_namespaced_custom_object(
        *PTJ[:2],
        "default",
        PTJ[2],
        ptj("owner", metadata={"name": "owner", "finalizers": ["test/hold"]}),
    )
    child = core.create_namespaced_config_map(
        "default",
        {
            "metadata": {
                "name": "child",
                "ownerReferences": [
                    {
                        "apiVersion": "kubeflow.org/v1",
                        "kind": "PyTorchJob",
                        "name": "owner",
                        "uid": owner["metadata"]["uid"],
                    }
                ],
            }
        },
    )
    core.create_namespaced_secret(
        "default",
        {
            "metadata": {
                "name": "grandchild",
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "name": "child",
                        "uid": child.metadata.uid,
                    }
                ],
            }
        },
    )
    other = core.create_namespaced_config_map("default", {"metadata": {"name": "other-owner"}})
    core.create_namespaced_config_map(
        "default",
        {
            "metadata": {
                "name": "shared",
                "ownerReferences": [
                    {
                        "apiVersion": "kubeflow.org/v1",
                        "kind": "PyTorchJob",
                        "name": "owner",
                        "uid": owner["metadata"]["uid"],
                    },
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "name": "other-owner",
                        "uid": other.metadata.uid,
                    },
                ],
            }
        },
    )

    co.delete_namespaced_custom_object(*PTJ[:2], "default", PTJ[2], "owner")
    held = stored(k8s, "pytorchjobs", "default", "owner")
    assert held is not None and held["metadata"]["deletionTimestamp"], (
        "a finalizer holds the object"
    )
    assert stored(k8s, "configmaps", "default", "child") is not None

    with pytest.raises(kubernetes.client.ApiException) as exc:  # no new finalizers while deleting
        co.patch_namespaced_custom_object(
            *PTJ[:2],
            "default",
            PTJ[2],
            "owner",
            {"metadata": {"finalizers": ["test/hold", "test/more"]}},
        )
    assert exc.value.status == 422

    co.patch_namespaced_custom_object(
        *PTJ[:2], "default", PTJ[2], "owner", {"metadata": {"finalizers": None}}
    )
    assert stored(k8s, "pytorchjobs", "default", "owner") is None
    assert stored(k8s, "configmaps", "default", "child") is None, "dependents are collected"
    assert stored(k8s, "secrets", "default", "grandchild") is None, "recursively"
    assert stored(k8s, "configmaps", "default", "shared") is not None, "another owner still exists"

    core.delete_namespaced_config_map("other-owner", "default")
    assert stored(k8s, "configmaps", "default", "shared") is None

    # Orphan propagation strips the owner reference instead.
    o2 = core.create_namespaced_config_map("default", {"metadata": {"name": "o2"}})
    core.create_namespaced_config_map(
        "default",
        {
            "metadata": {
                "name": "kept",
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "o2", "uid": o2.metadata.uid}
                ],
            }
        },
    )
    core.delete_namespaced_config_map("o2", "default", propagation_policy="Orphan")
    kept = stored(k8s, "configmaps", "default", "kept")
    assert kept is not None and "ownerReferences" not in kept["metadata"]


def test_namespace_deletion_removes_its_contents(
    api: kubernetes.client.ApiClient, k8s: EmulatorServer
) -> None:
    core = kubernetes.client.CoreV1Api(api)
    make_namespace(core, "doomed")
    core.create_namespaced_config_map("doomed", {"metadata": {"name": "c"}})
    core.create_namespaced_secret("doomed", {"metadata": {"name": "s"}, "stringData": {"k": "v"}})
    assert base64.b64decode(stored(k8s, "secrets", "doomed", "s")["data"]["k"]) == b"v"  # type: ignore[index]
    core.delete_namespace("doomed")
    assert stored(k8s, "namespaces", None, "doomed") is None
    assert (
        stored(k8s, "configmaps", "doomed", "c") is None
        and stored(k8s, "secrets", "doomed", "s") is None
    )


def test_crd_schema_defaults_prunes_validates_and_prints(k8s: EmulatorServer, raw: RawHTTP) -> None:
    status, crd = raw.json(
        "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", WIDGET_CRD
    )
    assert status == 201
    assert {c["type"] for c in crd["status"]["conditions"]} == {"Established", "NamesAccepted"}
    base = "/apis/example.test/v1/namespaces/default/widgets"
    status, obj = raw.json(
        "POST",
        base,
        {
            "apiVersion": "example.test/v1",
            "kind": "Widget",
            "metadata": {"name": "w"},
            "spec": {"color": "red", "junk": 1, "extra": {"kept": True}},
        },
    )
    assert status == 201, obj
    assert obj["spec"] == {"color": "red", "size": 3, "extra": {"kept": True}}, (
        "defaulted and pruned"
    )

    status, err = raw.json(
        "POST", base, {"metadata": {"name": "bad"}, "spec": {"size": 0, "color": "green"}}
    )
    assert status == 422 and err["reason"] == "Invalid"
    fields = {c["field"] for c in err["details"]["causes"]}
    assert fields == {"spec.size", "spec.color"}, err
    assert 'Widget.example.test "bad" is invalid' in err["message"]

    status, _ = raw.json(
        "PATCH",
        f"{base}/w/status",
        {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert status == 200
    status, table = raw.json(
        "GET",
        base,
        headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"},
    )
    assert table["kind"] == "Table"
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Size", "Ready", "Age"]
    assert table["rows"][0]["cells"][:3] == ["w", 3, "True"]
    assert table["rows"][0]["object"]["kind"] == "PartialObjectMetadata"

    status, resources = raw.json("GET", "/apis/example.test/v1")
    entry = next(r for r in resources["resources"] if r["name"] == "widgets")
    assert (
        entry["shortNames"] == ["wg"]
        and entry["categories"] == ["gadgets"]
        and "watch" in entry["verbs"]
    )
    assert any(r["name"] == "widgets/status" for r in resources["resources"])

    status, _ = raw.json(
        "DELETE", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.test"
    )
    assert status == 200
    status, _ = raw.json("GET", base)
    assert status == 404, "deleting the CRD stops serving its resource"


def test_server_side_apply_dry_run_and_deletecollection(raw: RawHTTP, k8s: EmulatorServer) -> None:
    base = "/api/v1/namespaces/default/configmaps"
    apply = {"Content-Type": "application/apply-patch+yaml"}
    status, _ = raw.json("PATCH", f"{base}/ssa", {"data": {"a": "1"}}, headers=apply)
    assert status == 422, "server-side apply needs a fieldManager"
    status, obj = raw.json(
        "PATCH", f"{base}/ssa?fieldManager=t", {"data": {"a": "1"}}, headers=apply
    )
    assert status == 201 and obj["data"] == {"a": "1"}, "apply creates"
    status, obj = raw.json(
        "PATCH", f"{base}/ssa?fieldManager=t", {"data": {"b": "2"}}, headers=apply
    )
    assert status == 200 and obj["data"] == {"a": "1", "b": "2"}

    status, obj = raw.json("POST", f"{base}?dryRun=All", {"metadata": {"name": "dry"}})
    assert status == 201 and stored(k8s, "configmaps", "default", "dry") is None

    for name, team in (("c1", "x"), ("c2", "x"), ("c3", "y")):
        raw.json("POST", base, {"metadata": {"name": name, "labels": {"team": team}}})
    status, gone = raw.json("DELETE", f"{base}?labelSelector=team%3Dx")
    assert status == 200 and sorted(i["metadata"]["name"] for i in gone["items"]) == ["c1", "c2"]
    assert stored(k8s, "configmaps", "default", "c3") is not None


def test_token_is_required(k8s: EmulatorServer) -> None:
    ctx = ssl.create_default_context(cafile=str(k8s.ca_file))
    conn = http.client.HTTPSConnection("127.0.0.1", k8s.port, context=ctx, timeout=5)
    conn.request("GET", "/api/v1/namespaces", headers={"Authorization": "Bearer wrong"})
    resp = conn.getresponse()
    assert resp.status == 401 and json.loads(resp.read())["reason"] == "Unauthorized"
    conn.close()


def test_kmock_dsl_still_injects_faults(
    k8s: EmulatorServer, api: kubernetes.client.ApiClient
) -> None:
    core = kubernetes.client.CoreV1Api(api)
    reaction = k8s.emulator["get", kmock.resource("v1/secrets")][:1] << 503
    with pytest.raises(kubernetes.client.ApiException) as exc:
        core.list_namespaced_secret("default")
    assert exc.value.status == 503
    assert len(list(reaction)) == 1
    assert core.list_namespaced_secret("default").items == [], "the reaction served its one request"


def test_get_latency_stays_flat_after_600_creates(k8s: EmulatorServer, raw: RawHTTP) -> None:
    path = "/api/v1/namespaces/default/configmaps"
    raw.json("POST", path, {"metadata": {"name": "probe"}, "data": {"a": "b"}})

    def get_ms(n: int = 200) -> float:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            status, _, _ = raw.request("GET", f"{path}/probe")
            times.append((time.perf_counter() - t0) * 1000)
            assert status == 200
        return statistics.median(times)

    before = get_ms()
    t0 = time.perf_counter()
    for i in range(600):
        status, _, _ = raw.request(
            "POST", path, {"metadata": {"name": f"cm-{i}"}, "data": {"i": str(i)}}
        )
        assert status == 201
    create_ms = (time.perf_counter() - t0) * 1000 / 600
    after = get_ms()
    print(
        f"\n[figures] GET p50 before={before:.2f} ms, after 600 creates={after:.2f} ms;"
        f" create mean={create_ms:.2f} ms"
    )
    assert after < before * 3 + 2, (
        f"GET got slower with more objects: {before:.2f} -> {after:.2f} ms"
    )
    assert len(k8s.emulator._requests) <= k8s.emulator.request_log_limit


# ---------------------------------------------------------------------------------------------
# kubectl
# ---------------------------------------------------------------------------------------------


def quickstart(name: str = "quickstart") -> str:
    doc = yaml.safe_load((REPO_ROOT / "examples" / "quickstart.yaml").read_text())
    doc["metadata"] = {"name": name, "labels": {"team": "a"}}
    return yaml.safe_dump(doc)


def test_kubectl_apply_get_describe_delete(k8s: EmulatorServer) -> None:
    def kubectl(*args: str, input: str | None = None) -> str:
        result = k8s.kubectl(*args, input=input)
        assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
        return result.stdout

    applied = kubectl("apply", "--validate=false", "-f", str(REPO_ROOT / "crds"))
    assert "customresourcedefinition.apiextensions.k8s.io/finetunejobs.tidetune.io" in applied
    assert "finetunejob.tidetune.io/quickstart created" in kubectl(
        "apply", "--validate=false", "-f", "-", input=quickstart()
    )
    em, res = k8s.emulator, k8s.emulator.find_resource("ftj")
    k8s.call(
        lambda: em._patch(
            res,
            "default",
            "quickstart",
            {
                "status": {
                    "phase": "Running",
                    "progress": {"percent": 42.5},
                    "metrics": {"trainLoss": 1.25},
                    "pool": "night-a100",
                }
            },
            "application/merge-patch+json",
            "status",
            {},
        )
    )
    table = kubectl("get", "ftj")
    header, row = table.splitlines()[:2]
    assert header.split() == ["NAME", "PHASE", "PROGRESS", "LOSS", "POOL", "AGE"], (
        "printer columns of the CRD"
    )
    assert row.split()[:5] == ["quickstart", "Running", "42.5", "1.25", "night-a100"]
    assert "finetunejob.tidetune.io/quickstart" in kubectl("get", "tidetune"), "the category works"
    assert (
        kubectl("get", "ftj", "-l", "team=a", "-o", "name").strip()
        == "finetunejob.tidetune.io/quickstart"
    )
    assert kubectl("get", "ftj", "-l", "team!=a", "-o", "name").strip() == ""

    as_yaml = yaml.safe_load(kubectl("get", "ftj", "quickstart", "-o", "yaml"))
    assert as_yaml["spec"]["method"] == "sft" and as_yaml["status"]["phase"] == "Running"
    uid = as_yaml["metadata"]["uid"]

    kubernetes.client.CoreV1Api(client_for(k8s)).create_namespaced_event(
        "default",
        {
            "metadata": {"generateName": "quickstart."},
            "involvedObject": {
                "apiVersion": "tidetune.io/v1alpha1",
                "kind": "FineTuneJob",
                "name": "quickstart",
                "namespace": "default",
                "uid": uid,
            },
            "reason": "Admitted",
            "message": "admitted to pool night-a100",
            "type": "Normal",
            "firstTimestamp": "2026-01-01T00:00:00Z",
            "lastTimestamp": "2026-01-01T00:00:00Z",
            "count": 1,
            "source": {"component": "tidetune"},
        },
    )
    described = kubectl("describe", "ftj", "quickstart")
    assert "Phase:" in described and "Running" in described
    events_part = described.split("Events:", 1)[1]
    assert "Admitted" in events_part and "admitted to pool night-a100" in events_part

    assert "deleted" in kubectl("delete", "ftj", "quickstart")
    assert kubectl("get", "ftj", "-o", "name").strip() == ""


def test_kubectl_create_wait_and_watch(k8s: EmulatorServer) -> None:
    assert k8s.kubectl("create", "namespace", "team-a").returncode == 0  # protobuf body
    made = k8s.kubectl(
        "create", "secret", "generic", "creds", "-n", "team-a", "--from-literal=accessKey=AK"
    )
    assert made.returncode == 0, made.stderr
    assert base64.b64decode(stored(k8s, "secrets", "team-a", "creds")["data"]["accessKey"]) == b"AK"  # type: ignore[index]
    assert (
        k8s.kubectl(
            "apply", "--validate=false", "-n", "team-a", "-f", "-", input=quickstart("w1")
        ).returncode
        == 0
    )

    base = [
        *map(str, ["--kubeconfig", k8s.kubeconfig, "--cache-dir", k8s.workdir / "kubectl-cache"])
    ]
    from tests.support.k8s import kubectl_binary

    watch = subprocess.Popen(
        [kubectl_binary(), *base, "get", "ftj", "-n", "team-a", "-w", "--request-timeout=3s"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    waiter = subprocess.Popen(
        [
            kubectl_binary(),
            *base,
            "wait",
            "-n",
            "team-a",
            "--for=condition=Ready",
            "ftj/w1",
            "--timeout=15s",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)
    em, res = k8s.emulator, k8s.emulator.find_resource("ftj")
    k8s.call(
        lambda: em._patch(
            res,
            "team-a",
            "w1",
            {
                "status": {
                    "phase": "Running",
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True",
                            "reason": "Started",
                            "message": "m",
                            "lastTransitionTime": "2026-01-01T00:00:00Z",
                        }
                    ],
                }
            },
            "application/merge-patch+json",
            "status",
            {},
        )
    )
    out, err = waiter.communicate(timeout=20)
    assert waiter.returncode == 0 and "condition met" in out, err
    started = time.monotonic()
    out, err = watch.communicate(timeout=20)
    assert time.monotonic() - started < 5, "the watch ends at its request timeout"
    rows = [line.split() for line in out.splitlines()]
    assert rows[0][:2] == ["NAME", "PHASE"], out
    assert rows[1][0] == "w1" and rows[1][1] != "Running", (
        "the initial state, before the status change"
    )
    assert rows[-1][:2] == ["w1", "Running"], "the change arrived through the watch"

    timeout = k8s.kubectl("wait", "-n", "team-a", "--for=condition=Done", "ftj/w1", "--timeout=1s")
    assert timeout.returncode != 0 and "timed out" in timeout.stderr


# ---------------------------------------------------------------------------------------------
# kopf
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def operator_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A lab without CRD schemas and S3, running the echo operator as its supervised operator."""
    with Lab(tmp_path_factory.mktemp("kopf-lab"), crds=[], s3=False) as lab:
        lab.add_operator("tests.support.echo_operator", extra_args=["--verbose"])
        server, em = lab_server(lab), lab.emulator
        # The operator is up once it has listed and started watching FineTuneJobs.
        wait_for(
            lambda: server.call(lambda: em.request_counts["watch finetunejobs"]),
            timeout=30,
            what="kopf to watch finetunejobs",
        )
        yield lab


def lab_server(lab: Lab) -> EmulatorServer:
    assert lab.k8s is not None, "the lab is not started"
    return lab.k8s


def test_kopf_operator_reconciles_and_cascades(operator_lab: Lab) -> None:
    server = lab_server(operator_lab)
    em = server.emulator
    co = kubernetes.client.CustomObjectsApi(client_for(server))
    make_namespace(kubernetes.client.CoreV1Api(client_for(server)), "kopf-one")

    def echoed(name: str) -> dict[str, Any] | None:
        obj = stored(server, "finetunejobs", "kopf-one", name)
        return obj if obj and (obj.get("status") or {}).get("phase") == "Echoed" else None

    latencies: list[float] = []
    uids: dict[str, str] = {}
    for i in range(5):  # one at a time: create -> kopf's create handler -> status patch
        t0 = time.perf_counter()
        created = co.create_namespaced_custom_object(
            *FTJ[:2],
            "kopf-one",
            FTJ[2],
            {
                "apiVersion": "tidetune.io/v1alpha1",
                "kind": "FineTuneJob",
                "metadata": {"name": f"j{i}"},
                "spec": {"method": "sft"},
            },
        )
        assert created["metadata"]["name"] == f"j{i}", "the client got the created object back"
        uids[f"j{i}"] = created["metadata"]["uid"]
        name = f"j{i}"
        wait_for(functools.partial(echoed, name), timeout=10, interval=0.002, what="status patch")
        latencies.append((time.perf_counter() - t0) * 1000)
    print(
        f"\n[figures] create -> handler -> status patch:"
        f" median {statistics.median(latencies):.1f} ms,"
        f" max {max(latencies):.1f} ms (5 objects, one at a time)"
    )

    obj = echoed("j0")
    assert obj is not None and obj["metadata"]["finalizers"] == ["echo.tidetune.io/finalizer"]
    child = stored(server, "pytorchjobs", "kopf-one", "j0-echo")
    assert child is not None
    ref = child["metadata"]["ownerReferences"][0]
    assert ref["uid"] == uids["j0"] and ref["kind"] == "FineTuneJob" and ref["controller"]
    events = server.call(lambda: em.list_objects("events", "kopf-one"))
    assert any(e["reason"] == "Echoed" and e["involvedObject"]["uid"] == uids["j0"] for e in events)

    co.delete_namespaced_custom_object(*FTJ[:2], "kopf-one", FTJ[2], "j0")
    wait_for(
        lambda: stored(server, "finetunejobs", "kopf-one", "j0") is None,
        what="kopf to release its finalizer",
    )
    assert stored(server, "pytorchjobs", "kopf-one", "j0-echo") is None, "the child is collected"
    assert stored(server, "pytorchjobs", "kopf-one", "j1-echo") is not None, "others stay"
    history = server.call(lambda: list(em.objects[FTJ_RES, "kopf-one", "j0"].history))
    held = [v for v in history if v is not None and v["metadata"].get("deletionTimestamp")]
    assert held and held[0]["metadata"]["finalizers"], "deletion waited for the finalizer"


FTJ_RES = kmock.resource(*FTJ)


def test_kopf_reconciles_200_objects(operator_lab: Lab) -> None:
    server = lab_server(operator_lab)
    em = server.emulator
    co = kubernetes.client.CustomObjectsApi(client_for(server))
    make_namespace(kubernetes.client.CoreV1Api(client_for(server)), "kopf-many")
    requests_before = em.request_count
    t0 = time.perf_counter()
    for i in range(200):
        co.create_namespaced_custom_object(
            *FTJ[:2],
            "kopf-many",
            FTJ[2],
            {"metadata": {"name": f"m{i:03d}"}, "spec": {"method": "sft"}},
        )
    created_s = time.perf_counter() - t0

    def count() -> int:
        jobs = em.list_objects("finetunejobs", "kopf-many")
        echoed = sum(int((j.get("status") or {}).get("phase") == "Echoed") for j in jobs)
        return echoed + len(em.list_objects("pytorchjobs", "kopf-many"))

    wait_for(lambda: server.call(count) == 400, timeout=60, interval=0.05, what="200 reconciles")
    total_s = time.perf_counter() - t0
    per_job = (em.request_count - requests_before) / 200
    print(
        f"\n[figures] 200 objects: created in {created_s:.2f} s,"
        f" all reconciled after {total_s:.2f} s;"
        f" {per_job:.1f} API requests per object (incl. the test's creates)"
    )
    assert total_s < 45


def test_lab_restarts_the_operator_and_updates_lab_json(operator_lab: Lab) -> None:
    lab = operator_lab
    first = lab.operator_pid
    assert first is not None
    assert json.loads(lab.info_path.read_text())["operatorPid"] == first
    os.kill(first, signal.SIGKILL)
    second = wait_for(
        lambda: lab.operator_pid not in (None, first) and lab.operator_pid,
        timeout=10,
        what="the lab to restart the operator",
    )
    wait_for(
        lambda: json.loads(lab.info_path.read_text())["operatorPid"] == second,
        timeout=5,
        what="lab.json to show the new pid",
    )
    assert lab.processes["operator"].restarts >= 1


def test_python_m_tests_lab_prints_ready_and_stops_on_sigterm(tmp_path: pathlib.Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.lab", "--dir", str(tmp_path), "--run", "child=sleep 300"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        assert proc.stdout is not None
        line = ""
        deadline = time.monotonic() + 30
        while "ready" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
        assert "ready" in line, f"no ready line; exit={proc.poll()}"
        info = json.loads((tmp_path / "lab.json").read_text())
        # the full stack: the TideTune operator runs supervised and serves metrics
        assert isinstance(info["operatorPid"], int)
        assert info["metricsUrl"].startswith("http://127.0.0.1:")
        assert (
            info["s3"]["bucket"] == "tidetune"
            and info["s3"]["accessKey"]
            and info["s3"]["secretKey"]
        )
        assert info["apiUrl"].startswith("https://127.0.0.1:")
        child_pid = info["processes"]["child"]["pid"]
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                "import minio,sys,json;"
                "i=json.load(open(sys.argv[1]))['s3'];"
                "c=minio.Minio(i['endpoint'].split('://')[1],i['accessKey'],i['secretKey'],secure=False);"
                "print(c.bucket_exists(i['bucket']))",
                str(tmp_path / "lab.json"),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.stdout.strip() == "True", result.stderr
        got = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys;print(open(sys.argv[1]).read())",
                str(tmp_path / "kubeconfig"),
            ],
            capture_output=True,
            text=True,
        )
        assert "certificate-authority-data" in got.stdout
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        assert proc.returncode == 0
        with pytest.raises(ProcessLookupError):
            for _ in range(50):
                os.kill(child_pid, 0)
                time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_resource_defs_can_be_added() -> None:
    em = KubernetesEmulator(
        resources=[ResourceDef("example.test", "v1", "things", "Thing", True)],
        namespaces=["default"],
    )
    assert em.find_resource("thing").plural == "things"
    with pytest.raises(KeyError):
        em.find_resource("finetunejobs")


class RecordingComponent:
    """A stand-in for a lab component (the Kubeflow stand-in will be one)."""

    name = "recorder"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def start(self, lab: Lab) -> None:
        assert lab.kubeconfig.exists(), "components start after the API is up"
        self.calls.append("start")

    def stop(self) -> None:
        self.calls.append("stop")


def test_lab_fixture_supervises_processes_components_and_s3(lab: Lab) -> None:
    crashy = lab.add_process("crashy", [sys.executable, "-c", "import time; time.sleep(0.2)"])
    once = lab.add_process("once", [sys.executable, "-c", "pass"], restart=False)
    component = RecordingComponent()
    lab.add_component(component)
    assert component.calls == ["start"]

    wait_for(lambda: crashy.restarts >= 2, timeout=10, what="two restarts of a dying process")
    assert crashy.exit_codes[:2] == [0, 0]
    time.sleep(0.3)
    assert once.restarts == 0 and not once.alive, "restart=False is not restarted"
    info = json.loads(lab.info_path.read_text())
    assert info["processes"]["crashy"]["restarts"] >= 1 and info["components"] == ["recorder"]
    assert (lab.workdir / "logs" / "crashy.log").read_text().count("--- lab: starting crashy") >= 2

    assert lab.s3 is not None
    client = lab.s3.client()
    client.put_object(lab.s3.bucket, "hello.txt", io.BytesIO(b"hi"), 2)
    assert client.get_object(lab.s3.bucket, "hello.txt").read() == b"hi"
    assert lab.s3.secret_key not in repr(lab.s3)

    result = lab.kubectl("get", "crd", "-o", "name")
    assert "customresourcedefinition.apiextensions.k8s.io/finetunejobs.tidetune.io" in result.stdout
    lab.stop()
    assert component.calls == ["start", "stop"]
    assert not crashy.alive
