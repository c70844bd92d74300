"""The agent: lab Nodes kept Ready, their pods run, the cluster DNS, the kubelet endpoints, hooks.

See the package docstring (:mod:`tests.lab.nodeagent`) for what it is and how it differs
from a kubelet with a container runtime.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import ipaddress
import json
import logging
import pathlib
import platform
import queue
import secrets
import signal
import threading
import time
import urllib.parse
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.lab.nodeagent import spec as specs
from tests.lab.nodeagent.api import ApiError, Informer, KubeApi
from tests.lab.nodeagent.cgroups import CgroupRoot
from tests.lab.nodeagent.dns import ClusterRecords, LabDns
from tests.lab.nodeagent.kubelet import KUBELET_PORT, KubeletServer
from tests.lab.nodeagent.net import Ipam, PodNetwork
from tests.lab.nodeagent.pods import NodeContext, PodWorker, Spawner

__all__ = ["Agent", "AgentConfig", "NodeSpec"]

logger = logging.getLogger(__name__)
JSON = dict[str, Any]

LEASE_SECONDS = 40
LEASE_RENEW = 10.0
STATUS_HEARTBEAT = 30.0
LEASE_NAMESPACE = "kube-node-lease"


def _micro_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass(frozen=True)
class NodeSpec:
    name: str
    address: str
    pod_cidr: str
    labels: Mapping[str, str]
    taints: list[JSON]
    capacity: Mapping[str, str]
    allocatable: Mapping[str, str]

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> NodeSpec:
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: must be an object with name, address, podCIDR, capacity")
        allowed = {"name", "address", "podCIDR", "labels", "taints", "capacity", "allocatable"}
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; allowed are {sorted(allowed)}")
        for key in ("name", "address", "podCIDR"):
            if not isinstance(raw.get(key), str) or not raw[key]:
                raise ValueError(f"{where}.{key}: a non-empty string is required")
        try:
            ipaddress.IPv4Address(raw["address"])
            ipaddress.IPv4Network(raw["podCIDR"])
        except ValueError as exc:
            raise ValueError(f"{where}: address/podCIDR: {exc}") from exc
        capacity = raw.get("capacity") or {}
        for name, value in {**capacity, **(raw.get("allocatable") or {})}.items():
            try:
                specs.parse_quantity(value)
            except ValueError as exc:
                raise ValueError(f"{where}.capacity.{name}: {exc}") from exc
        taints = raw.get("taints") or []
        if not isinstance(taints, list) or not all(
            isinstance(t, dict) and t.get("key") and t.get("effect") for t in taints
        ):
            raise ValueError(f"{where}.taints: a list of {{key, value?, effect}}")
        return cls(
            name=raw["name"],
            address=raw["address"],
            pod_cidr=raw["podCIDR"],
            labels={str(k): str(v) for k, v in (raw.get("labels") or {}).items()},
            taints=list(taints),
            capacity={str(k): str(v) for k, v in capacity.items()},
            allocatable={str(k): str(v) for k, v in (raw.get("allocatable") or capacity).items()},
        )


@dataclasses.dataclass
class AgentConfig:
    workdir: pathlib.Path
    bridge: str
    subnet: str
    gateway: str
    api_host: str
    api_port: int
    cluster_domain: str
    dns_address: str
    hooks_port: int
    nodes: list[NodeSpec]
    images: list[specs.ImageConfig]
    backoff_initial: float = 10.0
    backoff_max: float = 300.0

    @classmethod
    def from_dict(cls, raw: Any) -> AgentConfig:
        if not isinstance(raw, dict):
            raise ValueError("agent config: must be a JSON object")
        required = ["workdir", "bridge", "subnet", "gateway", "apiserver", "nodes", "images"]
        missing = [k for k in required if k not in raw]
        if missing:
            raise ValueError(f"agent config: missing {missing}")
        allowed = {*required, "clusterDomain", "dns", "hooks", "restartBackoff"}
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise ValueError(f"agent config: unknown keys {unknown}; allowed are {sorted(allowed)}")
        api = raw["apiserver"]
        if not isinstance(api, dict) or not isinstance(api.get("host"), str):
            raise ValueError("agent config.apiserver: needs {host: str, port: int}")
        if len(raw["bridge"]) > 15:
            raise ValueError("agent config.bridge: an interface name of at most 15 characters")
        nodes = [
            NodeSpec.from_dict(n, f"agent config.nodes[{i}]") for i, n in enumerate(raw["nodes"])
        ]
        names = [n.name for n in nodes]
        if len(set(names)) != len(names):
            raise ValueError(f"agent config.nodes: duplicate names in {names}")
        images = [
            specs.ImageConfig.from_dict(image, f"agent config.images[{i}]")
            for i, image in enumerate(raw["images"])
        ]
        backoff = raw.get("restartBackoff") or {}
        return cls(
            workdir=pathlib.Path(raw["workdir"]),
            bridge=str(raw["bridge"]),
            subnet=str(ipaddress.IPv4Network(raw["subnet"])),
            gateway=str(ipaddress.IPv4Address(raw["gateway"])),
            api_host=api["host"],
            api_port=int(api.get("port", 443)),
            cluster_domain=str(raw.get("clusterDomain", "cluster.local")),
            dns_address=str((raw.get("dns") or {}).get("address", "")),
            hooks_port=int((raw.get("hooks") or {}).get("port", 0)),
            nodes=nodes,
            images=images,
            backoff_initial=float(backoff.get("initialSeconds", 10)),
            backoff_max=float(backoff.get("maxSeconds", 300)),
        )


@dataclasses.dataclass
class _Node:
    spec: NodeSpec
    context: NodeContext
    stop: threading.Event
    informer: Informer | None = None
    server: KubeletServer | None = None
    uid: str = ""
    last_status: float = 0.0


class Agent:
    """Everything the node agent runs (see the package docstring)."""

    def __init__(self, config: AgentConfig, api: KubeApi) -> None:
        self.config = config
        self.api = api
        self.workdir = config.workdir
        self.images = config.images
        self.api_host = config.api_host
        self.api_port = config.api_port
        self.dns_address = config.dns_address
        self.cluster_domain = config.cluster_domain
        self.backoff_initial = config.backoff_initial
        self.backoff_max = config.backoff_max
        self.network = PodNetwork(config.bridge, config.subnet, config.gateway)
        self.cgroups = CgroupRoot(f"tidetune-lab-{config.bridge}")
        self.spawner = Spawner()
        self.nodes: dict[str, _Node] = {}
        self.workers: dict[str, PodWorker] = {}
        self.finished: set[str] = set()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._events: queue.Queue[JSON] = queue.Queue(maxsize=2000)
        self.records = ClusterRecords(config.cluster_domain, config.api_host)
        self.dns: LabDns | None = None
        self.hooks: ThreadingHTTPServer | None = None
        self.kubelet_version = "v0.0.0"
        self._informers: list[Informer] = []
        self._transitions: dict[tuple[str, str], str] = {}

    # --- start / stop ---------------------------------------------------------------------

    def start(self) -> str:
        """Start everything; returns the hooks URL."""
        self.network.check_bridge()
        self.network.sweep()
        self.cgroups.sweep()
        (self.workdir / "pods").mkdir(parents=True, exist_ok=True)
        (self.workdir / "pods").chmod(0o700)
        with contextlib.suppress(Exception):
            self.kubelet_version = str(self.api.get("/version").get("gitVersion", "v0.0.0"))
        if self.dns_address:
            self.network.add_address(self.dns_address)
            self.dns = LabDns(self.records, self.dns_address)
            self.dns.start()
        for path, handler in (
            ("/api/v1/services", self.records.on_service),
            ("/apis/discovery.k8s.io/v1/endpointslices", self.records.on_slice),
        ):
            self._informers.append(Informer(self.api, path, handler, stop=self._stop).start())
        threading.Thread(target=self._post_events, name="events", daemon=True).start()
        for node in self.config.nodes:
            self.add_node(node)
        threading.Thread(target=self._heartbeats, name="heartbeats", daemon=True).start()
        for informer in self._informers:
            informer.synced.wait(30)
        self.hooks = _HooksServer(("127.0.0.1", self.config.hooks_port), self)
        threading.Thread(target=self.hooks.serve_forever, name="hooks", daemon=True).start()
        return f"http://127.0.0.1:{self.hooks.server_address[1]}"

    def stop(self) -> None:
        """Kill every pod, remove namespaces, veths, addresses and cgroups (nodes stay)."""
        self._stop.set()
        if self.hooks is not None:
            self.hooks.shutdown()
        with self._lock:
            workers = list(self.workers.values())
            nodes = list(self.nodes.values())
        for worker in workers:
            worker.abandon()
        for worker in workers:
            worker.join(10)
        for node in nodes:
            node.stop.set()
            if node.server is not None:
                node.server.stop()
        if self.dns is not None:
            self.dns.stop()
        self.network.close()
        self.cgroups.close()
        self.spawner.close()

    # --- nodes ----------------------------------------------------------------------------

    def add_node(self, spec: NodeSpec) -> None:
        with self._lock:
            if spec.name in self.nodes:
                raise ValueError(f"node {spec.name} is already run by this agent")
            reserved = [spec.address, self.config.gateway, self.dns_address or self.config.gateway]
            context = NodeContext(
                spec.name, spec.address, Ipam(spec.pod_cidr, reserved), spec.allocatable
            )
            node = _Node(spec, context, threading.Event())
            self.nodes[spec.name] = node
        self.network.add_address(spec.address)
        node.server = KubeletServer(spec.name, spec.address, self.workdir / "certs", self._logs)
        node.server.start()
        node.uid = self._register(spec)
        self._renew_lease(node)
        node.informer = Informer(
            self.api,
            "/api/v1/pods",
            self._on_pod,
            stop=node.stop,
            fieldSelector=f"spec.nodeName={spec.name}",
        ).start()
        node.informer.synced.wait(30)
        logger.info("node %s registered (%s, pods from %s)", spec.name, spec.address, spec.pod_cidr)

    def _node_object(self, spec: NodeSpec) -> JSON:
        labels = {
            "kubernetes.io/hostname": spec.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "beta.kubernetes.io/os": "linux",
            "beta.kubernetes.io/arch": "amd64",
            **spec.labels,
        }
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": spec.name,
                "labels": labels,
                "annotations": {"volumes.kubernetes.io/controller-managed-attach-detach": "true"},
            },
            "spec": {"podCIDR": spec.pod_cidr, "podCIDRs": [spec.pod_cidr], "taints": spec.taints},
            "status": self._node_status(spec),
        }

    def _node_status(self, spec: NodeSpec) -> JSON:
        now = _now()

        def condition(kind: str, status: str, reason: str, message: str) -> JSON:
            return {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": self._transition(spec, kind, now),
            }

        return {
            "capacity": dict(spec.capacity),
            "allocatable": dict(spec.allocatable),
            "conditions": [
                condition(
                    "MemoryPressure",
                    "False",
                    "KubeletHasSufficientMemory",
                    "kubelet has sufficient memory available",
                ),
                condition(
                    "DiskPressure",
                    "False",
                    "KubeletHasNoDiskPressure",
                    "kubelet has no disk pressure",
                ),
                condition(
                    "PIDPressure",
                    "False",
                    "KubeletHasSufficientPID",
                    "kubelet has sufficient PID available",
                ),
                condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": spec.address},
                {"type": "Hostname", "address": spec.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": KUBELET_PORT}},
            "nodeInfo": {
                "machineID": secrets.token_hex(16),
                "systemUUID": spec.name,
                "bootID": spec.name,
                "kernelVersion": platform.release(),
                "osImage": "TideTune lab (host filesystem)",
                "containerRuntimeVersion": "lab://0.1.0",
                "kubeletVersion": self.kubelet_version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def _transition(self, spec: NodeSpec, kind: str, now: str) -> str:
        return self._transitions.setdefault((spec.name, kind), now)

    def _register(self, spec: NodeSpec) -> str:
        body = self._node_object(spec)
        try:
            created = self.api.create("/api/v1/nodes", body)
        except ApiError as exc:
            if exc.status != 409:
                raise
            created = self.api.merge_patch(
                f"/api/v1/nodes/{spec.name}",
                {
                    "metadata": {"labels": body["metadata"]["labels"]},
                    "spec": {"taints": spec.taints, "unschedulable": None},
                },
            )
        self.api.strategic_patch(f"/api/v1/nodes/{spec.name}/status", {"status": body["status"]})
        return str(created["metadata"]["uid"])

    def _renew_lease(self, node: _Node) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases/{node.spec.name}"
        try:
            self.api.merge_patch(
                path, {"spec": {"renewTime": _micro_now(), "holderIdentity": node.spec.name}}
            )
        except ApiError as exc:
            if exc.status != 404:
                raise
            self.api.create(
                f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases",
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {
                        "name": node.spec.name,
                        "namespace": LEASE_NAMESPACE,
                        "ownerReferences": [
                            {
                                "apiVersion": "v1",
                                "kind": "Node",
                                "name": node.spec.name,
                                "uid": node.uid,
                            }
                        ],
                    },
                    "spec": {
                        "holderIdentity": node.spec.name,
                        "leaseDurationSeconds": LEASE_SECONDS,
                        "renewTime": _micro_now(),
                    },
                },
            )

    def _heartbeats(self) -> None:
        while not self._stop.wait(LEASE_RENEW):
            with self._lock:
                nodes = [n for n in self.nodes.values() if not n.stop.is_set()]
            for node in nodes:
                try:
                    self._renew_lease(node)
                    if time.monotonic() - node.last_status >= STATUS_HEARTBEAT:
                        self.api.strategic_patch(
                            f"/api/v1/nodes/{node.spec.name}/status",
                            {"status": {"conditions": self._node_status(node.spec)["conditions"]}},
                        )
                        node.last_status = time.monotonic()
                except Exception as exc:
                    logger.warning("node %s: heartbeat: %r", node.spec.name, exc)

    def _forget_node(self, name: str) -> _Node:
        with self._lock:
            node = self.nodes.pop(name)
        node.stop.set()
        if node.server is not None:
            node.server.stop()
        self.network.remove_address(node.spec.address)
        return node

    def _delete_node(self, name: str) -> None:
        with contextlib.suppress(ApiError):
            self.api.delete(f"/api/v1/nodes/{name}")

    def node_workers(self, name: str) -> list[PodWorker]:
        with self._lock:
            return [w for w in self.workers.values() if w.node.name == name]

    def lose_node(self, name: str) -> JSON:
        """The machine is gone: SIGKILL its pods at once, delete the Node (the pod GC
        deletes its pods later, as on a cluster)."""
        if name not in self.nodes:
            raise KeyError(f"node {name} is not run by this agent")
        node = self._forget_node(name)
        workers = self.node_workers(name)
        for worker in workers:
            worker.abandon()
        for worker in workers:
            worker.join(10)
        self._delete_node(name)
        del node
        return {"node": name, "killed": sorted(f"{w.namespace}/{w.pod_name}" for w in workers)}

    def reclaim_node(self, name: str, wait: bool, timeout: float) -> JSON:
        """Drain as ``kubectl drain`` does (cordon, evict every pod with its grace period,
        honouring PodDisruptionBudgets), then delete the Node."""
        if name not in self.nodes:
            raise KeyError(f"node {name} is not run by this agent")
        node = self.nodes[name]
        self.api.merge_patch(f"/api/v1/nodes/{name}", {"spec": {"unschedulable": True}})
        assert node.informer is not None
        pods = [p for p in list(node.informer.store.values())]

        def drain() -> None:
            deadline = time.monotonic() + timeout
            pending = list(pods)
            while pending and time.monotonic() < deadline:
                retry = []
                for pod in pending:
                    meta = pod["metadata"]
                    try:
                        self.api.create(
                            f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/eviction",
                            {
                                "apiVersion": "policy/v1",
                                "kind": "Eviction",
                                "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                            },
                        )
                    except ApiError as exc:
                        if exc.status == 429:
                            retry.append(pod)
                        elif exc.status != 404:
                            logger.warning("evict %s/%s: %s", meta["namespace"], meta["name"], exc)
                pending = retry
                if pending:
                    time.sleep(1.0)
            while node.informer is not None and node.informer.store and time.monotonic() < deadline:
                time.sleep(0.2)
            if name in self.nodes:
                self._forget_node(name)
            self._delete_node(name)
            for worker in self.node_workers(name):  # left after the timeout: the machine goes
                worker.abandon()

        names = sorted(f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in pods)
        if wait:
            drain()
        else:
            threading.Thread(target=drain, name=f"drain-{name}", daemon=True).start()
        return {"node": name, "evicted": names}

    # --- pods -----------------------------------------------------------------------------

    def _on_pod(self, kind: str, pod: JSON) -> None:
        meta = pod.get("metadata") or {}
        uid = str(meta.get("uid", ""))
        node_name = (pod.get("spec") or {}).get("nodeName", "")
        with self._lock:
            worker = self.workers.get(uid)
            if kind == "DELETED":
                if worker is not None:
                    worker.mark_gone()
                return
            if worker is not None:
                worker.update(pod)
                return
            node = self.nodes.get(node_name)
            if node is None or uid in self.finished or self._stop.is_set():
                return
            if (pod.get("status") or {}).get("phase") in {"Succeeded", "Failed"}:
                return  # ended under an earlier agent: a kubelet never runs it again
            worker = PodWorker(pod, node.context, self)
            self.workers[uid] = worker
        worker.start()

    def worker_done(self, uid: str) -> None:
        with self._lock:
            self.workers.pop(uid, None)
            self.finished.add(uid)

    def find_worker(self, namespace: str, name: str) -> PodWorker | None:
        with self._lock:
            for worker in self.workers.values():
                if worker.namespace == namespace and worker.pod_name == name:
                    return worker
        return None

    def _logs(
        self, namespace: str, pod: str, container: str, previous: bool
    ) -> tuple[pathlib.Path | None, bool, str]:
        worker = self.find_worker(namespace, pod)
        if worker is None:
            return None, False, f'pod "{pod}" in namespace "{namespace}" not found on this node'
        names = [c.name for c in worker.containers]
        if container not in names:
            return (
                None,
                False,
                f'container "{container}" in pod "{pod}" is not valid; one of {names}',
            )
        path, live = worker.log_file(container, previous)
        if path is None:
            if previous:
                return (
                    None,
                    False,
                    (f'previous terminated container "{container}" in pod "{pod}" not found'),
                )
            return None, False, f'container "{container}" in pod "{pod}" is waiting to start'
        return path, live, ""

    def kill_container(self, namespace: str, pod: str, container: str, sig: int) -> bool:
        worker = self.find_worker(namespace, pod)
        return worker is not None and worker.signal_container(container, sig)

    def event(
        self,
        pod: JSON,
        reason: str,
        message: str,
        *,
        warning: bool = False,
        field_path: str = "",
        node: str = "",
    ) -> None:
        meta = pod["metadata"]
        now = _micro_now()
        involved: JSON = {
            "kind": "Pod",
            "apiVersion": "v1",
            "namespace": meta["namespace"],
            "name": meta["name"],
            "uid": meta["uid"],
        }
        if field_path:
            involved["fieldPath"] = field_path
        with contextlib.suppress(queue.Full):
            self._events.put_nowait(
                {
                    "apiVersion": "v1",
                    "kind": "Event",
                    "metadata": {
                        "name": f"{meta['name']}.{secrets.token_hex(8)}",
                        "namespace": meta["namespace"],
                    },
                    "involvedObject": involved,
                    "reason": reason,
                    "message": message,
                    "type": "Warning" if warning else "Normal",
                    "source": {"component": "kubelet", "host": node},
                    "reportingComponent": "kubelet",
                    "reportingInstance": node,
                    "firstTimestamp": now[:19] + "Z",
                    "lastTimestamp": now[:19] + "Z",
                    "count": 1,
                }
            )

    def _post_events(self) -> None:
        while not self._stop.is_set():
            try:
                event = self._events.get(timeout=1.0)
            except queue.Empty:
                continue
            with contextlib.suppress(Exception):
                self.api.create(
                    f"/api/v1/namespaces/{event['metadata']['namespace']}/events", event
                )


class _HooksHandler(BaseHTTPRequestHandler):
    server: _HooksServer

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("hooks: " + format, *args)

    def _reply(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        agent = self.server.agent
        if self.path == "/healthz":
            self._reply(200, {"ok": True})
        elif self.path == "/nodes":
            self._reply(200, {"nodes": sorted(agent.nodes)})
        else:
            self._reply(404, {"error": f"no such hook: GET {self.path}"})

    def do_POST(self) -> None:
        agent = self.server.agent
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        parts = [urllib.parse.unquote(p) for p in url.path.strip("/").split("/")]
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self._reply(400, {"error": "the body must be JSON"})
            return
        try:
            if parts == ["nodes"]:
                spec = NodeSpec.from_dict(body, "node")
                agent.add_node(spec)
                self._reply(201, {"node": spec.name})
            elif len(parts) == 3 and parts[0] == "nodes" and parts[2] == "reclaim":
                wait = query.get("wait", "true").lower() != "false"
                timeout = float(query.get("timeout", "300"))
                self._reply(200, agent.reclaim_node(parts[1], wait, timeout))
            elif len(parts) == 3 and parts[0] == "nodes" and parts[2] == "lose":
                self._reply(200, agent.lose_node(parts[1]))
            elif (
                len(parts) == 6
                and parts[0] == "pods"
                and parts[3] == "containers"
                and parts[5] == "signal"
            ):
                raw = body.get("signal", "SIGKILL")
                sig = int(raw) if str(raw).isdigit() else int(signal.Signals[str(raw)])
                if not agent.kill_container(parts[1], parts[2], parts[4], sig):
                    self._reply(
                        404,
                        {
                            "error": f"no running container {parts[4]} in pod "
                            f"{parts[1]}/{parts[2]} on this agent"
                        },
                    )
                else:
                    self._reply(200, {"signalled": sig})
            else:
                self._reply(404, {"error": f"no such hook: POST {url.path}"})
        except KeyError as exc:
            self._reply(404, {"error": str(exc).strip("'\"")})
        except (ValueError, ApiError) as exc:
            self._reply(400, {"error": str(exc)})


class _HooksServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], agent: Agent) -> None:
        self.agent = agent
        super().__init__(address, _HooksHandler)
