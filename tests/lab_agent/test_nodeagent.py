"""The node agent against the real control plane: pods run as processes as a kubelet runs them.

One control plane (etcd, kube-apiserver, controller manager, scheduler) and one agent per
module, on a bridge of their own; everything is driven with kubectl as a user would.
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import json
import os
import pathlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.lab.controlplane import ControlPlane, free_port
from tests.lab.nodeagent.cgroups import CgroupRoot
from tests.lab.nodeagent.client import NodeAgentClient

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
NS = "agent"
JSON = dict[str, Any]


@dataclasses.dataclass
class Cluster:
    cp: ControlPlane
    hooks: NodeAgentClient
    tmp: pathlib.Path
    prefix: str  # "10.N" of the lab subnet
    agent_log: pathlib.Path

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return self.cp.kubectl(*args, input=input, check=check, timeout=timeout)

    def apply(self, manifest: str) -> None:
        self.kubectl("apply", "-n", NS, "-f", "-", input=manifest)

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
    tmp = tmp_path_factory.mktemp("nodeagent")
    prefix = _free_prefix()
    bridge = f"tta{os.getpid() % 100000}"
    gateway = f"{prefix}.0.1"
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    try:
        subprocess.run(["ip", "addr", "add", f"{gateway}/16", "dev", bridge], check=True)
        subprocess.run(["ip", "link", "set", bridge, "up"], check=True)
        port = free_port(gateway)
        with ControlPlane(tmp / "cp", host=gateway, port=port) as cp:
            config = {
                "workdir": str(tmp / "agent"),
                "bridge": bridge,
                "subnet": f"{prefix}.0.0/16",
                "gateway": gateway,
                "apiserver": {"host": gateway, "port": port},
                "clusterDomain": "cluster.local",
                "dns": {"address": f"{prefix}.0.2"},
                "hooks": {"port": 0},
                "restartBackoff": {"initialSeconds": 1, "maxSeconds": 4},
                "nodes": [
                    {
                        "name": "gpu-0",
                        "address": f"{prefix}.1.1",
                        "podCIDR": f"{prefix}.1.0/24",
                        "labels": {"tidetune.io/pool": "gpu"},
                        "taints": [{"key": "tidetune.io/online-serving", "effect": "NoSchedule"}],
                        "capacity": {
                            "cpu": "8",
                            "memory": "32Gi",
                            "pods": "110",
                            "nvidia.com/gpu": "2",
                        },
                    },
                    {
                        "name": "cpu-0",
                        "address": f"{prefix}.3.1",
                        "podCIDR": f"{prefix}.3.0/24",
                        "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                    },
                ],
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
            (tmp / "agent.json").write_text(json.dumps(config))
            log = tmp / "agent.log"
            env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
            with log.open("wb") as err:
                agent = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "tests.lab.nodeagent",
                        "--kubeconfig",
                        str(cp.kubeconfig),
                        "--config",
                        str(tmp / "agent.json"),
                    ],
                    cwd=REPO_ROOT,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    text=True,
                )
            try:
                line = _read_ready(agent, 60)
                assert line.startswith("ready "), f"{line!r}; agent log:\n{log.read_text()[-3000:]}"
                hooks = NodeAgentClient(json.loads(line.split(" ", 1)[1])["hooks"])
                cp.kubectl("create", "namespace", NS)
                deadline = time.monotonic() + 60
                while cp.kubectl("get", "sa", "default", "-n", NS, check=False).returncode:
                    assert time.monotonic() < deadline, "no default ServiceAccount"
                    time.sleep(0.3)
                yield Cluster(cp, hooks, tmp, prefix, log)
            finally:
                agent.terminate()
                try:
                    agent.wait(60)
                except subprocess.TimeoutExpired:
                    agent.kill()
    finally:
        subprocess.run(["ip", "link", "del", bridge], check=False)
    leftovers = [p for p in pathlib.Path("/run/netns").glob(f"{bridge}-*")]
    assert not leftovers, f"the agent left network namespaces: {leftovers}"


def _free_prefix() -> str:
    """A 10.N/16 no interface of this machine uses (other labs may run at the same time)."""
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    for offset in range(50):
        octet = 202 + (os.getpid() + offset) % 50
        if f" 10.{octet}." not in used:
            return f"10.{octet}"
    raise RuntimeError("no free 10.N/16 for the node agent's test bridge")


def _read_ready(agent: subprocess.Popen[str], timeout: float) -> str:
    box: list[str] = []
    reader = threading.Thread(
        target=lambda: box.append(agent.stdout.readline() if agent.stdout else ""), daemon=True
    )
    reader.start()
    reader.join(timeout)
    return box[0] if box else ""


def test_nodes_are_registered_ready_with_leases(cluster: Cluster) -> None:
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    by_name = {n["metadata"]["name"]: n for n in nodes}
    gpu = by_name["gpu-0"]
    assert gpu["metadata"]["labels"]["tidetune.io/pool"] == "gpu"
    assert gpu["spec"]["taints"][0]["key"] == "tidetune.io/online-serving"
    assert gpu["status"]["capacity"]["nvidia.com/gpu"] == "2"
    assert {a["type"]: a["address"] for a in gpu["status"]["addresses"]} == {
        "InternalIP": f"{cluster.prefix}.1.1",
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


IDENTITY_POD = """
apiVersion: v1
kind: Pod
metadata: {name: ident, labels: {app: ident}}
spec:
  nodeName: gpu-0
  restartPolicy: Never
  tolerations: [{key: tidetune.io/online-serving, operator: Exists}]
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
    cluster.apply(IDENTITY_POD)
    pod = cluster.wait_pod("ident", phase_is("Succeeded", "Failed"), 90)
    seen = json.loads(cluster.logs("ident", "-c", "main"))
    assert pod["status"]["phase"] == "Succeeded", seen
    assert (seen["uid"], seen["gid"]) == (1000, 3000)
    assert 2000 in seen["groups"]
    assert seen["cwd"] == "/tmp"  # the image's workingDir
    assert seen["hostname"] == "ident"
    ip = pod["status"]["podIP"]
    assert ip.startswith(f"{cluster.prefix}.1.") and ip != f"{cluster.prefix}.1.1"
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


EXITS_POD = """
apiVersion: v1
kind: Pod
metadata: {name: exits}
spec:
  nodeName: gpu-0
  restartPolicy: Never
  tolerations: [{key: tidetune.io/online-serving, operator: Exists}]
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
    cluster.apply(EXITS_POD)
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


def _grace_pod(name: str, marker: pathlib.Path, ignore_term: bool) -> str:
    handler = "pass" if ignore_term else "sys.exit(0)"
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: gpu-0
  terminationGracePeriodSeconds: {3 if ignore_term else 30}
  tolerations: [{{key: tidetune.io/online-serving, operator: Exists}}]
  containers:
  - name: main
    image: python
    securityContext: {{runAsUser: 0}}
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
    volumeMounts: [{{name: marker, mountPath: /marker}}]
  volumes:
  - {{name: marker, hostPath: {{path: {marker}, type: DirectoryOrCreate}}}}
"""


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
        deadline = time.monotonic() + 10
        while not (marker / f"{name}.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    pids = {n: int((marker / f"{n}.pid").read_text()) for n in ("stubborn", "polite")}
    took = {}
    for name in ("stubborn", "polite"):
        start = time.monotonic()
        cluster.kubectl("delete", "pod", "-n", NS, name, "--wait=true")
        took[name] = time.monotonic() - start
        assert (marker / name).read_text() == "SIGTERM\n"
        assert not _alive(pids[name])
    assert 3 <= took["stubborn"] < 12, took  # SIGKILL once the 3 s grace period ran out
    assert took["polite"] < 10, took  # gone as soon as it exited, not after its 30 s


def test_lifecycle_hooks_around_start_and_deletion(cluster: Cluster) -> None:
    marker = cluster.tmp / "hooks"
    cluster.apply(f"""
apiVersion: v1
kind: Pod
metadata: {{name: hooked}}
spec:
  nodeName: gpu-0
  terminationGracePeriodSeconds: 10
  tolerations: [{{key: tidetune.io/online-serving, operator: Exists}}]
  containers:
  - name: main
    image: alpine
    command:
    - sh
    - -c
    - "trap 'echo TERM >> /marker/log; exit 0' TERM; while true; do sleep 0.1; done"
    lifecycle:
      postStart: {{exec: {{command: ["sh", "-c", "echo postStart >> /marker/log"]}}}}
      preStop: {{exec: {{command: ["sh", "-c", "echo preStop >> /marker/log; sleep 1"]}}}}
    volumeMounts: [{{name: marker, mountPath: /marker}}]
  volumes:
  - {{name: marker, hostPath: {{path: {marker}, type: DirectoryOrCreate}}}}
""")
    cluster.wait_pod("hooked", phase_is("Running"), 60)
    deadline = time.monotonic() + 10
    while not (marker / "log").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    start = time.monotonic()
    cluster.kubectl("delete", "pod", "-n", NS, "hooked", "--wait=true")
    assert (marker / "log").read_text().split() == ["postStart", "preStop", "TERM"]
    assert 1 <= time.monotonic() - start < 8  # the hook's second, then SIGTERM ends it


def test_crash_loop_back_off(cluster: Cluster) -> None:
    marker = cluster.tmp / "crash"
    cluster.apply(f"""
apiVersion: v1
kind: Pod
metadata: {{name: crasher}}
spec:
  nodeName: gpu-0
  tolerations: [{{key: tidetune.io/online-serving, operator: Exists}}]
  containers:
  - name: main
    image: alpine
    command: ["sh", "-c", "date +%s.%N >> /marker/starts; echo attempt; exit 1"]
    volumeMounts: [{{name: marker, mountPath: /marker}}]
  volumes:
  - {{name: marker, hostPath: {{path: {marker}, type: DirectoryOrCreate}}}}
""")
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
    cluster.kubectl("delete", "pod", "-n", NS, "crasher", "--wait=true")


def test_readiness_and_liveness_probes(cluster: Cluster) -> None:
    cluster.apply("""
apiVersion: v1
kind: Pod
metadata: {name: probed}
spec:
  nodeName: gpu-0
  terminationGracePeriodSeconds: 1
  tolerations: [{key: tidetune.io/online-serving, operator: Exists}]
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
""")
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
    cluster.kubectl("delete", "pod", "-n", NS, "probed", "--wait=true")


def test_kubectl_logs_and_kill_container(cluster: Cluster) -> None:
    cluster.apply("""
apiVersion: v1
kind: Pod
metadata: {name: talker}
spec:
  nodeName: gpu-0
  terminationGracePeriodSeconds: 1
  tolerations: [{key: tidetune.io/online-serving, operator: Exists}]
  containers:
  - name: main
    image: alpine
    command: ["sh", "-c", "for i in 1 2 3 4 5; do echo line $i; done; echo oops >&2; sleep 600"]
""")
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
    cluster.kubectl("delete", "pod", "-n", NS, "talker", "--wait=true")


def test_kubectl_logs_follow_ends_with_the_container(cluster: Cluster) -> None:
    cluster.apply("""
apiVersion: v1
kind: Pod
metadata: {name: ticker}
spec:
  nodeName: gpu-0
  restartPolicy: Never
  tolerations: [{key: tidetune.io/online-serving, operator: Exists}]
  containers:
  - name: main
    image: alpine
    command: ["sh", "-c", "for i in 1 2 3; do echo tick $i; sleep 1; done"]
""")
    cluster.wait_pod("ticker", phase_is("Running"), 60)
    start = time.monotonic()
    followed = cluster.kubectl("logs", "-n", NS, "ticker", "-f", timeout=30).stdout
    assert followed.splitlines() == ["tick 1", "tick 2", "tick 3"]
    assert time.monotonic() - start < 10
    cluster.kubectl("delete", "pod", "-n", NS, "ticker", "--wait=true")


def _server(name: str, job: str) -> str:
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{job: {job}}}}}
spec:
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
    ports: [{{containerPort: 23456}}]
    readinessProbe: {{tcpSocket: {{port: 23456}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: {job}}}
spec:
  clusterIP: None
  selector: {{job: {job}}}
  ports: [{{port: 23456}}]
"""


def test_two_masters_on_one_port_found_by_dns(cluster: Cluster) -> None:
    cluster.apply(_server("master-a", "job-a") + "---" + _server("master-b", "job-b"))
    for name in ("master-a", "master-b"):
        pod = cluster.wait_pod(name, lambda p: condition(p, "Ready") == "True", 60, "ready")
        assert pod["spec"]["nodeName"] == "cpu-0"  # scheduled: the GPU node is tainted
    cluster.apply("""
apiVersion: v1
kind: Pod
metadata: {name: dns-client}
spec:
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
""")
    pod = cluster.wait_pod("dns-client", phase_is("Succeeded", "Failed"), 60)
    out = json.loads(cluster.logs("dns-client"))
    assert pod["status"]["phase"] == "Succeeded", out
    ips = {n: cluster.get("pod", n)["status"]["podIP"] for n in ("master-a", "master-b")}  # type: ignore[index]
    assert ips["master-a"] != ips["master-b"]
    assert out["job-a"] == ips["master-a"] == out["job-a.agent.svc.cluster.local"]
    assert out["master-0.job-b"] == ips["master-b"]
    assert (out["http job-a"], out["http job-b"]) == ("job-a", "job-b")
    assert out["api"] == f"{cluster.prefix}.0.1"
    assert out["missing"] == "gaierror"
    cluster.kubectl("delete", "pod", "-n", NS, "master-a", "master-b", "dns-client", "--wait=true")


def waiting(reason: str) -> Callable[[JSON], bool]:
    def check(pod: JSON) -> bool:
        state = statuses(pod).get("main", {}).get("state", {})
        return bool(state.get("waiting", {}).get("reason") == reason)

    return check


def test_unknown_image_and_missing_secret_keep_the_pod_pending(cluster: Cluster) -> None:
    cluster.apply("""
apiVersion: v1
kind: Pod
metadata: {name: no-image}
spec:
  nodeName: gpu-0
  tolerations: [{key: tidetune.io/online-serving, operator: Exists}]
  containers: [{name: main, image: "registry.example/unknown:1"}]
---
apiVersion: v1
kind: Pod
metadata: {name: needs-secret}
spec:
  nodeName: gpu-0
  restartPolicy: Never
  tolerations: [{key: tidetune.io/online-serving, operator: Exists}]
  containers:
  - name: main
    image: alpine
    command: ["sh", "-c", "echo $TOKEN"]
    env: [{name: TOKEN, valueFrom: {secretKeyRef: {name: late, key: token}}}]
""")
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
    cluster.kubectl("delete", "pod", "-n", NS, "no-image", "needs-secret", "--wait=true")


def _node(cluster: Cluster, name: str, third: int) -> JSON:
    return {
        "name": name,
        "address": f"{cluster.prefix}.{third}.1",
        "podCIDR": f"{cluster.prefix}.{third}.0/24",
        "labels": {"spot": "true"},
        "capacity": {"cpu": "2", "memory": "4Gi", "pods": "10"},
    }


def test_reclaim_node_evicts_with_grace_then_deletes_it(cluster: Cluster) -> None:
    cluster.hooks.add_node(_node(cluster, "spot-1", 5))
    assert "spot-1" in cluster.hooks.nodes()
    marker = cluster.tmp / "reclaim"
    cluster.apply(
        _grace_pod("evictee", marker, ignore_term=False).replace(
            "nodeName: gpu-0", "nodeName: spot-1"
        )
    )
    cluster.wait_pod("evictee", phase_is("Running"), 60)
    _wait_for_file(marker / "evictee.pid")  # its SIGTERM handler is installed
    result = cluster.hooks.reclaim_node("spot-1", timeout=60)
    assert result["evicted"] == [f"{NS}/evictee"]
    assert cluster.get("pod", "evictee") is None
    assert (marker / "evictee").read_text() == "SIGTERM\n"
    assert cluster.kubectl("get", "node", "spot-1", check=False).returncode != 0


@pytest.mark.slow
def test_lost_node_kills_at_once_and_the_pod_gc_removes_its_pods(cluster: Cluster) -> None:
    cluster.hooks.add_node(_node(cluster, "spot-2", 6))
    marker = cluster.tmp / "lose"
    cluster.apply(
        _grace_pod("victim", marker, ignore_term=True).replace(
            "nodeName: gpu-0", "nodeName: spot-2"
        )
    )
    cluster.wait_pod("victim", phase_is("Running"), 60)
    deadline = time.monotonic() + 10
    while not (marker / "victim.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
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
    cluster.apply("""
apiVersion: v1
kind: Pod
metadata: {name: tmp-volume}
spec:
  nodeName: gpu-0
  restartPolicy: Never
  tolerations: [{key: tidetune.io/online-serving, operator: Exists}]
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
""")
    pod = cluster.wait_pod("tmp-volume", phase_is("Succeeded", "Failed"), 60)
    main = statuses(pod)["main"]["state"]["terminated"]
    assert pod["status"]["phase"] == "Succeeded", main
    seen = json.loads(cluster.logs("tmp-volume"))
    assert seen["greeting"] == "hi"
    assert _jwt_claims(seen["token"])["kubernetes.io"]["pod"]["name"] == "tmp-volume"
    assert seen["tmp"] == []  # the emptyDir, not the host's /tmp
    cluster.kubectl("delete", "pod", "-n", NS, "tmp-volume", "--wait=true")


def test_sidecar_serves_the_main_container_then_is_stopped_after_it(cluster: Cluster) -> None:
    marker = cluster.tmp / "sidecar"
    cluster.apply(f"""
apiVersion: v1
kind: Pod
metadata: {{name: with-sidecar}}
spec:
  nodeName: gpu-0
  restartPolicy: Never
  terminationGracePeriodSeconds: 30
  tolerations: [{{key: tidetune.io/online-serving, operator: Exists}}]
  securityContext: {{runAsUser: 0}}
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
    readinessProbe: {{tcpSocket: {{port: 23457}}, periodSeconds: 1}}
    volumeMounts: [{{name: marker, mountPath: /marker}}]
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
    volumeMounts: [{{name: marker, mountPath: /marker}}]
  volumes:
  - {{name: marker, hostPath: {{path: {marker}, type: DirectoryOrCreate}}}}
""")
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
    cluster.kubectl("delete", "pod", "-n", NS, "with-sidecar", "--wait=true")


def test_sidecar_startup_probe_holds_the_main_container_and_it_stops_last(
    cluster: Cluster,
) -> None:
    marker = cluster.tmp / "slow-sidecar"
    cluster.apply(f"""
apiVersion: v1
kind: Pod
metadata: {{name: slow-sidecar}}
spec:
  nodeName: gpu-0
  terminationGracePeriodSeconds: 10
  tolerations: [{{key: tidetune.io/online-serving, operator: Exists}}]
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
      exec: {{command: ["test", "-f", "/marker/up"]}}
      periodSeconds: 1
      failureThreshold: 60
    volumeMounts: [{{name: marker, mountPath: /marker}}]
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
    volumeMounts: [{{name: marker, mountPath: /marker}}]
  volumes:
  - {{name: marker, hostPath: {{path: {marker}, type: DirectoryOrCreate}}}}
""")
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
    cluster.kubectl("delete", "pod", "-n", NS, "slow-sidecar", "--wait=true")
    took = time.monotonic() - start
    # the sidecar gets its SIGTERM once the main container has exited (1 s into its trap)
    assert (marker / "order").read_text().split() == ["main-term", "proxy-term"]
    assert took < 9, took


def test_crashing_sidecar_is_restarted_in_a_never_pod(cluster: Cluster) -> None:
    marker = cluster.tmp / "flaky-sidecar"
    cluster.apply(f"""
apiVersion: v1
kind: Pod
metadata: {{name: flaky-sidecar}}
spec:
  nodeName: gpu-0
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  tolerations: [{{key: tidetune.io/online-serving, operator: Exists}}]
  initContainers:
  - name: flaky
    image: alpine
    restartPolicy: Always
    command: ["sh", "-c", "echo started >> /marker/starts; sleep 1; exit 3"]
    volumeMounts: [{{name: marker, mountPath: /marker}}]
  containers:
  - name: main
    image: alpine
    command: ["sleep", "600"]
  volumes:
  - {{name: marker, hostPath: {{path: {marker}, type: DirectoryOrCreate}}}}
""")
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
    cluster.kubectl("delete", "pod", "-n", NS, "flaky-sidecar", "--wait=true")
