"""The controller carries a decision out against an API server: what it does when the
server refuses the launch, with a stored job the model rejects, and while a job waits for
a Secret, ConfigMap or IdlePool it names.

A loopback aiohttp server answers the handful of calls one reconcile makes (read the
Secret, create the ConfigMap and the PyTorchJob, merge-patch the status) and can refuse
the PyTorchJob with the ``Status`` a webhook returns (422 ``Invalid``). It stands in for
those answers only; the controller, the state machine and the client are the real ones.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from tests.tidetune_operator.conftest import loopback_server, make_job, make_pool
from tidetune.api.constants import TIMELINE_KEEP_FIRST, TIMELINE_KEEP_LAST
from tidetune_operator.config import OperatorConfig
from tidetune_operator.controller import Controller
from tidetune_operator.kube import Kube
from tidetune_operator.launchers import PyTorchJobLauncher, TrainJobLauncher


class ApiServer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.refuse_launch: dict[str, Any] | None = None
        self.status_patches: list[dict[str, Any]] = []
        #: Secrets (decoded data) and ConfigMaps (data) the server has, by name
        self.secrets: dict[str, dict[str, str]] = {"s3-creds": dict(_CREDS)}
        self.configmaps: dict[str, dict[str, str]] = {}
        #: Kueue WorkloadPriorityClasses (cluster-scoped) by name
        self.priority_classes: set[str] = set()
        #: pods (listed by label) and their containers' logs by pod name
        self.pods: list[dict[str, Any]] = []
        self.logs: dict[str, str] = {}
        #: server-side applies: (path, query, body)
        self.applied: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        #: PyTorchJobs the server has, by name (GET only)
        self.pytorchjobs: dict[str, dict[str, Any]] = {}

    async def handle(self, request: web.Request) -> web.Response:
        path, method = request.path, request.method
        self.calls.append((method, path))
        body = await request.json() if request.can_read_body else None
        name = path.rsplit("/", 1)[-1]
        if method == "GET" and "/secrets/" in path and name in self.secrets:
            data = {k: base64.b64encode(v.encode()).decode() for k, v in self.secrets[name].items()}
            return web.json_response({"kind": "Secret", "data": data})
        if method == "GET" and "/configmaps/" in path and name in self.configmaps:
            return web.json_response({"kind": "ConfigMap", "data": self.configmaps[name]})
        if (
            method == "GET"
            and "/workloadpriorityclasses/" in path
            and name in self.priority_classes
        ):
            return web.json_response({"kind": "WorkloadPriorityClass", "value": 1000})
        if method == "GET" and "/pytorchjobs/" in path and name in self.pytorchjobs:
            return web.json_response(self.pytorchjobs[name])
        if method == "GET" and path.endswith("/pods"):
            return web.json_response({"kind": "PodList", "items": self.pods})
        if method == "GET" and path.endswith("/log") and path.split("/")[-2] in self.logs:
            tail = int(request.query["tailLines"])
            lines = self.logs[path.split("/")[-2]].splitlines(keepends=True)
            return web.Response(text="".join(lines[-tail:]), content_type="text/plain")
        if method == "POST" and path.endswith("/pytorchjobs") and self.refuse_launch:
            return web.json_response(self.refuse_launch, status=self.refuse_launch["code"])
        if method == "POST":
            assert body is not None
            body.setdefault("metadata", {})["resourceVersion"] = "7"
            return web.json_response(body, status=201)
        if method == "PATCH" and request.content_type == "application/apply-patch+yaml":
            assert body is not None
            self.applied.append((path, dict(request.query), body))
            return web.json_response(body, status=201)
        if method == "PATCH" and path.endswith("/status"):
            assert body is not None
            self.status_patches.append(body["status"])
            return web.json_response({**_JOB, "status": body["status"]})
        return web.json_response({"kind": "Status", "code": 404}, status=404)


_CREDS = {"accessKey": "AK", "secretKey": "SK"}
_JOB: dict[str, Any] = {}


@pytest_asyncio.fixture
async def api() -> AsyncIterator[tuple[ApiServer, Kube]]:
    server = ApiServer()
    async with loopback_server(server.handle) as url:
        kube = Kube(url, aiohttp.ClientSession(), 10)
        try:
            yield server, kube
        finally:
            await kube.close()


def job_body(**edits: Any) -> dict[str, Any]:
    job = make_job(edits={"spec.scheduling.pool": None, **edits})
    body = job.model_dump(mode="json", by_alias=True, exclude_none=True)
    body["metadata"]["resourceVersion"] = "1"
    body.pop("status", None)
    return body


def running_status(launched: str | None = None, **extra: Any) -> dict[str, Any]:
    """A validated job's status in its first attempt, Running (with its PyTorchJob's name)."""
    status: dict[str, Any] = {
        "phase": "Running",
        "attempt": 1,
        "conditions": [{"type": "Validated", "status": "True", "reason": "SpecValid",
                        "message": "ok", "lastTransitionTime": "2026-11-22T22:00:00Z"}],
        **extra,
    }  # fmt: skip
    if launched:
        status["launcher"] = {"kind": "PyTorchJob", "name": launched,
                              "apiVersion": "kubeflow.org/v1"}  # fmt: skip
    return status


def controller(config: OperatorConfig, kube: Kube) -> Controller:
    c = Controller(config, PyTorchJobLauncher())
    c.kube = kube  # what start() sets; the test drives reconciles itself, no workers
    return c


@pytest.mark.asyncio
async def test_a_refused_launch_is_recorded_not_retried_in_silence(
    api: tuple[ApiServer, Kube], config: OperatorConfig
) -> None:
    server, kube = api
    body = job_body(**{"metadata.name": "9-lives"})
    _JOB.clear()
    _JOB.update(body)
    server.refuse_launch = {
        "kind": "Status",
        "status": "Failure",
        "reason": "Invalid",
        "code": 422,
        "message": 'admission webhook "validator.pytorchjob.kubeflow.org" denied the request: '
        "spec.pytorchReplicaSpecs[Master]: container pytorch has no image",
    }
    c = controller(config, kube)
    c.observe_job("ADDED", body)
    delay = await c.reconcile_job(("team-a", "9-lives"))
    assert delay is None  # terminal: nothing to come back for
    (status,) = server.status_patches
    assert status["phase"] == "Failed"
    failed = next(x for x in status["conditions"] if x["type"] == "Failed")
    assert failed["reason"] == "LaunchRejected" and "has no image" in failed["message"]
    assert status["timeline"][-1]["reason"] == "LaunchRejected"
    events = [c._events.get_nowait() for _ in range(c._events.qsize())]
    assert [e["reason"] for e in events] == ["SpecValid", "LaunchRejected"]
    assert events[-1]["type"] == "Warning" and "has no image" in events[-1]["message"]
    # one create, then the refusal is recorded: no retry loop
    posted = [p for m, p in server.calls if m == "POST" and p.endswith("/pytorchjobs")]
    assert len(posted) == 1


@pytest.mark.asyncio
async def test_a_stored_job_the_model_rejects_fails_through_the_state_machine(
    api: tuple[ApiServer, Kube], config: OperatorConfig
) -> None:
    """A FineTuneJob stored under an older, laxer CRD: Failed with the field's problem,
    and its long timeline stays within the bound like every other status write."""
    server, kube = api
    body = job_body()
    body["spec"]["tuning"]["lora"]["rank"] = 999  # beyond 1–256
    timeline = [
        {"time": "2026-11-01T00:00:00Z", "type": "Checkpoint", "reason": "CheckpointSaved",
         "message": f"checkpoint {i}"}
        for i in range(TIMELINE_KEEP_FIRST + TIMELINE_KEEP_LAST)
    ]  # fmt: skip
    body["status"] = {"phase": "Running", "timeline": timeline}
    _JOB.clear()
    _JOB.update(body)
    c = controller(config, kube)
    c.observe_job("ADDED", body)
    assert await c.reconcile_job(("team-a", body["metadata"]["name"])) is None
    (status,) = server.status_patches
    assert status["phase"] == "Failed"
    assert len(status["timeline"]) == TIMELINE_KEEP_FIRST + TIMELINE_KEEP_LAST
    assert status["timeline"][:TIMELINE_KEEP_FIRST] == timeline[:TIMELINE_KEEP_FIRST]
    last = status["timeline"][-1]
    assert (last["type"], last["reason"]) == ("Failed", "SpecInvalid")
    assert last["message"].startswith("spec.tuning.lora.rank: ")
    conds = {x["type"]: (x["status"], x["reason"]) for x in status["conditions"]}
    assert conds["Validated"] == ("False", "SpecInvalid")
    assert conds["Failed"] == ("True", "SpecInvalid")
    assert json.dumps(status).count("lora.rank") >= 2  # condition message and timeline
    event = c._events.get_nowait()
    assert event["type"] == "Warning" and event["reason"] == "SpecInvalid"
    # failed already: a second look writes nothing
    c.observe_job(
        "MODIFIED",
        {**body, "status": status, "metadata": {**body["metadata"], "resourceVersion": "2"}},
    )
    await c.reconcile_job(("team-a", body["metadata"]["name"]))
    assert len(server.status_patches) == 1


def _conditions(status: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    return {x["type"]: (x["status"], x["reason"], x["message"]) for x in status["conditions"]}


def _add_missing(what: str, server: ApiServer, c: Controller) -> None:
    """Create what the job waits for (GitOps' later apply)."""
    if what in ("SecretNotFound", "SecretKeyMissing"):
        server.secrets["s3-creds"] = dict(_CREDS)
    elif what == "ConfigMapNotFound":
        server.configmaps["math-rewards"] = {"reward.py": "def score(**kw): return [0.0]"}
    elif what == "WorkloadPriorityClassNotFound":
        server.priority_classes.add("prod-high")
    else:
        pool = make_pool(edits={"spec.windows": [{"days": ["Mon", "Tue", "Wed", "Thu", "Fri",
                                                           "Sat", "Sun"],
                                                  "start": "00:00", "end": "24:00"}],
                                "spec.timezone": "UTC"})  # fmt: skip
        body = pool.model_dump(mode="json", by_alias=True, exclude_none=True)
        body["metadata"]["resourceVersion"] = "3"
        c.observe_pool("ADDED", body)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("missing", "field", "named"),
    [
        ("SecretNotFound", "spec.storageSecretRef", "Secret s3-creds not found"),
        ("SecretKeyMissing", "spec.storageSecretRef", "Secret s3-creds has no secretKey"),
        (
            "ConfigMapNotFound",
            "spec.rl.rewards[1].function.configMapRef",
            "ConfigMap math-rewards not found",
        ),
        ("PoolNotFound", "spec.scheduling.pool", "IdlePool night-a100 does not exist"),
        (
            "WorkloadPriorityClassNotFound",
            "spec.scheduling.workloadPriorityClass",
            "Kueue WorkloadPriorityClass prod-high does not exist",
        ),
    ],
)
async def test_a_job_applied_before_what_it_names_waits_then_proceeds(
    api: tuple[ApiServer, Kube], config: OperatorConfig, missing: str, field: str, named: str
) -> None:
    """One `kubectl apply` of a job and its Secret / ConfigMap / IdlePool: the job may be
    seen first. It waits in Pending (one status write, one Event however often it is looked
    at, looks backing off 2 s → resync) and proceeds once the object is there."""
    server, kube = api
    if missing == "ConfigMapNotFound":
        grpo = make_job("grpo.yaml", edits={"metadata.name": "waits",
                                             "spec.scheduling.pool": None})  # fmt: skip
        body = grpo.model_dump(mode="json", by_alias=True, exclude_none=True)
        body["metadata"]["resourceVersion"] = "1"
        body.pop("status", None)
    elif missing == "PoolNotFound":
        body = job_body(**{"metadata.name": "waits", "spec.scheduling.pool": "night-a100",
                           "spec.resources": {"nodes": 1, "gpusPerNode": 8}})  # fmt: skip
    elif missing == "WorkloadPriorityClassNotFound":
        body = job_body(**{"metadata.name": "waits", "spec.scheduling.queueName": "team-queue",
                           "spec.scheduling.workloadPriorityClass": "prod-high"})  # fmt: skip
    else:
        body = job_body(**{"metadata.name": "waits"})
    if missing == "SecretNotFound":
        server.secrets.clear()
    elif missing == "SecretKeyMissing":
        server.secrets["s3-creds"] = {"accessKey": "AK"}
    _JOB.clear()
    _JOB.update(body)
    c = controller(config, kube)
    c.observe_job("ADDED", body)
    key = ("team-a", "waits")
    delays = [await c.reconcile_job(key) for _ in range(4)]
    assert delays == [2.0, 4.0, 8.0, 16.0]
    (status,) = server.status_patches  # written once: the later looks change nothing
    assert status["phase"] == "Pending"
    assert status["message"] == _conditions(status)["Validated"][2]
    state, reason, message = _conditions(status)["Validated"]
    assert (state, reason) == ("False", missing)
    assert message.startswith(f"waiting: {field}: {named}"), message
    assert "Failed" not in _conditions(status)
    assert [(t["type"], t["reason"]) for t in status["timeline"]] == [("Waiting", missing)]
    events = [c._events.get_nowait() for _ in range(c._events.qsize())]
    assert [(e["reason"], e["type"]) for e in events] == [(missing, "Warning")]
    assert not any(m == "POST" and p.endswith("/pytorchjobs") for m, p in server.calls)
    assert c._waiting == {key: 4}

    _add_missing(missing, server, c)
    delay = await c.reconcile_job(key)
    status = server.status_patches[-1]
    assert _conditions(status)["Validated"][:2] == ("True", "SpecValid")
    assert status["phase"] in ("Running", "Queued"), status["phase"]
    assert status["attempt"] == 1
    assert any(m == "POST" and p.endswith("/pytorchjobs") for m, p in server.calls)
    assert "Waiting" in [t["type"] for t in status["timeline"]]
    assert key not in c._waiting
    # the Normal steps of that look (Validated, Estimated, Admitted?, Launched) are one Event
    # with the last one's reason, naming the others: one API write, not three or four
    (event,) = [c._events.get_nowait() for _ in range(c._events.qsize())]
    last = status["timeline"][-1]
    assert (event["type"], event["reason"]) == ("Normal", last["reason"])
    assert event["message"].startswith(f"{last['type']}: {last['message']} — after Validated: ")
    assert delay in (config.observe_interval_seconds, config.resync_interval_seconds)


@pytest.mark.asyncio
async def test_looks_at_a_waiting_job_back_off_to_the_resync_interval_and_stop_with_it(
    api: tuple[ApiServer, Kube], config: OperatorConfig
) -> None:
    server, kube = api
    server.secrets.clear()
    body = job_body(**{"metadata.name": "typo"})
    _JOB.clear()
    _JOB.update(body)
    config = config.model_copy(update={"resync_interval_seconds": 20.0})
    c = controller(config, kube)
    c.observe_job("ADDED", body)
    key = ("team-a", "typo")
    delays = [await c.reconcile_job(key) for _ in range(6)]
    assert delays == [2.0, 4.0, 8.0, 16.0, 20.0, 20.0]
    assert len(server.status_patches) == 1
    # deleted while waiting: its backoff goes with it, and a job of the same name starts over
    c.observe_job("DELETED", body)
    assert key not in c._waiting
    assert await c.reconcile_job(key) is None
    c.observe_job("ADDED", body)
    assert await c.reconcile_job(key) == 2.0


@pytest.mark.asyncio
async def test_a_pool_too_small_still_fails_at_once(
    api: tuple[ApiServer, Kube], config: OperatorConfig
) -> None:
    server, kube = api
    body = job_body(**{"metadata.name": "too-big", "spec.scheduling.pool": "night-a100",
                       "spec.resources": {"nodes": 16, "gpusPerNode": 8}})  # fmt: skip
    _JOB.clear()
    _JOB.update(body)
    c = controller(config, kube)
    _add_missing("PoolNotFound", server, c)  # the pool has 64 GPUs; the job wants 128
    c.observe_job("ADDED", body)
    assert await c.reconcile_job(("team-a", "too-big")) is None
    status = server.status_patches[-1]
    assert status["phase"] == "Failed"
    assert _conditions(status)["Failed"][:2] == ("True", "PoolTooSmall")
    assert not c._waiting


@pytest.mark.asyncio
async def test_a_job_waiting_for_its_secret_holds_no_place_in_its_pools_queue(
    api: tuple[ApiServer, Kube], config: OperatorConfig
) -> None:
    """Before waiting, a missing Secret failed the job; now it waits, and it must not take
    the pool's GPUs (or the head of its queue) from jobs that can run."""
    server, kube = api
    server.secrets["ok-creds"] = dict(_CREDS)
    server.secrets.pop("s3-creds")
    c = controller(config, kube)
    _add_missing("PoolNotFound", server, c)  # 64 GPUs, open around the clock
    whole_pool = {"nodes": 8, "gpusPerNode": 8}
    typo = job_body(**{"metadata.name": "typo", "spec.scheduling.pool": "night-a100",
                       "spec.resources": whole_pool,
                       "metadata.creationTimestamp": "2026-01-01T00:00:00Z"})  # fmt: skip
    good = job_body(**{"metadata.name": "good", "spec.scheduling.pool": "night-a100",
                       "spec.resources": whole_pool, "spec.storageSecretRef": {"name": "ok-creds"},
                       "metadata.creationTimestamp": "2026-01-02T00:00:00Z",
                       "metadata.uid": "0f6d8a4e-9999-2222-3333-444455556666"})  # fmt: skip
    _JOB.clear()
    _JOB.update(typo)
    c.observe_job("ADDED", typo)
    assert await c.reconcile_job(("team-a", "typo")) == 2.0
    assert server.status_patches[-1]["phase"] == "Pending"
    _JOB.clear()
    _JOB.update(good)
    c.observe_job("ADDED", good)
    await c.reconcile_job(("team-a", "good"))
    status = server.status_patches[-1]
    assert status["phase"] == "Running", status["message"]
    assert _conditions(status)["Admitted"][:2] == ("True", "Admitted")
    # nor does the pool count it as queued (pool status, tidetune_pool_queued_jobs)
    assert [x.name for x in c._candidates("night-a100")] == ["good"]
    # but its own reconcile plans with it: it may have just found its Secret
    mine = c._candidates("night-a100", me=("team-a", "typo"))
    assert sorted(x.name for x in mine) == ["good", "typo"]


@pytest.mark.asyncio
async def test_a_failed_pod_is_read_and_its_log_kept_before_the_attempt_is_deleted(
    api: tuple[ApiServer, Kube], config: OperatorConfig, tmp_path: Any
) -> None:
    """The launched job Failed: the operator lists its pods, says the cause (worker-0
    OOM-killed) in status and Event, keeps the failed pod's last 100 log lines in the run
    location, with the storage keys redacted everywhere, and only then deletes the attempt."""
    server, kube = api
    secret = "s3cr3t-value-0123456789"
    server.secrets["s3-creds"] = {"accessKey": "AKIALONGENOUGH", "secretKey": secret}
    body = job_body(**{"spec.output.uri": f"file://{tmp_path}", "spec.resources.nodes": 2})
    body["status"] = running_status()
    _JOB.clear()
    _JOB.update(body)
    c = controller(config, kube)
    c.observe_job("ADDED", body)
    job = make_job(edits={"spec.scheduling.pool": None, "spec.output.uri": f"file://{tmp_path}",
                          "spec.resources.nodes": 2})  # fmt: skip
    launched = PyTorchJobLauncher().build(job, config, None, 1, False)
    launched["metadata"]["resourceVersion"] = "5"
    launched["status"] = {"conditions": [{"type": "Failed", "status": "True"}]}
    name = launched["metadata"]["name"]
    c.observe_launched("ADDED", launched, enqueue=False)
    server.pods = [
        {
            "metadata": {"name": f"{name}-worker-0"},
            "status": {"phase": "Failed", "containerStatuses": [{"name": "pytorch", "state": {
                "terminated": {"exitCode": 137, "reason": "OOMKilled",
                               "message": f"loading shard 3\nkey {secret}\n"}}}]},
        },
    ]  # fmt: skip
    server.logs[f"{name}-worker-0"] = "".join(f"line {i}\n" for i in range(150)) + (
        f"AWS_SECRET_ACCESS_KEY={secret}\n"
    )
    await c.reconcile_job(("team-a", body["metadata"]["name"]))
    status = server.status_patches[-1]
    assert status["failures"] == 1 and status.get("preemptions", 0) == 0
    assert "worker-0 OOMKilled (exit 137)" in status["message"]
    uid = job.metadata.uid
    kept = (
        tmp_path
        / "team-a"
        / job.metadata.name
        / uid
        / "run/logs/attempt-1"
        / (f"{name}-worker-0.log")
    )
    text = kept.read_text()
    assert text.splitlines()[0] == "line 51" and len(text.splitlines()) == 100
    assert secret not in text and "AWS_SECRET_ACCESS_KEY=***" in text
    assert str(kept).removeprefix(str(tmp_path)) in json.dumps(status["timeline"])
    assert secret not in json.dumps(status)
    # read (pods, log) before the attempt was deleted
    calls = [f"{m} {p}" for m, p in server.calls]
    log_read = next(i for i, x in enumerate(calls) if x.endswith(f"/pods/{name}-worker-0/log"))
    deleted = next(i for i, x in enumerate(calls) if x == f"DELETE /apis/kubeflow.org/v1/"
                   f"namespaces/team-a/pytorchjobs/{name}")  # fmt: skip
    assert log_read < deleted


@pytest.mark.asyncio
async def test_a_restarted_operator_ends_an_attempt_whose_pods_never_started(
    api: tuple[ApiServer, Kube], config: OperatorConfig, tmp_path: Any
) -> None:
    """The start clock is in status: an operator that starts afresh (a new Controller) and
    finds the pods Pending since 20 minutes deletes the attempt at once, re-queues the job
    with the scheduler's words, takes it off its pool's GPUs and looks again when the
    backoff ends."""
    server, kube = api
    c = controller(config, kube)
    _add_missing("PoolNotFound", server, c)  # night-a100, 64 GPUs, open around the clock
    edits = {"spec.output.uri": f"file://{tmp_path}", "spec.scheduling.pool": "night-a100"}
    body = job_body(**edits)
    job = make_job(edits=edits)
    launched = PyTorchJobLauncher().build(job, config, make_pool(), 1, False)
    launched["metadata"]["resourceVersion"] = "5"
    launched["status"] = {"conditions": [{"type": "Created", "status": "True"}]}
    name = launched["metadata"]["name"]
    since = datetime.now(UTC) - timedelta(minutes=20)
    body["status"] = running_status(launched=name, podsPendingSince=since.isoformat())
    _JOB.clear()
    _JOB.update(body)
    c.observe_job("ADDED", body)
    c.observe_launched("ADDED", launched, enqueue=False)
    assert [x.running for x in c._candidates("night-a100")] == [True]
    server.pods = [
        {
            "metadata": {"name": f"{name}-master-0"},
            "status": {"phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]},
        }
    ]  # fmt: skip
    delay = await c.reconcile_job(("team-a", body["metadata"]["name"]))
    status = server.status_patches[-1]
    assert status["phase"] == "Queued" and status["startTimeouts"] == 1
    assert status.get("podsPendingSince") is None  # (merge patch: null removes it)
    assert _conditions(status)["PodsReady"][:2] == ("False", "StartTimeout")
    assert "did not start within 15m: Unschedulable" in status["message"]
    assert "3 Insufficient nvidia.com/gpu" in status["message"]
    calls = [f"{m} {p}" for m, p in server.calls]
    assert f"DELETE /apis/kubeflow.org/v1/namespaces/team-a/pytorchjobs/{name}" in calls
    created = [p for m, p in server.calls if m == "POST" and p.endswith("/pytorchjobs")]
    assert len(created) == 1  # attempt 2, suspended
    # the backoff (60 s) bounds the next look, not the resync interval alone
    assert delay is not None and 55 <= delay <= 61
    # the pool no longer counts its GPUs as taken
    meta = {**body["metadata"], "resourceVersion": "9"}
    c.observe_job("MODIFIED", {**body, "metadata": meta, "status": status})
    assert [x.running for x in c._candidates("night-a100")] == [False]


@pytest.mark.asyncio
async def test_the_trainjob_launcher_keeps_its_runtime_and_refuses_a_pool_priority_class(
    api: tuple[ApiServer, Kube], config: OperatorConfig
) -> None:
    """With ``launcher: TrainJob`` the operator server-side applies the ClusterTrainingRuntime
    its TrainJobs reference, and a job in a pool with a priorityClassName (which a TrainJob
    cannot carry) fails with PoolInvalid instead of launching without it."""
    server, kube = api
    c = Controller(config, TrainJobLauncher())
    c.kube = kube
    await c._keep_cluster_objects(first_delay=0.01)
    ((path, query, body),) = server.applied
    assert path == "/apis/trainer.kubeflow.org/v1alpha1/clustertrainingruntimes/tidetune"
    assert query == {"fieldManager": "tidetune-operator", "force": "true"}
    pod = body["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]
    assert pod["template"]["spec"]["terminationGracePeriodSeconds"] == (
        config.termination_grace_seconds
    )
    job = job_body(**{"metadata.name": "preemptible", "spec.scheduling.pool": "night-a100"})
    _JOB.clear()
    _JOB.update(job)
    _add_missing("PoolNotFound", server, c)  # the example pool: priorityClassName set
    c.observe_job("ADDED", job)
    assert await c.reconcile_job(("team-a", "preemptible")) is None
    status = server.status_patches[-1]
    assert status["phase"] == "Failed"
    failed = _conditions(status)["Failed"]
    assert failed[:2] == ("True", "PoolInvalid")
    assert "priorityClassName tidetune-preemptible" in failed[2]
    assert not any(path.endswith("/trainjobs") for _, path in server.calls)


@pytest.mark.asyncio
@pytest.mark.parametrize("exists", [True, False])
async def test_a_restarted_operator_asks_the_api_before_calling_a_launched_job_missing(
    api: tuple[ApiServer, Kube], config: OperatorConfig, tmp_path: Any, exists: bool
) -> None:
    """kopf starts its watches together: a restarted operator may look at a running job
    before its PyTorchJob reaches the cache. It asks the API (once) and carries on with the
    PyTorchJob it finds — no second launch, no 'was missing'; one truly gone is launched
    again as before."""
    server, kube = api
    edits = {"spec.output.uri": f"file://{tmp_path}"}
    body = job_body(**edits)
    launched = PyTorchJobLauncher().build(make_job(edits=edits), config, None, 1, False)
    launched["metadata"]["resourceVersion"] = "5"
    launched["status"] = {"conditions": [{"type": "Created", "status": "True"}]}
    name = launched["metadata"]["name"]
    if exists:
        server.pytorchjobs[name] = launched
    body["status"] = running_status(launched=name)
    _JOB.clear()
    _JOB.update(body)
    c = controller(config, kube)
    c.observe_job("ADDED", body)  # the job's event first; the PyTorchJob's not yet
    key = ("team-a", body["metadata"]["name"])
    await c.reconcile_job(key)
    await c.reconcile_job(key)
    gets = [p for m, p in server.calls if m == "GET" and f"/pytorchjobs/{name}" in p]
    assert len(gets) == 1  # asked once
    created = [p for m, p in server.calls if m == "POST" and p.endswith("/pytorchjobs")]
    timeline = [e["type"] for patch in server.status_patches for e in patch.get("timeline", [])]
    if exists:
        assert created == [] and "Relaunched" not in timeline
        assert c._newest_launched(key, make_job(edits=edits)) is not None
    else:
        assert len(created) == 1 and "Relaunched" in timeline
