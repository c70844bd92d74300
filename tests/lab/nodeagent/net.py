"""Pod networking on the lab bridge: a network namespace and a veth pair per pod.

Each pod gets ``/run/netns/<bridge>-<pod uid>``, a veth whose host end is enslaved to the
bridge and whose pod end is ``eth0`` with the pod's address (prefix of the whole lab
subnet, so every pod, node address and the gateway are on-link) and a default route via
the gateway. Node addresses and the DNS address are added to the bridge as /32s.
Everything is done with iproute2 (``ip``), as CNI's bridge plugin does it with netlink.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import pathlib
import subprocess
import threading
from collections.abc import Iterable

__all__ = ["Ipam", "PodNetwork"]

NETNS_DIR = pathlib.Path("/run/netns")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


class Ipam:
    """Addresses of one node's pod CIDR, minus the reserved ones (node, gateway, DNS)."""

    def __init__(self, cidr: str, reserved: Iterable[str]) -> None:
        self.network = ipaddress.ip_network(cidr)
        self._reserved = {ipaddress.ip_address(a) for a in reserved}
        self._used: dict[str, str] = {}  # ip → owner
        self._lock = threading.Lock()
        self._next = 0

    def allocate(self, owner: str) -> str:
        with self._lock:
            for ip, holder in self._used.items():
                if holder == owner:
                    return ip
            hosts = list(self.network.hosts())
            for offset in range(len(hosts)):
                candidate = hosts[(self._next + offset) % len(hosts)]
                if candidate in self._reserved or str(candidate) in self._used:
                    continue
                self._next = (self._next + offset + 1) % len(hosts)
                self._used[str(candidate)] = owner
                return str(candidate)
        raise RuntimeError(f"pod CIDR {self.network} is exhausted")

    def release(self, owner: str) -> None:
        with self._lock:
            for ip in [ip for ip, holder in self._used.items() if holder == owner]:
                del self._used[ip]


class PodNetwork:
    """Network namespaces and veths of one agent, named after its bridge."""

    def __init__(self, bridge: str, subnet: str, gateway: str) -> None:
        self.bridge = bridge
        self.prefixlen = ipaddress.ip_network(subnet).prefixlen
        self.gateway = gateway
        self._added_addresses: set[str] = set()
        self._lock = threading.Lock()

    def netns_name(self, key: str) -> str:
        return f"{self.bridge}-{key}"

    def netns_path(self, key: str) -> str:
        return str(NETNS_DIR / self.netns_name(key))

    def _veth(self, key: str) -> str:
        return "v" + hashlib.sha1(f"{self.bridge}/{key}".encode()).hexdigest()[:12]

    def check_bridge(self) -> None:
        if _ip("link", "show", "dev", self.bridge, check=False).returncode != 0:
            raise RuntimeError(
                f"bridge {self.bridge!r} does not exist: the lab creates it (with the gateway "
                "address) before it starts the node agent"
            )

    def add_address(self, address: str) -> None:
        """Give the host (the bridge) an address: a node's InternalIP, the DNS address."""
        result = _ip("addr", "add", f"{address}/32", "dev", self.bridge, check=False)
        if result.returncode == 0:
            with self._lock:
                self._added_addresses.add(address)
        elif "File exists" not in result.stderr:
            raise RuntimeError(f"ip addr add {address}/32 dev {self.bridge}: {result.stderr}")

    def remove_address(self, address: str) -> None:
        with self._lock:
            if address not in self._added_addresses:
                return
            self._added_addresses.discard(address)
        _ip("addr", "del", f"{address}/32", "dev", self.bridge, check=False)

    def create(self, key: str, ip: str) -> str:
        """The pod's namespace with ``eth0`` = ``ip``; returns the namespace's path."""
        name = self.netns_name(key)
        veth = self._veth(key)
        self.delete(key)
        _ip("netns", "add", name)
        try:
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
            _ip("link", "set", veth, "master", self.bridge, "up")
            _ip("-n", name, "link", "set", "lo", "up")
            _ip("-n", name, "addr", "add", f"{ip}/{self.prefixlen}", "dev", "eth0")
            _ip("-n", name, "link", "set", "eth0", "up")
            _ip("-n", name, "route", "add", "default", "via", self.gateway)
        except RuntimeError:
            self.delete(key)
            raise
        return self.netns_path(key)

    def delete(self, key: str) -> None:
        """Remove the namespace (the veth pair goes with it)."""
        if os.path.exists(self.netns_path(key)):
            _ip("netns", "delete", self.netns_name(key), check=False)
        _ip("link", "delete", self._veth(key), check=False)

    def sweep(self) -> None:
        """Namespaces left by an earlier agent on this bridge (killed before it cleaned up)."""
        if not NETNS_DIR.is_dir():
            return
        for entry in NETNS_DIR.iterdir():
            if entry.name.startswith(f"{self.bridge}-"):
                _ip("netns", "delete", entry.name, check=False)

    def close(self) -> None:
        self.sweep()
        for address in list(self._added_addresses):
            self.remove_address(address)
