"""The lab's cluster DNS (dnslib), answering as CoreDNS's ``kubernetes`` plugin would.

Records, under the cluster domain:

- ``<svc>.<ns>.svc.<domain>`` A → the ready endpoint addresses of the Service's
  EndpointSlices (all of them with ``publishNotReadyAddresses``). There is no kube-proxy
  in the lab, so non-headless Services answer with endpoint addresses too, not their
  ClusterIP: a client must connect to the ``targetPort``. A headless Service without
  endpoints is NXDOMAIN (as CoreDNS), a ClusterIP one an empty answer.
- ``<svc>.<ns>.svc.<domain>`` of an ``ExternalName`` Service → CNAME.
- ``<hostname>.<svc>.<ns>.svc.<domain>`` → the endpoint with that ``hostname`` (pods with
  ``spec.hostname`` + ``spec.subdomain`` behind a headless Service).
- ``kubernetes.default.svc.<domain>`` → the API server's address.
- ``<a-b-c-d>.<ns>.pod.<domain>`` → a.b.c.d.

Everything else is NXDOMAIN (there is no upstream forwarding). An existing name asked for
another type (AAAA) answers NOERROR without records, so resolvers do not give up on it.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Mapping
from typing import Any

from dnslib import AAAA, CNAME, QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer

__all__ = ["ClusterRecords", "LabDns"]

logger = logging.getLogger(__name__)
JSON = dict[str, Any]
TTL = 5


class ClusterRecords:
    """Services and EndpointSlices as the DNS needs them (fed by the agent's informers)."""

    def __init__(self, domain: str, api_host: str) -> None:
        self.domain = domain.strip(".").lower()
        self.api_host = api_host
        self._services: dict[tuple[str, str], JSON] = {}
        self._slices: dict[tuple[str, str], JSON] = {}
        self._lock = threading.Lock()

    def on_service(self, kind: str, svc: JSON) -> None:
        meta = svc.get("metadata") or {}
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        with self._lock:
            if kind == "DELETED":
                self._services.pop(key, None)
            else:
                self._services[key] = svc

    def on_slice(self, kind: str, slice_: JSON) -> None:
        meta = slice_.get("metadata") or {}
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        with self._lock:
            if kind == "DELETED":
                self._slices.pop(key, None)
            else:
                self._slices[key] = slice_

    def _endpoints(self, namespace: str, service: str, all_: bool) -> list[tuple[str, str]]:
        """(address, hostname) of the service's endpoints (ready ones unless ``all_``)."""
        found: list[tuple[str, str]] = []
        for (ns, _), slice_ in self._slices.items():
            labels = (slice_.get("metadata") or {}).get("labels") or {}
            if ns != namespace or labels.get("kubernetes.io/service-name") != service:
                continue
            if slice_.get("addressType", "IPv4") != "IPv4":
                continue
            for endpoint in slice_.get("endpoints") or []:
                ready = (endpoint.get("conditions") or {}).get("ready")
                if all_ or ready is None or ready:
                    for address in endpoint.get("addresses") or []:
                        found.append((str(address), str(endpoint.get("hostname") or "")))
        return sorted(set(found))

    def lookup(self, name: str) -> tuple[bool, list[str], str]:
        """(exists, IPv4 addresses, CNAME target) of a fully qualified name."""
        name = name.rstrip(".").lower()
        suffix = "." + self.domain
        if not name.endswith(suffix):
            return False, [], ""
        labels = name[: -len(suffix)].split(".")
        if labels == ["kubernetes", "default", "svc"]:
            return True, [self.api_host], ""
        if len(labels) == 3 and labels[2] == "pod":
            try:
                address = ipaddress.IPv4Address(labels[0].replace("-", "."))
            except ValueError:
                return False, [], ""
            return True, [str(address)], ""
        if len(labels) not in (3, 4) or labels[-1] != "svc":
            return False, [], ""
        namespace, service = labels[-2], labels[-3]
        with self._lock:
            svc = self._services.get((namespace, service))
            if svc is None:
                return False, [], ""
            spec = svc.get("spec") or {}
            if spec.get("type") == "ExternalName" and len(labels) == 3:
                return True, [], str(spec.get("externalName", "")).rstrip(".") + "."
            endpoints = self._endpoints(
                namespace, service, bool(spec.get("publishNotReadyAddresses"))
            )
        if len(labels) == 4:
            addresses = [a for a, host in endpoints if host.lower() == labels[0]]
            return bool(addresses), addresses, ""
        headless = spec.get("clusterIP") == "None"
        if headless and not endpoints:
            return False, [], ""
        return True, [a for a, _ in endpoints], ""


class _Resolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, records: ClusterRecords) -> None:
        self.records = records

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        reply = request.reply()
        qname = request.q.qname
        qtype = QTYPE[request.q.qtype]
        exists, addresses, cname = self.records.lookup(str(qname))
        if not exists:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        if cname:
            reply.add_answer(RR(qname, QTYPE.CNAME, rdata=CNAME(cname), ttl=TTL))
        elif qtype in ("A", "ANY"):
            for address in addresses:
                reply.add_answer(RR(qname, QTYPE.A, rdata=A(address), ttl=TTL))
        elif qtype == "AAAA":
            _ = AAAA  # no IPv6 in the lab: NOERROR without records
        return reply


class LabDns:
    """UDP and TCP DNS servers on ``address:port``."""

    def __init__(self, records: ClusterRecords, address: str, port: int = 53) -> None:
        quiet = DNSLogger(log="error", logf=lambda text: logger.debug("dns: %s", text))
        resolver = _Resolver(records)
        self._servers = [
            DNSServer(resolver, address=address, port=port, logger=quiet),
            DNSServer(resolver, address=address, port=port, tcp=True, logger=quiet),
        ]

    def start(self) -> None:
        for server in self._servers:
            server.start_thread()

    def stop(self) -> None:
        for server in self._servers:
            server.stop()
            server.server.server_close()


def records_from(
    services: Mapping[str, JSON], slices: Mapping[str, JSON], domain: str, api_host: str
) -> ClusterRecords:
    """Records built at once from listed objects (for tests and one-off use)."""
    records = ClusterRecords(domain, api_host)
    for svc in services.values():
        records.on_service("ADDED", svc)
    for slice_ in slices.values():
        records.on_slice("ADDED", slice_)
    return records
