"""tidetune.torchrun_nodes: the Kubeflow environment, signals, exit codes (no torch)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from tidetune import exitcodes
from tidetune.torchrun_nodes import LaunchError, NodesSpec, TorchrunNodes, kubeflow_env

NODE = """
import json, os, signal, sys, time
out = sys.argv[1]
keys = ["MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "PET_NNODES", "PET_NPROC_PER_NODE",
        "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT", "EXTRA"]
rank = os.environ["PET_NODE_RANK"]
def stop(*_):
    open(f"{out}/node{rank}.stopped", "w").write("1")
    sys.exit(85)
signal.signal(signal.SIGTERM, stop)
open(f"{out}/node{rank}.json", "w").write(json.dumps({k: os.environ.get(k) for k in keys}))
if sys.argv[2] == "wait":
    time.sleep(60)
sys.exit(int(sys.argv[2]) if sys.argv[2] != "wait" else 0)
"""


@pytest.fixture
def launcher(tmp_path: Path) -> TorchrunNodes:
    (tmp_path / "fake_node.py").write_text(NODE)
    return TorchrunNodes(
        entry_module="fake_node",
        log_dir=tmp_path / "logs",
        base_env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )


def _wait_files(paths: list[Path], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        assert time.monotonic() < deadline, f"missing {paths}"
        time.sleep(0.02)


def test_kubeflow_environment_per_node(tmp_path: Path, launcher: TorchrunNodes) -> None:
    job = launcher.start(
        NodesSpec("j", [str(tmp_path), "0"], nnodes=2, nproc_per_node=3, env={"EXTRA": "x"})
    )
    assert job.wait(20) == 0
    n0 = json.loads((tmp_path / "node0.json").read_text())
    n1 = json.loads((tmp_path / "node1.json").read_text())
    assert n0["WORLD_SIZE"] == "6" and n0["PET_NNODES"] == "2" and n0["PET_NPROC_PER_NODE"] == "3"
    assert (n0["RANK"], n1["RANK"]) == ("0", "1") and n1["PET_NODE_RANK"] == "1"
    assert n0["MASTER_PORT"] == n1["PET_MASTER_PORT"] and n0["MASTER_ADDR"] == "127.0.0.1"
    assert n0["EXTRA"] == "x"
    assert (
        kubeflow_env(nnodes=1, nproc_per_node=2, node_rank=0, master_addr="h", master_port=1)[
            "WORLD_SIZE"
        ]
        == "2"
    )


def test_exit_codes_are_combined(tmp_path: Path, launcher: TorchrunNodes) -> None:
    assert launcher.start(NodesSpec("bad", [str(tmp_path), "65"])).wait(20) == exitcodes.BAD_INPUT


def test_sigterm_reaches_each_node_leader(tmp_path: Path, launcher: TorchrunNodes) -> None:
    job = launcher.start(NodesSpec("w", [str(tmp_path), "wait"], nnodes=2))
    _wait_files([tmp_path / "node0.json", tmp_path / "node1.json"])
    assert job.poll() is None
    assert job.stop(grace=20) == exitcodes.PREEMPTED
    assert (tmp_path / "node0.stopped").exists() and (tmp_path / "node1.stopped").exists()


def test_kill_node_is_a_lost_pod(tmp_path: Path, launcher: TorchrunNodes) -> None:
    job = launcher.start(NodesSpec("k", [str(tmp_path), "wait"], nnodes=2))
    _wait_files([tmp_path / "node0.json", tmp_path / "node1.json"])
    job.kill_node(1)
    assert job.returncodes()[1] == -signal.SIGKILL
    job.signal(signal.SIGTERM)
    assert job.wait(20) == exitcodes.CRASHED  # a killed node outweighs a clean stop


def test_bad_launches_are_refused() -> None:
    with pytest.raises(LaunchError):
        NodesSpec("x", [], nproc_per_node=0)
    bad = TorchrunNodes(python="/nonexistent/python")
    with pytest.raises(LaunchError, match="cannot start"):
        bad.start(NodesSpec("y", []))
