"""The lab DNS answers Service, endpoint-hostname and pod names, over real UDP."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from tests.lab.nodeagent.dns import ClusterRecords, LabDns


def service(name: str, ns: str = "team", headless: bool = True, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns},
        "spec": {"clusterIP": "None" if headless else "10.96.0.9", **spec},
    }


def endpoint_slice(svc: str, endpoints: list[dict[str, Any]], ns: str = "team") -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"{svc}-abc",
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": svc},
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
    }


@pytest.fixture
def records() -> ClusterRecords:
    records = ClusterRecords("cluster.local", "10.200.0.1")
    records.on_service("ADDED", service("job-a-master-0"))
    records.on_slice(
        "ADDED",
        endpoint_slice(
            "job-a-master-0",
            [
                {
                    "addresses": ["10.200.1.5"],
                    "hostname": "job-a-master-0",
                    "conditions": {"ready": True},
                },
                {"addresses": ["10.200.1.6"], "conditions": {"ready": False}},
            ],
        ),
    )
    records.on_service("ADDED", service("web", headless=False))
    records.on_service("ADDED", service("empty"))
    records.on_service("ADDED", service("ext", type="ExternalName", externalName="example.com"))
    return records


def test_lookups(records: ClusterRecords) -> None:
    assert records.lookup("job-a-master-0.team.svc.cluster.local.") == (True, ["10.200.1.5"], "")
    assert records.lookup("job-a-master-0.job-a-master-0.team.svc.cluster.local") == (
        True,
        ["10.200.1.5"],
        "",
    )
    assert records.lookup("kubernetes.default.svc.cluster.local")[1] == ["10.200.0.1"]
    assert records.lookup("10-200-1-9.team.pod.cluster.local")[1] == ["10.200.1.9"]
    assert records.lookup("web.team.svc.cluster.local") == (True, [], "")  # no endpoints yet
    assert records.lookup("empty.team.svc.cluster.local")[0] is False  # headless, no endpoints
    assert records.lookup("ext.team.svc.cluster.local")[2] == "example.com."
    assert records.lookup("nope.team.svc.cluster.local")[0] is False
    assert records.lookup("example.com")[0] is False
    records.on_service("DELETED", service("job-a-master-0"))
    assert records.lookup("job-a-master-0.team.svc.cluster.local")[0] is False


def test_publish_not_ready_addresses(records: ClusterRecords) -> None:
    records.on_service("MODIFIED", service("job-a-master-0", publishNotReadyAddresses=True))
    assert records.lookup("job-a-master-0.team.svc.cluster.local")[1] == [
        "10.200.1.5",
        "10.200.1.6",
    ]


def ask(port: int, name: str, qtype: str = "A") -> DNSRecord:
    query = DNSRecord.question(name, qtype)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(query.pack(), ("127.0.0.1", port))
        return DNSRecord.parse(sock.recv(4096))


def test_server_answers_over_udp(records: ClusterRecords) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = LabDns(records, "127.0.0.1", port)
    server.start()
    try:
        answer = ask(port, "job-a-master-0.team.svc.cluster.local")
        assert [str(rr.rdata) for rr in answer.rr] == ["10.200.1.5"]
        assert answer.header.rcode == RCODE.NOERROR
        six = ask(port, "job-a-master-0.team.svc.cluster.local", "AAAA")
        assert six.header.rcode == RCODE.NOERROR and not six.rr
        missing = ask(port, "nope.team.svc.cluster.local")
        assert missing.header.rcode == RCODE.NXDOMAIN
        cname = ask(port, "ext.team.svc.cluster.local")
        assert cname.rr[0].rtype == QTYPE.CNAME
    finally:
        server.stop()
