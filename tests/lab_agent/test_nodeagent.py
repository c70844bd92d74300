"""The node agent against the real control plane: pods run as processes as a kubelet runs them.

One lab per module (:class:`tests.lab.cluster.Lab`: its bridge, control plane and node agent,
nothing else), with a GPU node and a CPU node; everything is driven with kubectl as a user
would.
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import itertools
import json
import os
import pathlib
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from tests.lab.cluster import GPU_POOL, Lab, cpu_node, gpu_node
from tests.lab.nodeagent.cgroups import CgroupRoot
from tests.lab.nodeagent.client import NodeAgentClient

NS = "agent"
JSON = dict[str, Any]

#: the node agent's settings for these tests: restarts back off from 1 s to 4 s (not 10 s to
#: 300 s), ``alpine`` runs the host's shell and ``python`` the host's python3 as user 10001
AGENT_SETTINGS: JSON = {
    "restartBackoff": {"initialSeconds": 1, "maxSeconds": 4},
    "images": [
        {"prefix": "alpine", "cmd": ["/bin/sh"], "env": {"PATH": "/usr/bin:/bin"}},
        {
            "prefix": "python",
            "entrypoint": ["/usr/bin/python3"],
            "user": "10001",
            "workingDir": "/tmp",
            "env": {"PATH": "/usr/bin:/bin"},
        },
    ],
}


@dataclasses.dataclass
class Cluster:
    lab: Lab

    @property
    def tmp(self) -> pathlib.Path:
        """The lab's directory (under /tmp): the hostPath volumes' sources."""
        return self.lab.workdir

    @property
    def hooks(self) -> NodeAgentClient:
        assert self.lab.hooks is not None
        return self.lab.hooks

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return self.lab.kubectl(*args, input=input, check=check, timeout=timeout)

    def apply(self, *manifests: JSON) -> None:
        self.kubectl("apply", "-n", NS, "-f", "-", input=yaml.safe_dump_all(manifests))

    def get(self, kind: str, name: str) -> JSON | None:
        result = self.kubectl("get", "-n", NS, kind, name, "-o", "json", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def wait_pod(
        self, name: str, predicate: Callable[[JSON], bool], timeout: float = 60, what: str = ""
    ) -> JSON:
        deadline = time.monotonic() + timeout
        pod: JSON | None = None
        while time.monotonic() < deadline:
            pod = self.get("pod", name)
            if pod is not None and predicate(pod):
                return pod
            time.sleep(0.3)
        status = json.dumps((pod or {}).get("status"), indent=1)[:3000]
        raise AssertionError(f"pod {name}: not {what or predicate} after {timeout} s: {status}")

    def logs(self, *args: str) -> str:
        return self.kubectl("logs", "-n", NS, *args).stdout

    def delete_pods(self, *names: str) -> None:
        self.kubectl("delete", "pod", "-n", NS, *names, "--wait=true")


def manifest(
    name: str,
    spec: str,
    *,
    node: str | None = "gpu-0",
    marker: pathlib.Path | None = None,
    labels: dict[str, str] | None = None,
) -> JSON:
    """Pod ``name`` whose spec is the YAML ``spec``.

    ``node``: bound to that node, tolerating the GPU node's taint (``None``: the scheduler
    places it, on cpu-0). ``marker``: that host directory (created if missing) at ``/marker``
    in every container, for the test to read what the pod wrote and to signal it.
    """
    body: JSON = yaml.safe_load(spec)
    if node is not None:
        body = {
            "nodeName": node,
            "tolerations": [{"key": "tidetune.io/online-serving", "operator": "Exists"}],
            **body,
        }
    if marker is not None:
        mount = {"name": "marker", "mountPath": "/marker"}
        for container in [*body.get("initContainers", []), *body["containers"]]:
            container.setdefault("volumeMounts", []).append(mount)
        volume = {"name": "marker", "hostPath": {"path": str(marker), "type": "DirectoryOrCreate"}}
        body.setdefault("volumes", []).append(volume)
    metadata: JSON = {"name": name, **({"labels": labels} if labels else {})}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": body}


def phase_is(*phases: str) -> Callable[[JSON], bool]:
    return lambda pod: (pod.get("status") or {}).get("phase") in phases


def statuses(pod: JSON, init: bool = False) -> dict[str, JSON]:
    key = "initContainerStatuses" if init else "containerStatuses"
    return {s["name"]: s for s in (pod.get("status") or {}).get(key) or []}


def condition(pod: JSON, kind: str) -> str:
    for item in (pod.get("status") or {}).get("conditions") or []:
        if item["type"] == kind:
            return str(item["status"])
    return ""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    lab = Lab(
        tmp_path_factory.mktemp("nodeagent"),
        nodes=[gpu_node("gpu-0"), cpu_node("cpu-0")],
        kubeflow=False,
        kueue=False,
        s3=False,
        agent=AGENT_SETTINGS,
    )
    with lab:
        bridge = lab.network.bridge
        lab.kubectl("create", "namespace", NS, check=True)
        deadline = time.monotonic() + 60
        while lab.kubectl("get", "sa", "default", "-n", NS).returncode:
            assert time.monotonic() < deadline, "no default ServiceAccount"
            time.sleep(0.3)
        yield Cluster(lab)
    leftovers = list(pathlib.Path("/run/netns").glob(f"{bridge}-*"))
    assert not leftovers, f"the agent left network namespaces: {leftovers}"


def test_nodes_are_registered_ready_with_leases(cluster: Cluster) -> None:
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    by_name = {n["metadata"]["name"]: n for n in nodes}
    gpu = by_name["gpu-0"]
    assert GPU_POOL["nodeSelector"].items() <= gpu["metadata"]["labels"].items()
    assert gpu["spec"]["taints"][0]["key"] == "tidetune.io/online-serving"
    assert gpu["status"]["capacity"]["nvidia.com/gpu"] == "2"
    assert {a["type"]: a["address"] for a in gpu["status"]["addresses"]} == {
        "InternalIP": cluster.lab.network.node_address(0),
        "Hostname": "gpu-0",
    }
    assert gpu["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] == 10250
    ready = next(c for c in gpu["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["reason"] == "KubeletReady"
    lease = json.loads(
        cluster.kubectl("get", "lease", "-n", "kube-node-lease", "gpu-0", "-o", "json").stdout
    )
    first = lease["spec"]["renewTime"]
    assert lease["spec"]["holderIdentity"] == "gpu-0"
    assert lease["metadata"]["ownerReferences"][0]["name"] == "gpu-0"
    deadline = time.monotonic() + 15  # renewed every 10 s
    renewed = first
    while renewed == first and time.monotonic() < deadline:
        time.sleep(0.5)
        renewed = json.loads(
            cluster.kubectl("get", "lease", "-n", "kube-node-lease", "gpu-0", "-o", "json").stdout
        )["spec"]["renewTime"]
    assert renewed > first


IDENTITY_SPEC = """
restartPolicy: Never
securityContext: {runAsUser: 1000, runAsGroup: 3000, fsGroup: 2000}
initContainers:
- name: prepare
  image: alpine:3.20
  command: ["sh", "-c", "echo prepared-by-init > /shared/note"]
  volumeMounts: [{name: shared, mountPath: /shared}]
containers:
- name: main
  image: python:3.11
  args:
  - -c
  - |
    import json, os, socket, ssl, urllib.request, urllib.error
    sa = "/var/run/secrets/kubernetes.io/serviceaccount"
    token = open(sa + "/token").read()
    url = ("https://" + os.environ["KUBERNETES_SERVICE_HOST"] + ":"
           + os.environ["KUBERNETES_SERVICE_PORT"] + "/api/v1/namespaces/agent/secrets")
    request = urllib.request.Request(url, headers={"Authorization": "Bearer " + token})
    try:
        urllib.request.urlopen(request, context=ssl.create_default_context(cafile=sa + "/ca.crt"))
        api = "allowed"
    except urllib.error.HTTPError as exc:
        api = f"{exc.code} {json.load(exc)['message']}"
    print(json.dumps({
        "uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups()),
        "cwd": os.getcwd(), "hostname": socket.gethostname(),
        "env": {k: os.environ.get(k) for k in ("PW", "MODE", "NODE", "POD_IP", "GREETING")},
        "mode": open("/etc/cfg/mode").read(), "pw": open("/etc/sec/pw").read(),
        "note": open("/shared/note").read(), "namespace": open(sa + "/namespace").read(),
        "aud_token": open("/var/run/aud/token").read(), "api": api,
        "hosts": open("/etc/hosts").read(), "resolv": open("/etc/resolv.conf").read(),
        "labels": open("/etc/podinfo/labels").read(),
    }))
  env:
  - {name: PW, valueFrom: {secretKeyRef: {name: creds, key: pw}}}
  - {name: MODE, valueFrom: {configMapKeyRef: {name: settings, key: mode}}}
  - {name: NODE, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
  - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
  - {name: GREETING, value: "hello from $(NODE)"}
  volumeMounts:
  - {name: cfg, mountPath: /etc/cfg, readOnly: true}
  - {name: sec, mountPath: /etc/sec}
  - {name: shared, mountPath: /shared}
  - {name: aud, mountPath: /var/run/aud}
  - {name: podinfo, mountPath: /etc/podinfo}
volumes:
- {name: cfg, configMap: {name: settings}}
- {name: sec, secret: {secretName: creds, defaultMode: 0400}}
- {name: shared, emptyDir: {}}
- name: aud
  projected:
    sources:
    - serviceAccountToken: {audience: lab-audience, expirationSeconds: 600, path: token}
- name: podinfo
  downwardAPI:
    items: [{path: labels, fieldRef: {fieldPath: metadata.labels}}]
"""


def _jwt_claims(token: str) -> JSON:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def test_pod_runs_as_its_user_with_env_volumes_and_a_bound_token(cluster: Cluster) -> None:
    cluster.kubectl("create", "secret", "generic", "creds", "-n", NS, "--from-literal=pw=hunter2")
    cluster.kubectl("create", "configmap", "settings", "-n", NS, "--from-literal=mode=fast")
    cluster.apply(manifest("ident", IDENTITY_SPEC, labels={"app": "ident"}))
    pod = cluster.wait_pod("ident", phase_is("Succeeded", "Failed"), 90)
    seen = json.loads(cluster.logs("ident", "-c", "main"))
    assert pod["status"]["phase"] == "Succeeded", seen
    assert (seen["uid"], seen["gid"]) == (1000, 3000)
    assert 2000 in seen["groups"]
    assert seen["cwd"] == "/tmp"  # the image's workingDir
    assert seen["hostname"] == "ident"
    ip = pod["status"]["podIP"]
    network = cluster.lab.network
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(network.pod_cidr(0))
    assert ip != network.node_address(0)
    assert seen["env"] == {
        "PW": "hunter2",
        "MODE": "fast",
        "NODE": "gpu-0",
        "POD_IP": ip,
        "GREETING": "hello from gpu-0",
    }
    assert (seen["mode"], seen["pw"], seen["note"]) == ("fast", "hunter2", "prepared-by-init\n")
    assert seen["namespace"] == NS
    assert seen["labels"] == 'app="ident"'
    assert f"{ip}\tident" in seen["hosts"]
    assert f"search {NS}.svc.cluster.local svc.cluster.local cluster.local" in seen["resolv"]
    # the token authenticates as the pod's ServiceAccount (RBAC then refuses it)
    assert seen["api"].startswith("403 ") and f"system:serviceaccount:{NS}:default" in seen["api"]
    claims = _jwt_claims(seen["aud_token"])
    assert claims["aud"] == ["lab-audience"]
    assert claims["exp"] - claims["iat"] == 600
    assert claims["kubernetes.io"]["pod"]["name"] == "ident"
    init = statuses(pod, init=True)["prepare"]
    assert init["state"]["terminated"]["reason"] == "Completed"
    assert condition(pod, "Initialized") == "True"
    assert condition(pod, "Ready") == "False"  # PodCompleted


EXITS_SPEC = """
restartPolicy: Never
containers:
- name: message
  image: alpine
  command: ["sh", "-c", "echo 'checkpoint missing' > /dev/termination-log; exit 3"]
- name: custom-path
  image: alpine
  command: ["sh", "-c", "echo done > /tmp/my-termination; exit 0"]
  terminationMessagePath: /tmp/my-termination
- name: fallback
  image: alpine
  command: ["sh", "-c", "for i in 1 2 3; do echo line $i; done; exit 2"]
  terminationMessagePolicy: FallbackToLogsOnError
- name: missing
  image: alpine
  command: ["no-such-binary"]
- name: oom
  image: python
  args: ["-c", "x = bytearray(400 * 1024 * 1024); print(len(x))"]
  resources: {limits: {memory: 64Mi}}
"""


def test_exit_codes_reasons_and_termination_messages(cluster: Cluster) -> None:
    cluster.apply(manifest("exits", EXITS_SPEC))
    pod = cluster.wait_pod("exits", phase_is("Failed", "Succeeded"), 60)
    assert pod["status"]["phase"] == "Failed"
    terminated = {name: s["state"]["terminated"] for name, s in statuses(pod).items()}
    assert terminated["message"]["exitCode"] == 3
    assert terminated["message"]["reason"] == "Error"
    assert terminated["message"]["message"] == "checkpoint missing\n"
    assert terminated["custom-path"]["reason"] == "Completed"
    assert terminated["custom-path"]["message"] == "done\n"
    assert terminated["fallback"]["message"] == "line 1\nline 2\nline 3\n"
    assert terminated["missing"]["reason"] == "StartError"
    assert terminated["missing"]["exitCode"] == 128
    assert (
        'exec: "no-such-binary": executable file not found in $PATH'
        in terminated["missing"]["message"]
    )
    probe = CgroupRoot("tidetune-lab-probe")
    probe.close()
    if probe.available:
        assert terminated["oom"]["reason"] == "OOMKilled"
        assert terminated["oom"]["exitCode"] == 137
    for item in terminated.values():
        assert item["startedAt"] <= item["finishedAt"]
        assert item["containerID"].startswith("lab://")


def _grace_pod(name: str, marker: pathlib.Path, ignore_term: bool, node: str = "gpu-0") -> JSON:
    """Writes its pid to /marker/NAME.pid, SIGTERM to /marker/NAME; exits on it or not."""
    handler = "pass" if ignore_term else "sys.exit(0)"
    spec = f"""
terminationGracePeriodSeconds: {3 if ignore_term else 30}
containers:
- name: main
  image: python
  securityContext:
    runAsUser: 0
  args:
  - -c
  - |
    import os, signal, sys, time
    def on_term(*_):
        open("/marker/{name}", "a").write("SIGTERM\\n")
        {handler}
    signal.signal(signal.SIGTERM, on_term)
    open("/marker/{name}.pid", "w").write(str(os.getpid()))
    while True:
        time.sleep(0.1)
"""
    return manifest(name, spec, node=node, marker=marker)


def _wait_for_file(path: pathlib.Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_deletion_sigterm_then_sigkill_after_the_grace_period(cluster: Cluster) -> None:
    marker = cluster.tmp / "grace"
    cluster.apply(_grace_pod("stubborn", marker, ignore_term=True))
    cluster.apply(_grace_pod("polite", marker, ignore_term=False))
    for name in ("stubborn", "polite"):
        cluster.wait_pod(name, phase_is("Running"), 60)
        _wait_for_file(marker / f"{name}.pid")
    pids = {n: int((marker / f"{n}.pid").read_text()) for n in ("stubborn", "polite")}
    took = {}
    for name in ("stubborn", "polite"):
        start = time.monotonic()
        cluster.delete_pods(name)
        took[name] = time.monotonic() - start
        assert (marker / name).read_text() == "SIGTERM\n"
        assert not _alive(pids[name])
    assert 3 <= took["stubborn"] < 12, took  # SIGKILL once the 3 s grace period ran out
    assert took["polite"] < 10, took  # gone as soon as it exited, not after its 30 s


def test_lifecycle_hooks_around_start_and_deletion(cluster: Cluster) -> None:
    marker = cluster.tmp / "hooks"
    spec = """
terminationGracePeriodSeconds: 10
containers:
- name: main
  image: alpine
  command:
  - sh
  - -c
  - "trap 'echo TERM >> /marker/log; exit 0' TERM; while true; do sleep 0.1; done"
  lifecycle:
    postStart: {exec: {command: ["sh", "-c", "echo postStart >> /marker/log"]}}
    preStop: {exec: {command: ["sh", "-c", "echo preStop >> /marker/log; sleep 1"]}}
"""
    cluster.apply(manifest("hooked", spec, marker=marker))
    cluster.wait_pod("hooked", phase_is("Running"), 60)
    _wait_for_file(marker / "log")  # postStart ran
    start = time.monotonic()
    cluster.delete_pods("hooked")
    assert (marker / "log").read_text().split() == ["postStart", "preStop", "TERM"]
    assert 1 <= time.monotonic() - start < 8  # the hook's second, then SIGTERM ends it


def test_crash_loop_back_off(cluster: Cluster) -> None:
    marker = cluster.tmp / "crash"
    spec = """
containers:
- name: main
  image: alpine
  command: ["sh", "-c", "date +%s.%N >> /marker/starts; echo attempt; exit 1"]
"""
    cluster.apply(manifest("crasher", spec, marker=marker))
    pod = cluster.wait_pod(
        "crasher",
        lambda p: (
            statuses(p).get("main", {}).get("state", {}).get("waiting", {}).get("reason")
            == "CrashLoopBackOff"
            and statuses(p)["main"]["restartCount"] >= 3
        ),
        60,
        "in CrashLoopBackOff after 3 restarts",
    )
    main = statuses(pod)["main"]
    assert main["lastState"]["terminated"]["exitCode"] == 1
    assert "back-off" in main["state"]["waiting"]["message"]
    assert pod["status"]["phase"] == "Running"
    starts = [float(x) for x in (marker / "starts").read_text().split()]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # the kubelet's rule with restartBackoff 1 s doubling to 4 s: at once, 1 s, 2 s, 4 s
    # (upper bounds leave room for a loaded machine: each start spawns a shim)
    assert gaps[0] < 0.9, gaps
    assert 0.9 <= gaps[1] < 3, gaps
    assert 1.9 <= gaps[2] < 5 and gaps[2] > gaps[1] + 0.5, gaps
    assert cluster.logs("crasher", "--previous").strip() == "attempt"
    cluster.delete_pods("crasher")


def test_readiness_and_liveness_probes(cluster: Cluster) -> None:
    spec = """
terminationGracePeriodSeconds: 1
containers:
- name: slow-start
  image: alpine
  command: ["sh", "-c", "sleep 3; touch /data/ready; exec sleep 600"]
  readinessProbe:
    exec: {command: ["test", "-f", "/data/ready"]}
    periodSeconds: 1
  volumeMounts: [{name: data, mountPath: /data}]
- name: unhealthy
  image: alpine
  command: ["sleep", "600"]
  livenessProbe:
    tcpSocket: {port: 9999}
    periodSeconds: 1
    failureThreshold: 2
volumes: [{name: data, emptyDir: {}}]
"""
    cluster.apply(manifest("probed", spec))
    pod = cluster.wait_pod("probed", phase_is("Running"), 60)
    assert condition(pod, "Ready") == "False"
    pod = cluster.wait_pod("probed", lambda p: statuses(p)["slow-start"]["ready"], 30, "ready")
    assert statuses(pod)["slow-start"]["started"] is True
    pod = cluster.wait_pod(
        "probed",
        lambda p: statuses(p)["unhealthy"]["restartCount"] >= 1,
        30,
        "restarted by its liveness probe",
    )
    assert statuses(pod)["unhealthy"]["lastState"]["terminated"]["exitCode"] in (137, 143)
    events = cluster.kubectl(
        "get", "events", "-n", NS, "--field-selector", "involvedObject.name=probed", "-o", "json"
    ).stdout
    reasons = {e["reason"] for e in json.loads(events)["items"]}
    assert {"Unhealthy", "Killing"} <= reasons
    cluster.delete_pods("probed")


def test_kubectl_logs_and_kill_container(cluster: Cluster) -> None:
    spec = """
terminationGracePeriodSeconds: 1
containers:
- name: main
  image: alpine
  command: ["sh", "-c", "for i in 1 2 3 4 5; do echo line $i; done; echo oops >&2; sleep 600"]
"""
    cluster.apply(manifest("talker", spec))
    cluster.wait_pod("talker", phase_is("Running"), 60)
    deadline = time.monotonic() + 10
    while "oops" not in cluster.logs("talker") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cluster.logs("talker").splitlines() == [f"line {i}" for i in range(1, 6)] + ["oops"]
    assert cluster.logs("talker", "--tail=2").splitlines() == ["line 5", "oops"]
    stamped = cluster.logs("talker", "--timestamps", "--tail=1").split(" ", 1)
    assert stamped[0].endswith("Z") and stamped[1] == "oops\n"
    assert cluster.logs("talker", "--limit-bytes=8") == "line 1\nl"
    assert cluster.logs("talker", "--since=1h").splitlines()[0] == "line 1"
    time.sleep(2.5)
    assert cluster.logs("talker", "--since=2s") == ""  # every line is older
    cluster.hooks.kill_container(NS, "talker", "main", "SIGKILL")
    pod = cluster.wait_pod(
        "talker",
        lambda p: (
            statuses(p)["main"]["restartCount"] == 1 and "running" in statuses(p)["main"]["state"]
        ),
        30,
        "restarted",
    )
    assert statuses(pod)["main"]["lastState"]["terminated"]["exitCode"] == 137
    assert "line 1" in cluster.logs("talker", "--previous")
    cluster.delete_pods("talker")


def test_kubectl_logs_follow_ends_with_the_container(cluster: Cluster) -> None:
    spec = """
restartPolicy: Never
containers:
- name: main
  image: alpine
  command: ["sh", "-c", "for i in 1 2 3; do echo tick $i; sleep 1; done"]
"""
    cluster.apply(manifest("ticker", spec))
    cluster.wait_pod("ticker", phase_is("Running"), 60)
    start = time.monotonic()
    followed = cluster.kubectl("logs", "-n", NS, "ticker", "-f", timeout=30).stdout
    assert followed.splitlines() == ["tick 1", "tick 2", "tick 3"]
    assert time.monotonic() - start < 10
    cluster.delete_pods("ticker")


def _server(name: str, job: str) -> list[JSON]:
    """Pod ``name`` answering its job's name on port 23456, as ``master-0`` of the headless
    Service ``job``."""
    spec = f"""
hostname: master-0
subdomain: {job}
terminationGracePeriodSeconds: 1
containers:
- name: main
  image: python
  args:
  - -c
  - |
    import http.server
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"{job}")
    http.server.HTTPServer(("0.0.0.0", 23456), Handler).serve_forever()
  ports:
  - containerPort: 23456
  readinessProbe:
    tcpSocket:
      port: 23456
    periodSeconds: 1
"""
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": job},
        "spec": {"clusterIP": "None", "selector": {"job": job}, "ports": [{"port": 23456}]},
    }
    return [manifest(name, spec, node=None, labels={"job": job}), service]


def test_two_masters_on_one_port_found_by_dns(cluster: Cluster) -> None:
    cluster.apply(*_server("master-a", "job-a"), *_server("master-b", "job-b"))
    for name in ("master-a", "master-b"):
        pod = cluster.wait_pod(name, lambda p: condition(p, "Ready") == "True", 60, "ready")
        assert pod["spec"]["nodeName"] == "cpu-0"  # scheduled: the GPU node is tainted
    spec = """
restartPolicy: Never
containers:
- name: main
  image: python
  args:
  - -c
  - |
    import json, socket, time, urllib.request
    out = {}
    for attempt in range(50):
        try:
            for name in ("job-a", "master-0.job-b", "job-a.agent.svc.cluster.local"):
                out[name] = socket.gethostbyname(name)
            break
        except OSError:
            time.sleep(0.2)
    for name in ("job-a", "job-b"):
        out["http " + name] = urllib.request.urlopen(f"http://{name}:23456/").read().decode()
    out["api"] = socket.gethostbyname("kubernetes.default.svc")
    try:
        socket.gethostbyname("no-such-service")
    except OSError as exc:
        out["missing"] = type(exc).__name__
    print(json.dumps(out))
"""
    cluster.apply(manifest("dns-client", spec, node=None))
    pod = cluster.wait_pod("dns-client", phase_is("Succeeded", "Failed"), 60)
    out = json.loads(cluster.logs("dns-client"))
    assert pod["status"]["phase"] == "Succeeded", out
    ips = {n: cluster.get("pod", n)["status"]["podIP"] for n in ("master-a", "master-b")}  # type: ignore[index]
    assert ips["master-a"] != ips["master-b"]
    assert out["job-a"] == ips["master-a"] == out["job-a.agent.svc.cluster.local"]
    assert out["master-0.job-b"] == ips["master-b"]
    assert (out["http job-a"], out["http job-b"]) == ("job-a", "job-b")
    assert out["api"] == cluster.lab.network.gateway
    assert out["missing"] == "gaierror"
    cluster.delete_pods("master-a", "master-b", "dns-client")


def waiting(reason: str) -> Callable[[JSON], bool]:
    def check(pod: JSON) -> bool:
        state = statuses(pod).get("main", {}).get("state", {})
        return bool(state.get("waiting", {}).get("reason") == reason)

    return check


def test_unknown_image_and_missing_secret_keep_the_pod_pending(cluster: Cluster) -> None:
    needs_secret = """
restartPolicy: Never
containers:
- name: main
  image: alpine
  command: ["sh", "-c", "echo $TOKEN"]
  env: [{name: TOKEN, valueFrom: {secretKeyRef: {name: late, key: token}}}]
"""
    cluster.apply(
        manifest("no-image", 'containers: [{name: main, image: "registry.example/unknown:1"}]'),
        manifest("needs-secret", needs_secret),
    )
    pod = cluster.wait_pod(
        "no-image",
        lambda p: waiting("ErrImagePull")(p) or waiting("ImagePullBackOff")(p),
        30,
        "ErrImagePull",
    )
    assert pod["status"]["phase"] == "Pending"
    pod = cluster.wait_pod("needs-secret", waiting("CreateContainerConfigError"), 30)
    assert statuses(pod)["main"]["state"]["waiting"]["message"] == 'secret "late" not found'
    assert pod["status"]["phase"] == "Pending"
    cluster.kubectl("create", "secret", "generic", "late", "-n", NS, "--from-literal=token=t0k")
    cluster.wait_pod("needs-secret", phase_is("Succeeded"), 30)
    assert cluster.logs("needs-secret").strip() == "t0k"
    cluster.delete_pods("no-image", "needs-secret")


def _node(cluster: Cluster, name: str, index: int) -> JSON:
    """Node ``index`` of the lab's network (0 and 1 are the lab's own)."""
    return {
        "name": name,
        "address": cluster.lab.network.node_address(index),
        "podCIDR": cluster.lab.network.pod_cidr(index),
        "labels": {"spot": "true"},
        "capacity": {"cpu": "2", "memory": "4Gi", "pods": "10"},
    }


def test_reclaim_node_evicts_with_grace_then_deletes_it(cluster: Cluster) -> None:
    cluster.hooks.add_node(_node(cluster, "spot-1", 4))
    assert "spot-1" in cluster.hooks.nodes()
    marker = cluster.tmp / "reclaim"
    cluster.apply(_grace_pod("evictee", marker, ignore_term=False, node="spot-1"))
    cluster.wait_pod("evictee", phase_is("Running"), 60)
    _wait_for_file(marker / "evictee.pid")  # its SIGTERM handler is installed
    result = cluster.hooks.reclaim_node("spot-1", timeout=60)
    assert result["evicted"] == [f"{NS}/evictee"]
    assert cluster.get("pod", "evictee") is None
    assert (marker / "evictee").read_text() == "SIGTERM\n"
    assert cluster.kubectl("get", "node", "spot-1", check=False).returncode != 0


@pytest.mark.slow
def test_lost_node_kills_at_once_and_the_pod_gc_removes_its_pods(cluster: Cluster) -> None:
    cluster.hooks.add_node(_node(cluster, "spot-2", 5))
    marker = cluster.tmp / "lose"
    cluster.apply(_grace_pod("victim", marker, ignore_term=True, node="spot-2"))
    cluster.wait_pod("victim", phase_is("Running"), 60)
    _wait_for_file(marker / "victim.pid")
    pid = int((marker / "victim.pid").read_text())
    cluster.hooks.lose_node("spot-2")
    assert not _alive(pid)
    assert not (marker / "victim").exists()  # SIGKILL, no SIGTERM
    assert cluster.kubectl("get", "node", "spot-2", check=False).returncode != 0
    deadline = time.monotonic() + 150
    while cluster.get("pod", "victim") is not None:
        assert time.monotonic() < deadline, "the pod GC did not delete the lost node's pod"
        time.sleep(1)


def test_volumes_mounted_after_an_empty_dir_at_tmp(cluster: Cluster) -> None:
    """The agent's work directory is under /tmp (pytest's), so is every volume's source: an
    emptyDir at /tmp, mounted first, must not hide the ConfigMap and the token."""
    assert str(cluster.tmp).startswith("/tmp/")
    cluster.kubectl("create", "configmap", "tmp-volume-cfg", "-n", NS, "--from-literal=greeting=hi")
    spec = """
restartPolicy: Never
containers:
- name: main
  image: python
  args:
  - -c
  - |
    import json, os
    print(json.dumps({
        "greeting": open("/etc/lab-cfg/greeting").read(),
        "token": open("/var/run/lab-token/token").read(),
        "tmp": os.listdir("/tmp"),
    }))
  volumeMounts:
  - {name: scratch, mountPath: /tmp}
  - {name: cfg, mountPath: /etc/lab-cfg}
  - {name: token, mountPath: /var/run/lab-token}
volumes:
- {name: scratch, emptyDir: {}}
- {name: cfg, configMap: {name: tmp-volume-cfg}}
- name: token
  projected:
    sources: [{serviceAccountToken: {path: token, expirationSeconds: 600}}]
"""
    cluster.apply(manifest("tmp-volume", spec))
    pod = cluster.wait_pod("tmp-volume", phase_is("Succeeded", "Failed"), 60)
    main = statuses(pod)["main"]["state"]["terminated"]
    assert pod["status"]["phase"] == "Succeeded", main
    seen = json.loads(cluster.logs("tmp-volume"))
    assert seen["greeting"] == "hi"
    assert _jwt_claims(seen["token"])["kubernetes.io"]["pod"]["name"] == "tmp-volume"
    assert seen["tmp"] == []  # the emptyDir, not the host's /tmp
    cluster.delete_pods("tmp-volume")


def test_sidecar_serves_the_main_container_then_is_stopped_after_it(cluster: Cluster) -> None:
    marker = cluster.tmp / "sidecar"
    spec = """
restartPolicy: Never
terminationGracePeriodSeconds: 30
securityContext: {runAsUser: 0}
initContainers:
- name: server
  image: python
  restartPolicy: Always
  args:
  - -c
  - |
    import http.server, os, signal, time
    def on_term(*_):
        open("/marker/server-term", "w").write(repr(time.time()))
        os._exit(3)
    signal.signal(signal.SIGTERM, on_term)
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"from-sidecar")
    http.server.HTTPServer(("0.0.0.0", 23457), Handler).serve_forever()
  readinessProbe: {tcpSocket: {port: 23457}, periodSeconds: 1}
containers:
- name: main
  image: python
  args:
  - -c
  - |
    import os, time, urllib.request
    def fetch():
        for _ in range(100):
            try:
                url = "http://127.0.0.1:23457/"
                return urllib.request.urlopen(url, timeout=2).read().decode()
            except OSError:
                time.sleep(0.1)
        return "unreachable"
    print(fetch(), flush=True)
    while not os.path.exists("/marker/go"):
        time.sleep(0.1)
    print(fetch(), flush=True)
    open("/marker/main-exit", "w").write(repr(time.time()))
"""
    cluster.apply(manifest("with-sidecar", spec, marker=marker))
    pod = cluster.wait_pod(
        "with-sidecar",
        lambda p: (
            statuses(p, init=True).get("server", {}).get("ready") is True
            and "running" in statuses(p).get("main", {}).get("state", {})
        ),
        60,
        "running beside a ready sidecar",
    )
    server = statuses(pod, init=True)["server"]
    assert pod["status"]["phase"] == "Running"
    assert "running" in server["state"] and server["started"] is True
    assert (condition(pod, "Initialized"), condition(pod, "Ready")) == ("True", "True")
    (marker / "go").touch()
    start = time.monotonic()
    pod = cluster.wait_pod("with-sidecar", phase_is("Succeeded", "Failed"), 30)
    took = time.monotonic() - start
    assert pod["status"]["phase"] == "Succeeded"  # the sidecar's exit code 3 does not count
    assert cluster.logs("with-sidecar", "-c", "main").split() == ["from-sidecar"] * 2
    main = statuses(pod)["main"]["state"]["terminated"]
    assert main["exitCode"] == 0
    server = statuses(pod, init=True)["server"]
    assert server["state"]["terminated"]["exitCode"] == 3  # its SIGTERM handler
    assert server["restartCount"] == 0 and server["ready"] is False
    # stopped once the main container had exited, not after the 30 s grace period
    main_exit = float((marker / "main-exit").read_text())
    assert main_exit <= float((marker / "server-term").read_text())
    assert took < 20, took
    assert condition(pod, "Initialized") == "True"
    cluster.delete_pods("with-sidecar")


def test_sidecar_startup_probe_holds_the_main_container_and_it_stops_last(
    cluster: Cluster,
) -> None:
    marker = cluster.tmp / "slow-sidecar"
    spec = """
terminationGracePeriodSeconds: 10
initContainers:
- name: proxy
  image: alpine
  restartPolicy: Always
  command:
  - sh
  - -c
  - >-
    trap 'echo proxy-term >> /marker/order; exit 0' TERM;
    sleep 5; touch /marker/up; while true; do sleep 0.1; done
  startupProbe:
    exec: {command: ["test", "-f", "/marker/up"]}
    periodSeconds: 1
    failureThreshold: 60
containers:
- name: main
  image: alpine
  command:
  - sh
  - -c
  - >-
    test -f /marker/up && echo saw-proxy-up;
    trap 'sleep 1; echo main-term >> /marker/order; exit 0' TERM;
    while true; do sleep 0.1; done
"""
    cluster.apply(manifest("slow-sidecar", spec, marker=marker))
    pod = cluster.wait_pod(
        "slow-sidecar",
        lambda p: "running" in statuses(p, init=True).get("proxy", {}).get("state", {}),
        60,
        "with its sidecar running",
    )
    if not (marker / "up").exists():  # still in its startup: the main container waits
        assert statuses(pod, init=True)["proxy"]["started"] is False
        assert statuses(pod)["main"]["state"]["waiting"]["reason"] == "PodInitializing"
        assert pod["status"]["phase"] == "Pending"
        assert condition(pod, "Initialized") == "False"
    pod = cluster.wait_pod(
        "slow-sidecar",
        lambda p: "running" in statuses(p).get("main", {}).get("state", {}),
        60,
        "with its main container running",
    )
    assert (marker / "up").exists()
    proxy = statuses(pod, init=True)["proxy"]
    assert (proxy["started"], proxy["ready"]) == (True, True)  # ready: no readinessProbe
    deadline = time.monotonic() + 10
    while "saw-proxy-up" not in cluster.logs("slow-sidecar", "-c", "main"):
        assert time.monotonic() < deadline, "the main container started before the sidecar"
        time.sleep(0.2)
    start = time.monotonic()
    cluster.delete_pods("slow-sidecar")
    took = time.monotonic() - start
    # the sidecar gets its SIGTERM once the main container has exited (1 s into its trap)
    assert (marker / "order").read_text().split() == ["main-term", "proxy-term"]
    assert took < 9, took


def test_crashing_sidecar_is_restarted_in_a_never_pod(cluster: Cluster) -> None:
    marker = cluster.tmp / "flaky-sidecar"
    spec = """
restartPolicy: Never
terminationGracePeriodSeconds: 1
initContainers:
- name: flaky
  image: alpine
  restartPolicy: Always
  command: ["sh", "-c", "echo started >> /marker/starts; sleep 1; exit 3"]
containers:
- name: main
  image: alpine
  command: ["sleep", "600"]
"""
    cluster.apply(manifest("flaky-sidecar", spec, marker=marker))
    pod = cluster.wait_pod(
        "flaky-sidecar",
        lambda p: statuses(p, init=True).get("flaky", {}).get("restartCount", 0) >= 2,
        60,
        "with its sidecar restarted twice",
    )
    flaky = statuses(pod, init=True)["flaky"]
    assert flaky["lastState"]["terminated"]["exitCode"] == 3
    main = statuses(pod)["main"]
    assert "running" in main["state"] and main["restartCount"] == 0
    assert pod["status"]["phase"] == "Running"
    assert len((marker / "starts").read_text().split()) >= 3
    cluster.delete_pods("flaky-sidecar")
