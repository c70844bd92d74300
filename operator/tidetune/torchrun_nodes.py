"""Run a training job as local ``torchrun`` processes, with the environment the Kubeflow
training operator injects into PyTorchJob pods.

One "node" of the job is one process tree: ``python -m tidetune_trainer.launch ARGS``,
the trainer image's entry point, which runs ``torchrun`` (reading its settings from the
``PET_*`` variables, as in a PyTorchJob pod) and exits with the ranks' combined exit code
(:mod:`tidetune.exitcodes`). Each node gets, as a PyTorchJob replica does:

``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE`` (nodes × processes per node), ``RANK``
(the node's replica index), ``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``,
``PET_MASTER_ADDR``, ``PET_MASTER_PORT``.

Every node runs in its own session, so a Ctrl-C in the caller's terminal reaches only the
caller, which decides what to forward: :meth:`RunningNodes.signal` sends a signal to each
node's leader only, as the kubelet sends SIGTERM to a container's PID 1;
:meth:`RunningNodes.kill_node` kills one node's whole process tree, as losing a pod does.

No torch import here: ``tidetune run``, the lab and the tests all reuse this module.
"""

from __future__ import annotations

import contextlib
import os
import signal as _signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tidetune import exitcodes

__all__ = ["LaunchError", "NodesSpec", "RunningNodes", "TorchrunNodes", "free_port"]

#: The module each node runs; it wraps torchrun and propagates the ranks' exit codes.
DEFAULT_ENTRY_MODULE = "tidetune_trainer.launch"


class LaunchError(RuntimeError):
    """A local launch could not start (bad arguments, a missing interpreter)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class NodesSpec:
    """What to run: ``args`` follow the entry module (torchrun's own arguments, then
    ``-m tidetune_trainer --spec … --run-uri …``)."""

    name: str
    args: Sequence[str]
    nnodes: int = 1
    nproc_per_node: int = 1
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise LaunchError("a local launch needs a name")
        if self.nnodes < 1 or self.nproc_per_node < 1:
            raise LaunchError(
                f"{self.name}: nnodes and nproc_per_node must be >= 1, got "
                f"{self.nnodes} and {self.nproc_per_node}"
            )


def kubeflow_env(
    *, nnodes: int, nproc_per_node: int, node_rank: int, master_addr: str, master_port: int
) -> dict[str, str]:
    """The variables the Kubeflow training operator sets in a PyTorchJob replica."""
    return {
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
        "WORLD_SIZE": str(nnodes * nproc_per_node),
        "RANK": str(node_rank),
        "PET_NNODES": str(nnodes),
        "PET_NPROC_PER_NODE": str(nproc_per_node),
        "PET_NODE_RANK": str(node_rank),
        "PET_MASTER_ADDR": master_addr,
        "PET_MASTER_PORT": str(master_port),
    }


class RunningNodes:
    """A started local job: one process (tree) per node."""

    def __init__(
        self,
        name: str,
        procs: list[subprocess.Popen[bytes]],
        logs: list[Path | None],
        handles: list[IO[bytes]],
    ) -> None:
        self.name = name
        self.procs = procs
        self.logs = logs
        self._handles = handles

    @property
    def pids(self) -> list[int]:
        """The node leaders' process ids."""
        return [p.pid for p in self.procs]

    def returncodes(self) -> list[int | None]:
        """Each node's exit code, ``None`` while it runs."""
        return [p.poll() for p in self.procs]

    def poll(self) -> int | None:
        """``None`` while any node runs; then the nodes' combined exit code."""
        codes = self.returncodes()
        if any(c is None for c in codes):
            return None
        self._close_logs()
        return exitcodes.combine(c for c in codes if c is not None)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for every node; the combined exit code. Raises ``TimeoutError``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for p in self.procs:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                p.wait(left)
            except subprocess.TimeoutExpired:
                raise TimeoutError(f"{self.name}: still running after {timeout} s") from None
        code = self.poll()
        assert code is not None
        return code

    def signal(self, sig: int = _signal.SIGTERM) -> None:
        """Send ``sig`` to each running node's leader (what the kubelet does on delete)."""
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(sig)

    def kill_node(self, node_rank: int) -> None:
        """SIGKILL one node's whole process tree (a lost pod)."""
        p = self.procs[node_rank]
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, _signal.SIGKILL)
            p.wait()

    def stop(self, grace: float = 60.0) -> int:
        """SIGTERM, wait up to ``grace`` seconds for a checkpoint and exit, then SIGKILL
        what is left. The combined exit code (``PREEMPTED`` after a clean stop)."""
        self.signal(_signal.SIGTERM)
        try:
            return self.wait(grace)
        except TimeoutError:
            for rank in range(len(self.procs)):
                self.kill_node(rank)
            return self.wait()

    def _close_logs(self) -> None:
        for h in self._handles:
            if not h.closed:
                h.close()


class TorchrunNodes:
    """Starts :class:`NodesSpec` jobs as local process trees (see the module docstring).

    ``log_dir``: each node's stdout+stderr goes to ``<log_dir>/<name>-node<k>.log``;
    without it, the nodes inherit the caller's stdout/stderr.
    """

    def __init__(
        self,
        *,
        python: str = sys.executable,
        entry_module: str = DEFAULT_ENTRY_MODULE,
        log_dir: str | os.PathLike[str] | None = None,
        master_addr: str = "127.0.0.1",
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        self.python = python
        self.entry_module = entry_module
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.master_addr = master_addr
        self.base_env = dict(os.environ if base_env is None else base_env)

    def command(self, launch: NodesSpec) -> list[str]:
        """The command line each node runs."""
        return [self.python, "-m", self.entry_module, *launch.args]

    def node_env(self, launch: NodesSpec, node_rank: int, master_port: int) -> dict[str, str]:
        """The full environment of one node: base env, the launch's env, Kubeflow's."""
        env = dict(self.base_env)
        env.update(launch.env)
        env.update(
            kubeflow_env(
                nnodes=launch.nnodes,
                nproc_per_node=launch.nproc_per_node,
                node_rank=node_rank,
                master_addr=self.master_addr,
                master_port=master_port,
            )
        )
        return env

    def start(self, launch: NodesSpec, *, master_port: int | None = None) -> RunningNodes:
        """Start every node; returns at once. Raises :class:`LaunchError` if one fails
        to start (the ones already started are killed)."""
        port = master_port or free_port(self.master_addr)
        cmd = self.command(launch)
        procs: list[subprocess.Popen[bytes]] = []
        logs: list[Path | None] = []
        handles: list[IO[bytes]] = []
        try:
            for rank in range(launch.nnodes):
                out: IO[bytes] | None = None
                log: Path | None = None
                if self.log_dir is not None:
                    self.log_dir.mkdir(parents=True, exist_ok=True)
                    log = self.log_dir / f"{launch.name}-node{rank}.log"
                    out = open(log, "ab")  # noqa: SIM115 - closed by RunningNodes
                    handles.append(out)
                procs.append(
                    subprocess.Popen(
                        cmd,
                        env=self.node_env(launch, rank, port),
                        cwd=launch.cwd,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT if out is not None else None,
                        start_new_session=True,
                    )
                )
                logs.append(log)
        except OSError as e:
            job = RunningNodes(launch.name, procs, logs, handles)
            for rank in range(len(procs)):
                job.kill_node(rank)
            job._close_logs()
            raise LaunchError(f"{launch.name}: cannot start {cmd[0]}: {e.strerror or e}") from None
        return RunningNodes(launch.name, procs, logs, handles)
