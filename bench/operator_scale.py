"""Operator scale: N FineTuneJobs created at once; how fast does each get its PyTorchJob?

    nice -n 10 .venv/bin/python bench/operator_scale.py [--jobs 300] [--json]

One lab (a real API server, etcd, controller manager and scheduler, one CPU node; the
PyTorchJob CRDs without the training operator, so launched jobs are stored and never run;
no Kueue) and TideTune installed with its Helm chart at the chart's default observe and
resync intervals. First TideTune, then the peer: the same Deployment with its command
replaced by ``kopf run -A --standalone bench/peer_operator.py``, the simplest kopf operator
that creates a suspended PyTorchJob per FineTuneJob. Each side gets a namespace of its own,
a warm-up job, then N jobs created 32 at a time through the API.

Reported per side: time from a job's creation until its PyTorchJob exists (seen on a watch;
p50, p99, max), jobs/s over the batch (N / (last launch − first create)), API requests per
job (the API server's audit log, the operator's ServiceAccount only, from the first create
until 3 s after the last launch), the operator process's peak RSS (``VmHWM``), its CPU time
per job over the same span, and how long the N creates took (the API's own pace on this
machine). Goals: ≥ 0.9× the peer's jobs/s, p99 ≤ 1.5× the peer's, ≤ 7 requests per job,
RSS ≤ 200 MB.
With ``--profile FILE`` the operator is sampled by py-spy during the batch (collapsed stacks,
and the top functions printed). The lab needs root and ``bash .ci/setup``; the whole run
takes 2–4 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime
import json
import os
import pathlib
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "operator"), str(ROOT / "trainer-image")]

from tests.lab.cluster import Lab, cpu_node, pod_main_pids  # noqa: E402
from tests.lab.deploy import OPERATOR_NAMESPACE, OPERATOR_USER, Stack, wait_for  # noqa: E402

RELEASE = "tidetune"
PEER = ROOT / "bench" / "peer_operator.py"
#: the chart's defaults (the lab's own values observe every second and resync every 5 s)
CHART_DEFAULTS = {"config": {"observeIntervalSeconds": 10, "resyncIntervalSeconds": 60}}
CONCURRENCY = 32
SETTLE_SECONDS = 3.0
GOALS = {
    "jobsPerSecond": "≥ 0.9× the peer's",
    "p99Seconds": "≤ 1.5× the peer's",
    "requestsPerJob": "≤ 7",
    "peakRssMB": "≤ 200",
}


def job_manifest(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "tidetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "method": "sft",
            "baseModel": {"uri": "s3://tidetune/models/qwen2.5-0.5b/"},
            "data": {"train": {"uri": "s3://tidetune/data/train.jsonl"}},
            "hyperparameters": {"maxSteps": 100},
            "resources": {"gpusPerNode": 1},
            "output": {"uri": "s3://tidetune/artifacts"},
            "storageSecretRef": {"name": "s3-creds"},
        },
    }


# -- the API, as the lab's admin ------------------------------------------------------------


def admin_ssl(lab: Lab) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(lab.pki / "cluster-ca.crt"))
    context.load_cert_chain(str(lab.pki / "admin.crt"), str(lab.pki / "admin.key"))
    return context


async def measure(lab: Lab, namespace: str, names: list[str], timeout: float) -> dict[str, Any]:
    """Create ``names`` (``CONCURRENCY`` at a time) while watching PyTorchJobs appear.

    Returns when each time (monotonic) was created, when its PyTorchJob was seen, and the
    wall-clock time of the first create."""
    import aiohttp

    base = lab.api_url
    created: dict[str, float] = {}
    launched: dict[str, float] = {}
    wanted = set(names)
    connector = aiohttp.TCPConnector(ssl=admin_ssl(lab), limit=CONCURRENCY + 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        jobs_url = f"{base}/apis/kubeflow.org/v1/namespaces/{namespace}/pytorchjobs"
        async with session.get(jobs_url, params={"limit": "1"}) as resp:
            resp.raise_for_status()
            version = (await resp.json())["metadata"]["resourceVersion"]
        all_seen = asyncio.Event()

        async def watch() -> None:
            params = {
                "watch": "1",
                "resourceVersion": version,
                "labelSelector": "tidetune.io/job",
                "timeoutSeconds": str(int(timeout) + 30),
            }
            async with session.get(jobs_url, params=params, timeout=None) as resp:
                resp.raise_for_status()
                async for line in resp.content:
                    event = json.loads(line)
                    if event["type"] != "ADDED":
                        continue
                    job = event["object"]["metadata"]["labels"]["tidetune.io/job"]
                    if job in wanted and job not in launched:
                        launched[job] = time.monotonic()
                        if len(launched) == len(wanted):
                            all_seen.set()
                            return

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0.5)  # the watch is open before the first create
        sem = asyncio.Semaphore(CONCURRENCY)
        url = f"{base}/apis/tidetune.io/v1alpha1/namespaces/{namespace}/finetunejobs"

        async def create(name: str) -> None:
            async with sem, session.post(url, json=job_manifest(name, namespace)) as resp:
                if resp.status >= 300:
                    raise RuntimeError(f"creating {name}: {resp.status} {await resp.text()}")
                created[name] = time.monotonic()

        started_wall = time.time()
        started = time.monotonic()
        await asyncio.gather(*(create(n) for n in names))
        created_all = time.monotonic()
        with contextlib.suppress(TimeoutError):  # reported as fewer launched
            await asyncio.wait_for(all_seen.wait(), timeout)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    return {
        "created": created,
        "launched": launched,
        "startedWall": started_wall,
        "started": started,
        "createSeconds": created_all - started,
    }


# -- what the operator did ------------------------------------------------------------------


def _timestamp(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def audit_requests(lab: Lab, offset: int, since: float, until: float) -> collections.Counter[str]:
    """The operator's requests received in [since, until] (wall clock), by verb and resource,
    from the audit log past byte ``offset``."""
    seen: set[str] = set()
    counts: collections.Counter[str] = collections.Counter()
    with open(lab.audit_log, "rb") as log:
        log.seek(offset)
        for raw in log:
            try:
                event = json.loads(raw)
            except ValueError:
                continue  # a line being written
            if event.get("user", {}).get("username") != OPERATOR_USER:
                continue
            if event["auditID"] in seen:
                continue  # a watch's ResponseStarted and ResponseComplete
            if not since <= _timestamp(event["requestReceivedTimestamp"]) <= until:
                continue
            seen.add(event["auditID"])
            ref = event.get("objectRef") or {}
            what = ref.get("resource", event.get("requestURI", "?").split("?")[0])
            if ref.get("subresource"):
                what += "/" + ref["subresource"]
            counts[f"{event['verb']} {what}"] += 1
    return counts


def operator_pid(stack: Stack) -> int:
    """The kopf process of the one operator pod."""
    (pod,) = stack.operator_pods()
    for pid in pod_main_pids(pod["metadata"]["name"]):
        cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if any(part.endswith(b"kopf") for part in cmdline[:2]):
            return pid
    raise RuntimeError(f"no kopf process in pod {pod['metadata']['name']}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its threads so far."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


# -- the two sides --------------------------------------------------------------------------


@contextlib.contextmanager
def profiled(pid: int, out: pathlib.Path | None) -> Any:
    """Sample ``pid`` with py-spy (collapsed stacks, for speedscope or flamegraph.pl) while
    the block runs; nothing when ``out`` is None."""
    if out is None:
        yield
        return
    spy = pathlib.Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        raise SystemExit(f"--profile needs py-spy: {spy.parent}/pip install py-spy")
    proc = subprocess.Popen(
        [str(spy), "record", "--pid", str(pid), "--format", "raw", "--rate", "250",
         "--nonblocking", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1.0)  # attached
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)


def top_functions(collapsed: pathlib.Path, limit: int = 25) -> list[tuple[str, float]]:
    """Inclusive share of samples per function (file:function), from py-spy's raw output."""
    total = 0
    inclusive: collections.Counter[str] = collections.Counter()
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        frames = {f.split(" (")[0] + " " + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1]
                  for f in stack.split(";")}  # fmt: skip
        for frame in frames:
            inclusive[frame] += int(count)
    if not total:
        return []
    return [(f, round(100.0 * n / total, 1)) for f, n in inclusive.most_common(limit)]


def run_side(
    stack: Stack, side: str, jobs: int, timeout: float, profile: pathlib.Path | None = None
) -> dict[str, Any]:
    namespace = f"bench-{side}"
    stack.namespace(namespace)
    # warm-up: the operator watches and launches
    warm = asyncio.run(measure(stack.lab, namespace, ["warm-up"], 120))
    if not warm["launched"]:
        raise RuntimeError(f"{side}: the warm-up job got no PyTorchJob in 120 s")
    time.sleep(1.0)
    offset = stack.lab.audit_log.stat().st_size
    pid = operator_pid(stack)
    cpu_before = cpu_seconds(pid)
    names = [f"job-{i:05d}" for i in range(jobs)]
    with profiled(pid, profile):
        result = asyncio.run(measure(stack.lab, namespace, names, timeout))
    created, launched = result["created"], result["launched"]
    last = max(launched.values(), default=time.monotonic())
    elapsed = last - result["started"]
    time.sleep(SETTLE_SECONDS)
    until = result["startedWall"] + elapsed + SETTLE_SECONDS
    requests = audit_requests(stack.lab, offset, result["startedWall"], until)
    cpu = cpu_seconds(pid) - cpu_before
    latencies = sorted(launched[j] - created[j] for j in launched if j in created)
    rss = peak_rss_mb(pid)
    return {
        "jobs": jobs,
        "createSeconds": round(result["createSeconds"], 2),
        "launched": len(launched),
        "p50Seconds": round(statistics.median(latencies), 3) if latencies else None,
        "p99Seconds": round(latencies[int(0.99 * (len(latencies) - 1))], 3) if latencies else None,
        "maxSeconds": round(latencies[-1], 3) if latencies else None,
        "jobsPerSecond": round(len(launched) / elapsed, 1) if launched and elapsed > 0 else None,
        "requestsPerJob": round(sum(requests.values()) / jobs, 2),
        "peakRssMB": round(rss, 1),
        "cpuMsPerJob": round(1000 * cpu / jobs, 1),
        "requestsByVerb": {k: round(v / jobs, 2) for k, v in sorted(requests.items())},
    }


def switch_to_peer(stack: Stack) -> None:
    """Run the peer in TideTune's Deployment: its command replaced, kopf's extra rule
    (patch on finetunejobs, for its annotations) granted to the same ServiceAccount."""
    stack.lab.apply_documents(
        [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": "bench-peer"},
                "rules": [
                    {
                        "apiGroups": ["tidetune.io"],
                        "resources": ["finetunejobs"],
                        "verbs": ["patch"],
                    }
                ],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "bench-peer"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "bench-peer",
                },
                "subjects": [
                    {"kind": "ServiceAccount", "name": RELEASE, "namespace": OPERATOR_NAMESPACE}
                ],
            },
        ]
    )
    command = [
        "kopf",
        "run",
        "-A",
        "--standalone",
        str(PEER),
        "--liveness=http://0.0.0.0:8081/healthz",  # the chart's probes
    ]
    patch = [
        {"op": "replace", "path": "/spec/template/spec/containers/0/command", "value": command}
    ]
    stack.kubectl(
        "-n", OPERATOR_NAMESPACE, "patch", "deployment", RELEASE, "--type=json",
        "-p", json.dumps(patch),
    )  # fmt: skip
    stack.kubectl(
        "-n", OPERATOR_NAMESPACE, "rollout", "status", f"deployment/{RELEASE}", "--timeout=120s"
    )

    def peer_ready() -> bool:
        pods = stack.operator_pods()
        return (
            len(pods) == 1
            and pods[0]["spec"]["containers"][0]["command"] == command
            and any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in pods[0].get("status", {}).get("conditions", [])
            )
        )

    wait_for(peer_ready, 120, "the peer's pod to be Ready", stack.operator_diagnostics)


def run(
    jobs: int,
    timeout: float,
    workdir: pathlib.Path,
    values: dict[str, Any] | None = None,
    profile: pathlib.Path | None = None,
) -> dict[str, Any]:
    lab = Lab(workdir, nodes=[cpu_node("cpu-0")], kubeflow="crds", kueue=False)
    lab.start()
    try:
        config = {**CHART_DEFAULTS["config"], **(values or {}).get("config", {})}
        stack = Stack(lab).install({**(values or {}), "config": config})
        results: dict[str, Any] = {"tidetune": run_side(stack, "tidetune", jobs, timeout, profile)}
        # the peer (-A) must not find TideTune's jobs: they go first (no finalizers)
        stack.kubectl("delete", "namespace", "bench-tidetune", "--timeout=180s")
        switch_to_peer(stack)
        results["peer"] = run_side(stack, "peer", jobs, timeout)
        results["labStartupSeconds"] = lab.startup_seconds.get("total")
        return results
    finally:
        lab.stop()


def ratios(ours: dict[str, Any], peer: dict[str, Any]) -> dict[str, float | None]:
    def ratio(key: str) -> float | None:
        if ours.get(key) and peer.get(key):
            return round(float(ours[key]) / float(peer[key]), 2)
        return None

    return {k: ratio(k) for k in ("jobsPerSecond", "p99Seconds", "requestsPerJob", "peakRssMB")}


def goals_met(ours: dict[str, Any], ratio: dict[str, float | None]) -> dict[str, bool]:
    return {
        "jobsPerSecond": (ratio["jobsPerSecond"] or 0) >= 0.9,
        "p99Seconds": ratio["p99Seconds"] is not None and ratio["p99Seconds"] <= 1.5,
        "requestsPerJob": ours["requestsPerJob"] <= 7,
        "peakRssMB": ours["peakRssMB"] <= 200,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--timeout", type=float, default=120.0, help="per side, seconds")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", metavar="DIR", help="put the lab here and keep its logs")
    parser.add_argument(
        "--values",
        metavar="JSON",
        default="{}",
        help='chart values for TideTune, e.g. \'{"config": {"workers": 32}}\'',
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="sample TideTune's operator with py-spy during the batch (collapsed stacks)",
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("operator_scale: the lab needs root (a bridge, a network namespace per pod)")
        return 2
    with tempfile.TemporaryDirectory(prefix="tidetune-bench-") as tmp:
        workdir = pathlib.Path(args.keep) if args.keep else pathlib.Path(tmp) / "lab"
        profile = pathlib.Path(args.profile).resolve() if args.profile else None
        results = run(args.jobs, args.timeout, workdir, json.loads(args.values), profile)
    if profile is not None and profile.exists():
        print(f"operator profile (inclusive % of samples): {profile}")
        for frame, share in top_functions(profile):
            print(f"{share:6.1f}%  {frame}")
    ours, peer = results["tidetune"], results["peer"]
    results["ratio"] = ratios(ours, peer)
    results["goals"] = goals_met(ours, results["ratio"])
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    keys = [
        "createSeconds",
        "launched",
        "p50Seconds",
        "p99Seconds",
        "maxSeconds",
        "jobsPerSecond",
        "requestsPerJob",
        "peakRssMB",
        "cpuMsPerJob",
    ]
    print(f"{'':16}{'tidetune':>12}{'peer':>12}{'ratio':>9}  goal")
    for key in keys:
        ratio = results["ratio"].get(key)
        goal = GOALS.get(key, "")
        if goal:
            goal += "  " + ("met" if results["goals"][key] else "NOT MET")
        print(
            f"{key:16}{ours[key]!s:>12}{peer[key]!s:>12}{'' if ratio is None else ratio:>9}  {goal}"
        )
    for side in ("tidetune", "peer"):
        print(f"{side} requests per job: {results[side]['requestsByVerb']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
