"""Operator scale: N FineTuneJobs created at once; how fast does each get its PyTorchJob?

    .venv/bin/python bench/operator_scale.py [--jobs 500] [--json]

Runs in the lab (API emulator over TLS, S3; no training: the Kubeflow stand-in is off),
first with the TideTune operator, then with the peer: a plain kopf operator that does the
minimum (an ``@kopf.on.create`` handler creating the child PyTorchJob with the
``kubernetes`` client, kopf's finalizer, progress annotations and Events —
``tests/support/echo_operator.py``). Each side gets a fresh lab. Reported per side:
time from a job's creation until its PyTorchJob exists (p50, p99, max), jobs/s over the
whole batch, API requests per job (all requests the API served, less the benchmark's own
creates), and the operator's peak RSS. Goals (issue 4): ≥ 100 jobs/s, p99 ≤ 5 s, ≤ 10
requests per job, RSS ≤ 200 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import ssl
import statistics
import sys
import tempfile
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "operator"), str(ROOT / "trainer-image")]

from tests.lab.lab import Lab  # noqa: E402
from tests.lab.stack import build_lab  # noqa: E402

NAMESPACE = "bench"


def job_manifest(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "tidetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": f"job-{i:05d}", "namespace": NAMESPACE},
        "spec": {
            "method": "sft",
            "baseModel": {"uri": "s3://models/qwen2.5-0.5b/"},
            "data": {"train": {"uri": "s3://tidetune/data/train.jsonl"}},
            "hyperparameters": {"maxSteps": 100},
            "resources": {"gpusPerNode": 1},
            "output": {"uri": "s3://tidetune/artifacts"},
            "storageSecretRef": {"name": "s3-creds"},
        },
    }


def peak_rss_mb(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def request_counts(lab: Lab) -> dict[str, int]:
    """Requests served so far, by verb and resource (names and namespaces folded)."""
    assert lab.k8s is not None
    emulator = lab.k8s.emulator
    raw = lab.k8s.call(lambda: dict(emulator.request_counts))
    out: dict[str, int] = {}
    for key, count in raw.items():
        method, _, path = key.partition(" ")
        parts = [p for p in path.split("?")[0].split("/") if p]
        if "namespaces" in parts and len(parts) > parts.index("namespaces") + 2:
            i = parts.index("namespaces")
            parts = parts[:i] + parts[i + 2 :]
        kind = next(
            (p for p in reversed(parts) if p.endswith("s") and not p.startswith("v1")), path
        )
        sub = "/status" if parts and parts[-1] == "status" else ""
        label = f"{method} {kind}{sub}"
        out[label] = out.get(label, 0) + count
    return out


def total_requests(lab: Lab) -> int:
    return sum(request_counts(lab).values())


def pytorchjob_names(lab: Lab) -> set[str]:
    assert lab.k8s is not None
    emulator = lab.k8s.emulator

    def names() -> set[str]:
        labels = ("metadata", "labels")
        return {
            str(o.get(labels[0], {}).get(labels[1], {}).get("tidetune.io/job", ""))
            for o in emulator.list_objects("pytorchjobs", NAMESPACE)
        }

    return lab.k8s.call(names)


async def create_all(lab: Lab, jobs: list[dict[str, Any]]) -> dict[str, float]:
    import aiohttp

    assert lab.k8s is not None
    context = ssl.create_default_context(cafile=str(lab.k8s.ca_file))
    headers = {"Authorization": f"Bearer {lab.k8s.token}", "Content-Type": "application/json"}
    url = f"{lab.k8s.url}/apis/tidetune.io/v1alpha1/namespaces/{NAMESPACE}/finetunejobs"
    created: dict[str, float] = {}
    sem = asyncio.Semaphore(32)
    async with aiohttp.ClientSession(
        headers=headers, connector=aiohttp.TCPConnector(ssl=context, limit=32)
    ) as session:

        async def one(body: dict[str, Any]) -> None:
            async with sem, session.post(url, data=json.dumps(body)) as resp:
                if resp.status >= 300:
                    raise RuntimeError(f"create failed: {resp.status} {await resp.text()}")
                created[body["metadata"]["name"]] = time.monotonic()

        await asyncio.gather(*(one(j) for j in jobs))
    return created


def run_side(name: str, jobs: int, workdir: pathlib.Path, timeout: float) -> dict[str, Any]:
    if name == "tidetune":
        lab = build_lab(workdir, kubeflow=False)
    else:
        lab = Lab(workdir)
        kopf = pathlib.Path(sys.executable).with_name("kopf")
        argv = [
            str(kopf),
            "run",
            "-A",
            "--standalone",
            str(ROOT / "tests/support/echo_operator.py"),
        ]
        lab.add_process("operator", argv)
    lab.start()
    try:
        lab.kubectl("create", "namespace", NAMESPACE, check=True)
        lab.kubectl(
            "-n", NAMESPACE, "create", "secret", "generic", "s3-creds",
            "--from-literal=accessKey=a", "--from-literal=secretKey=b", check=True,
        )  # fmt: skip
        # warm up: the operator is up and watching when one job gets its PyTorchJob
        warm = job_manifest(99999)
        asyncio.run(create_all(lab, [warm]))
        deadline = time.monotonic() + 120
        while warm["metadata"]["name"] not in pytorchjob_names(lab):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: the operator did not come up (see {workdir}/logs)")
            time.sleep(0.1)
        time.sleep(1.0)
        before = request_counts(lab)
        manifests = [job_manifest(i) for i in range(jobs)]
        t0 = time.monotonic()
        created = asyncio.run(create_all(lab, manifests))
        seen: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while len(seen) < jobs and time.monotonic() < deadline:
            now = time.monotonic()
            for job in pytorchjob_names(lab):
                if job in created and job not in seen:
                    seen[job] = now
            time.sleep(0.02)
        elapsed = max(seen.values(), default=time.monotonic()) - t0
        time.sleep(2.0)  # let trailing status patches and events land before counting
        after = request_counts(lab)
        breakdown = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
        requests = sum(breakdown.values()) - jobs
        latencies = sorted(seen[j] - created[j] for j in seen)
        pid = lab.operator_pid
        rss = peak_rss_mb(pid) if pid else float("nan")
        return {
            "jobs": jobs,
            "launched": len(seen),
            "p50Seconds": round(statistics.median(latencies), 3) if latencies else None,
            "p99Seconds": (
                round(latencies[int(0.99 * (len(latencies) - 1))], 3) if latencies else None
            ),
            "maxSeconds": round(latencies[-1], 3) if latencies else None,
            "jobsPerSecond": round(len(seen) / elapsed, 1) if elapsed > 0 else None,
            "requestsPerJob": round(requests / jobs, 2),
            "peakRssMB": round(rss, 1),
            "requestsByVerb": {k: round(v / jobs, 2) for k, v in sorted(breakdown.items())},
        }
    finally:
        lab.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--only", choices=["tidetune", "peer"])
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tidetune-bench-") as tmp:
        for side in ("tidetune", "peer"):
            if args.only and side != args.only:
                continue
            results[side] = run_side(side, args.jobs, pathlib.Path(tmp) / side, args.timeout)
    if "tidetune" in results and "peer" in results:
        ours, peer = results["tidetune"], results["peer"]
        results["ratio"] = {
            "jobsPerSecond": round(ours["jobsPerSecond"] / peer["jobsPerSecond"], 2)
            if ours["jobsPerSecond"] and peer["jobsPerSecond"]
            else None,
            "p99": round(peer["p99Seconds"] / ours["p99Seconds"], 2)
            if ours["p99Seconds"] and peer["p99Seconds"]
            else None,
            "requestsPerJob": round(peer["requestsPerJob"] / ours["requestsPerJob"], 2),
        }
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    keys = [
        "launched",
        "p50Seconds",
        "p99Seconds",
        "maxSeconds",
        "jobsPerSecond",
        "requestsPerJob",
        "peakRssMB",
    ]
    print(f"{'':16}" + "".join(f"{side:>14}" for side in results if side != "ratio"))
    for key in keys:
        print(f"{key:16}" + "".join(f"{results[s][key]!s:>14}" for s in results if s != "ratio"))
    if "ratio" in results:
        print("ratio (ours vs peer, >1 is better):", results["ratio"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
