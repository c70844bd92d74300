"""The shim really enters namespaces, binds mounts, drops to the user and execs (needs root)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from tests.lab.nodeagent.pods import SHIM
from tests.lab.nodeagent.volumes import atomic_write

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and setuid need root")


def run_shim(tmp_path: pathlib.Path, **spec: object) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"mode": "run", "errorFile": str(tmp_path / "error"), **spec}))
    return subprocess.run(
        [sys.executable, "-I", "-S", SHIM, str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_mounts_identity_and_hostname(tmp_path: pathlib.Path) -> None:
    volume = tmp_path / "vol"
    atomic_write(volume, {"greeting": (b"hello", 0o600), "sub/x": (b"x", 0o644)}, gid=2000)
    hosts = tmp_path / "hosts"
    hosts.write_text("10.1.2.3\tpod-a\n")
    # created by the shim as a mount point (its parents must be reachable for uid 1000)
    target = pathlib.Path(f"/tmp/nodeagent-shim-test-{tmp_path.name}/config")
    result = run_shim(
        tmp_path,
        argv=[
            "sh",
            "-c",
            f"id -u; id -g; id -G; hostname; cat {target}/greeting; "
            f"cat /etc/hosts; touch {target}/new 2>&1 || echo read-only; pwd",
        ],
        env={"PATH": "/usr/bin:/bin"},
        uid=1000,
        gid=3000,
        groups=[2000],
        hostname="pod-a",
        mounts=[
            {"source": str(volume), "target": str(target), "readOnly": True},
            {"source": str(hosts), "target": "/etc/hosts"},
        ],
        workingDir="/tmp/nodeagent-shim-test",
    )
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result
    assert "denied" not in result.stderr, result.stderr
    assert lines[:4] == ["1000", "3000", "3000 2000", "pod-a"]
    assert lines[4] == "hello10.1.2.3\tpod-a"  # 0600 file readable through fsGroup (0640)
    assert lines[-2] == "read-only"
    assert lines[-1] == "/tmp/nodeagent-shim-test"  # created by the shim
    assert (volume / "greeting").is_symlink() and os.readlink(volume / "..data").startswith("..")
    assert "10.1.2.3" not in pathlib.Path("/etc/hosts").read_text()  # the host's is untouched


def test_missing_executable_is_a_start_error(tmp_path: pathlib.Path) -> None:
    result = run_shim(
        tmp_path, argv=["no-such-binary"], env={"PATH": "/usr/bin"}, uid=1000, gid=1000
    )
    assert result.returncode == 128
    assert (
        'exec: "no-such-binary": executable file not found in $PATH'
        in (tmp_path / "error").read_text()
    )


def test_atomic_write_replaces_content_and_stale_keys(tmp_path: pathlib.Path) -> None:
    atomic_write(tmp_path, {"a": (b"1", 0o644), "b": (b"2", 0o644)})
    first = os.readlink(tmp_path / "..data")
    atomic_write(tmp_path, {"a": (b"3", 0o400)})
    assert (tmp_path / "a").read_bytes() == b"3"
    assert not (tmp_path / "b").exists()
    assert not (tmp_path / first).exists()
    assert ((tmp_path / "a").stat().st_mode & 0o777) == 0o400


def test_container_dies_with_the_process_that_started_it(tmp_path: pathlib.Path) -> None:
    """PR_SET_PDEATHSIG: nothing outlives the agent (here a parent that is SIGKILLed)."""
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "mode": "run",
                "argv": ["sleep", "600"],
                "env": {"PATH": "/usr/bin:/bin"},
                "uid": 1000,
                "gid": 1000,
                "errorFile": str(tmp_path / "error"),
            }
        )
    )
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            f"child = subprocess.Popen([sys.executable, '-I', '-S', {SHIM!r}, {str(spec)!r}])\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # wait until the shim has exec'd sleep
        with open(f"/proc/{child}/cmdline", "rb") as handle:
            if handle.read().startswith(b"sleep"):
                break
        time.sleep(0.05)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{child}") and time.monotonic() < deadline:
        time.sleep(0.05)
    status = pathlib.Path(f"/proc/{child}/status")
    assert not status.exists() or "State:\tZ" in status.read_text()


def test_a_volume_at_tmp_does_not_hide_the_other_sources(tmp_path: pathlib.Path) -> None:
    """The sources live under /tmp (as the agent's work directory under pytest does): an
    emptyDir mounted at /tmp first must not hide the volumes mounted after it."""
    assert str(tmp_path).startswith("/tmp/")
    scratch = tmp_path / "empty"
    scratch.mkdir()
    config = tmp_path / "cfg"
    atomic_write(config, {"mode": (b"fast", 0o644)})
    token = tmp_path / "token"
    atomic_write(token, {"token": (b"jwt", 0o644)})
    target = f"/run/nodeagent-shim-test-{tmp_path.name}"
    result = run_shim(
        tmp_path,
        argv=["sh", "-c", f"cat {target}/cfg/mode {target}/sa/token; ls -A /tmp"],
        env={"PATH": "/usr/bin:/bin"},
        uid=0,
        gid=0,
        mounts=[
            {"source": str(scratch), "target": "/tmp"},
            {"source": str(config), "target": f"{target}/cfg", "readOnly": True},
            {"source": str(token), "target": f"{target}/sa", "readOnly": True},
        ],
    )
    assert result.returncode == 0, (result, _error(tmp_path))
    assert result.stdout == "fastjwt"  # and /tmp is the empty volume


def _error(tmp_path: pathlib.Path) -> str:
    path = tmp_path / "error"
    return path.read_text() if path.exists() else ""


def test_a_mount_target_of_the_wrong_type_is_a_clear_start_error(tmp_path: pathlib.Path) -> None:
    volume = tmp_path / "vol"
    atomic_write(volume, {"config.yaml": (b"x", 0o644)})
    stale = tmp_path / "etc" / "tidetune"
    stale.parent.mkdir()
    stale.write_text("left over\n")
    common = {"argv": ["true"], "env": {"PATH": "/usr/bin:/bin"}, "uid": 0, "gid": 0}
    result = run_shim(tmp_path, mounts=[{"source": str(volume), "target": str(stale)}], **common)
    assert result.returncode == 128
    assert _error(tmp_path) == (
        "failed to create containerd task: failed to create shim task: "
        f"mount target {stale} exists and is a file; the volume is a directory"
    )
    assert stale.read_text() == "left over\n"  # left as it was
    # a file volume (subPath-less key, /etc/hosts) onto a directory
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    result = run_shim(tmp_path, mounts=[{"source": str(hosts), "target": str(volume)}], **common)
    assert result.returncode == 128
    assert _error(tmp_path).endswith(
        f"mount target {volume} exists and is a directory; the volume is a file"
    )
    # a mount point below a file
    below = stale / "conf.d"
    result = run_shim(tmp_path, mounts=[{"source": str(volume), "target": str(below)}], **common)
    assert result.returncode == 128
    assert _error(tmp_path).endswith(
        f"mount target {below}: {stale} exists and is a file, not a directory"
    )
