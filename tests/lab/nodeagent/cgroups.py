"""A memory cgroup per container: ``limits.memory`` enforced, OOM kills seen, every process found.

cgroup v2 is used where its ``memory`` controller is available and writable, else the v1
``memory`` hierarchy; with neither (a read-only /sys/fs/cgroup) containers run without a
cgroup: no memory limit, no ``OOMKilled``, and only the process group is killed.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import time

__all__ = ["Cgroup", "CgroupRoot"]


class Cgroup:
    def __init__(self, path: pathlib.Path, version: int) -> None:
        self.path = path
        self.version = version

    @property
    def procs_file(self) -> str:
        return str(self.path / "cgroup.procs")

    def set_memory_limit(self, limit: int) -> None:
        name = "memory.max" if self.version == 2 else "memory.limit_in_bytes"
        (self.path / name).write_text(str(limit))

    def oom_kills(self) -> int:
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        with contextlib.suppress(OSError):
            for line in (self.path / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        return 0

    def pids(self) -> list[int]:
        with contextlib.suppress(OSError):
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        return []

    def kill_all(self) -> None:
        for _ in range(50):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)

    def remove(self) -> None:
        self.kill_all()
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.05)


class CgroupRoot:
    """The agent's own subtree (``tidetune-lab-<bridge>``) in the first usable hierarchy."""

    def __init__(self, name: str) -> None:
        self.version = 0
        self.root: pathlib.Path | None = None
        candidates: list[tuple[pathlib.Path, int]] = []
        for base in (pathlib.Path("/sys/fs/cgroup"), pathlib.Path("/sys/fs/cgroup/unified")):
            controllers = base / "cgroup.controllers"
            if controllers.exists() and "memory" in controllers.read_text().split():
                candidates.append((base, 2))
        if pathlib.Path("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists():
            candidates.append((pathlib.Path("/sys/fs/cgroup/memory"), 1))
        for base, version in candidates:
            root = base / name
            try:
                root.mkdir(exist_ok=True)
                if version == 2:
                    (base / "cgroup.subtree_control").write_text("+memory")
                    (root / "cgroup.subtree_control").write_text("+memory")
            except OSError:
                continue
            self.root, self.version = root, version
            break

    @property
    def available(self) -> bool:
        return self.root is not None

    def create(self, name: str) -> Cgroup | None:
        if self.root is None:
            return None
        path = self.root / name
        path.mkdir(exist_ok=True)
        return Cgroup(path, self.version)

    def sweep(self) -> None:
        """Kill and remove what an earlier agent left."""
        if self.root is None:
            return
        for child in self.root.iterdir():
            if child.is_dir():
                Cgroup(child, self.version).remove()

    def close(self) -> None:
        self.sweep()
        if self.root is not None:
            with contextlib.suppress(OSError):
                self.root.rmdir()
