"""The lab's network: a Linux bridge per lab with its own /16, so that several labs (pytest
workers, a person's lab next to CI's) can run side by side on one machine.

A lab takes the first free *slot* ``i`` (an ``flock`` on ``/tmp/tidetune-lab-slots/<i>``,
released when the process holding it dies) and gets bridge ``ttlab<i>`` with the gateway
address ``10.<200+i>.0.1/16``. The API server, S3 and the webhooks listen on the gateway; the
node agent adds one address per node (``10.<200+i>.<n>.1``) and gives each pod a veth on the
bridge with an address from its node's ``/24``. Nothing is routed off the machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import pathlib
import subprocess

__all__ = ["LabNetwork", "NetworkError"]

SLOTS = pathlib.Path("/tmp/tidetune-lab-slots")
MAX_SLOTS = 40


class NetworkError(RuntimeError):
    """The bridge could not be made (not root, no ``ip`` command, no free slot)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(["ip", *args], capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise NetworkError("the lab needs the 'ip' command (Debian package iproute2)") from exc
    if check and result.returncode != 0:
        raise NetworkError(f"'ip {' '.join(args)}' failed: {result.stderr.strip()}")
    return result


@dataclasses.dataclass
class LabNetwork:
    """A bridge, its /16 and its gateway address (see the module doc)."""

    slot: int = -1
    _lock_fd: int | None = None

    @property
    def bridge(self) -> str:
        return f"ttlab{self.slot}"

    @property
    def prefix(self) -> str:
        return f"10.{200 + self.slot}"

    @property
    def subnet(self) -> str:
        return f"{self.prefix}.0.0/16"

    @property
    def gateway(self) -> str:
        return f"{self.prefix}.0.1"

    @property
    def dns(self) -> str:
        return f"{self.prefix}.0.2"

    def node_address(self, index: int) -> str:
        return f"{self.prefix}.{index + 1}.1"

    def pod_cidr(self, index: int) -> str:
        return f"{self.prefix}.{index + 1}.0/24"

    def create(self) -> LabNetwork:
        if os.geteuid() != 0:
            raise NetworkError(
                "the lab needs root: it makes a bridge and a network namespace per pod"
            )
        SLOTS.mkdir(parents=True, exist_ok=True)
        for slot in range(MAX_SLOTS):
            fd = os.open(SLOTS / str(slot), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            self.slot, self._lock_fd = slot, fd
            break
        else:
            raise NetworkError(f"all {MAX_SLOTS} lab slots are taken ({SLOTS})")
        # A bridge left by a lab that was killed: remove it with everything attached.
        _ip("link", "del", self.bridge, check=False)
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/16", "dev", self.bridge)
        _ip("addr", "add", f"{self.dns}/16", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        return self

    def delete(self) -> None:
        if self.slot < 0:
            return
        _ip("link", "del", self.bridge, check=False)
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None
        self.slot = -1
