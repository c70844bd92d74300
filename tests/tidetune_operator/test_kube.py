"""The operator's API client follows a rotating ServiceAccount token.

A loopback aiohttp server accepts one bearer token at a time and answers 401 with the
API server's ``Status`` body for any other, as kube-apiserver does for an expired token.
The token file is rotated the way the kubelet does it (a new file swapped in by rename),
and once in place (same inode, size and time) so that only a 401 can reveal the change.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kopf
import pytest
import pytest_asyncio
from aiohttp import web

from tests.tidetune_operator.conftest import loopback_server
from tidetune_operator.kube import (
    CONFIGMAPS,
    ApiError,
    FileToken,
    StaticToken,
    connect,
)


class ApiServer:
    def __init__(self) -> None:
        self.accepted = "token-a"
        self.seen: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        self.seen.append(auth.removeprefix("Bearer "))
        if auth != f"Bearer {self.accepted}":
            status = {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "message": "Unauthorized",
                "reason": "Unauthorized",
                "code": 401,
            }
            return web.json_response(status, status=401)
        return web.json_response(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}
        )


@pytest_asyncio.fixture
async def server() -> AsyncIterator[tuple[ApiServer, str]]:
    api = ApiServer()
    async with loopback_server(api.handle) as url:
        yield api, url


def rotate(path: Path, token: str) -> None:
    """As the kubelet does: write a new file beside it and rename it into place."""
    new = path.with_name(path.name + ".new")
    new.write_text(token)
    os.replace(new, path)


def rewrite_in_place(path: Path, token: str) -> None:
    """Change the content but not the inode, size or modification time."""
    before = path.stat()
    with open(path, "r+", encoding="utf-8") as f:
        f.write(token)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )


@pytest.mark.asyncio
async def test_a_rotated_token_file_is_read_again(
    server: tuple[ApiServer, str], tmp_path: Path
) -> None:
    api, url = server
    token_file = tmp_path / "token"
    token_file.write_text("token-a\n")
    info = kopf.ConnectionInfo(server=url, token="token-a")
    kube = connect(info, timeout=10, token_file=token_file)
    try:
        assert isinstance(kube.token, FileToken)
        await kube.get(CONFIGMAPS, "x", "default")
        # the kubelet rotates the file; the server accepts only the new token from now on
        rotate(token_file, "token-b")
        api.accepted = "token-b"
        await kube.get(CONFIGMAPS, "x", "default")
        assert api.seen == ["token-a", "token-b"]  # no 401: the change was seen first
        # a change the file's stamp does not show: the 401 makes the client read it again
        rewrite_in_place(token_file, "token-c")
        api.accepted = "token-c"
        await kube.get(CONFIGMAPS, "x", "default")
        assert api.seen[2:] == ["token-b", "token-c"]
        # a token nobody can renew: the 401 is the caller's, after one try
        api.accepted = "token-z"
        with pytest.raises(ApiError) as caught:
            await kube.get(CONFIGMAPS, "x", "default")
        assert caught.value.status == 401 and api.seen[4:] == ["token-c"]
    finally:
        await kube.close()


@pytest.mark.asyncio
async def test_a_kubeconfig_token_is_renewed_from_kopfs_login_on_401(
    server: tuple[ApiServer, str], tmp_path: Path
) -> None:
    api, url = server
    logins = ["token-a"]
    info = kopf.ConnectionInfo(server=url, token="token-a")
    kube = connect(info, timeout=10, relogin=lambda: logins[-1], token_file=tmp_path / "none")
    try:
        assert isinstance(kube.token, StaticToken)
        await kube.get(CONFIGMAPS, "x", "default")
        api.accepted = "token-b"
        logins.append("token-b")  # kopf logged in again after its own 401
        created: dict[str, Any] = await kube.create(
            CONFIGMAPS, {"metadata": {"name": "x", "namespace": "default"}}
        )
        assert created["kind"] == "ConfigMap"
        assert api.seen == ["token-a", "token-a", "token-b"]
    finally:
        await kube.close()


def test_the_token_file_is_read_only_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("one")
    source = FileToken(path)
    assert [source.current() for _ in range(5)] == ["one"] * 5 and source.reads == 1
    rotate(path, "two")
    assert source.current() == "two" and source.reads == 2
    path.unlink()  # between the kubelet's swaps: keep the last token
    assert source.current() == "two"
    assert source.refresh() is False and source.current() == "two"


def test_why_pods_do_not_run_comes_from_the_scheduler_then_the_containers() -> None:
    from tidetune_operator.observe import pods_waiting

    def pod(name: str, **status: Any) -> dict[str, Any]:
        return {"metadata": {"name": name}, "status": {"phase": "Pending", **status}}

    unschedulable = pod(
        "j-1-worker-0",
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
            }
        ],
    )
    pulling = pod(
        "j-1-master-0",
        containerStatuses=[
            {
                "name": "pytorch",
                "state": {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}},
            }
        ],
    )
    creating = pod(
        "j-1-master-0",
        containerStatuses=[
            {"name": "pytorch", "state": {"waiting": {"reason": "ContainerCreating"}}}
        ],
    )
    assert pods_waiting([], "j-1") is None
    assert pods_waiting([pod("other-1-master-0")], "j-1") is None  # another attempt's pod
    assert pods_waiting([pulling, unschedulable], "j-1") == (
        "Unschedulable",
        "j-1-worker-0: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
    )
    assert pods_waiting([pulling], "j-1") == (
        "ImagePullBackOff",
        "j-1-master-0: container pytorch: no such image",
    )
    assert pods_waiting([creating], "j-1") == (
        "ContainerCreating",
        "j-1-master-0: ContainerCreating",
    )


def test_pod_exits_are_read_from_the_container_statuses_with_who_stopped_the_pod() -> None:
    from tidetune_operator.observe import pod_exits

    def pod(name: str, *statuses: dict[str, Any], **extra: Any) -> dict[str, Any]:
        meta = {"name": name, **extra.pop("meta", {})}
        spec = extra.pop("spec", {})
        status = {"phase": "Failed", "containerStatuses": list(statuses), **extra}
        return {"metadata": meta, "spec": spec, "status": status}

    def term(name: str, code: int, reason: str = "Error", **more: Any) -> dict[str, Any]:
        return {"name": name, "state": {"terminated": {"exitCode": code, "reason": reason, **more}}}

    oom = pod("j-1-worker-1", term("pytorch", 137, "OOMKilled", finishedAt="2026-01-01T00:00:01Z"))
    crashed = pod("j-1-master-0", term("pytorch", 1, message="ValueError: x\n"))
    evicted = pod(
        "j-1-worker-2",
        term("pytorch", 143),
        conditions=[{"type": "DisruptionTarget", "status": "True",
                     "reason": "EvictionByEvictionAPI"}],
    )  # fmt: skip
    pressure = pod("j-1-worker-3", term("pytorch", 137), reason="Evicted")
    deleting = pod("j-1-worker-4", term("pytorch", 85), meta={"deletionTimestamp": "t"})
    fine = pod("j-1-worker-5", term("pytorch", 0, "Completed"))
    running = pod("j-1-worker-6", {"name": "pytorch", "state": {"running": {}}})
    other = pod("j-2-master-0", term("pytorch", 1))
    # the reward runtime sidecar stopped after the trainer: not the trainer's exit
    sidecar = pod(
        "j-1-worker-7",
        term("pytorch", 0, "Completed"),
        spec={"initContainers": [{"name": "reward-runtime", "restartPolicy": "Always"}]},
        initContainerStatuses=[term("reward-runtime", 143)],
    )
    init_failed = pod("j-1-worker-8", initContainerStatuses=[term("init-pytorch", 1)])
    exits = {e.pod: e for e in pod_exits(
        [oom, crashed, evicted, pressure, deleting, fine, running, other, sidecar, init_failed],
        "j-1",
    )}  # fmt: skip
    assert sorted(exits) == [
        "j-1-master-0", "j-1-worker-1", "j-1-worker-2", "j-1-worker-3", "j-1-worker-4",
        "j-1-worker-8",
    ]  # fmt: skip
    assert exits["j-1-worker-1"].reason == "OOMKilled" and exits["j-1-worker-1"].exit_code == 137
    assert exits["j-1-worker-1"].finished_at == "2026-01-01T00:00:01Z"
    assert exits["j-1-worker-1"].stopped_by is None
    assert exits["j-1-master-0"].message == "ValueError: x\n"
    assert exits["j-1-worker-2"].stopped_by == "EvictionByEvictionAPI"
    assert exits["j-1-worker-3"].stopped_by == "Evicted"
    assert exits["j-1-worker-4"].stopped_by == "Deleted"
    assert exits["j-1-worker-8"].container == "init-pytorch"


def test_credentials_are_redacted_from_pod_messages_and_logs() -> None:
    from tidetune_operator.observe import redact

    secret = "wJalrXUtnFEMI/K7MDENG"
    text = f"connecting with key={secret} to s3\nAKIAEXAMPLE1 used; {secret}"
    out = redact(text, [secret, "AKIAEXAMPLE1", "ab"])
    assert secret not in out and "AKIAEXAMPLE1" not in out
    assert out == "connecting with key=*** to s3\n*** used; ***"
    assert redact("a tab b", ["ab", ""]) == "a tab b"  # too short to look for
