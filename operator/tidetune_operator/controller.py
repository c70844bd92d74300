"""The controller: an informer cache fed by kopf's watches, a work queue, and workers.

kopf watches FineTuneJobs, the launched jobs and IdlePools and hands every event to
:meth:`Controller.observe`, which updates an in-memory cache and queues the affected
keys. Workers take one key at a time (a key is never reconciled by two workers at once),
gather the world from the cache — plus the few reads that cannot come from a watch: the
job's Secret, its reward ConfigMaps, the trainer's progress — call the pure
:func:`~tidetune_operator.reconcile.decide`, and carry the decision out. Reconciling is
by level: every job is re-queued periodically (``resyncIntervalSeconds``, or
``observeIntervalSeconds`` while it runs), so a missed event only delays, never loses,
a transition.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from tidetune.api import FineTuneJob, ObjectMeta, Phase, Reason
from tidetune.api.constants import JOB_LABEL, ConditionType
from tidetune.api.idlepool import IdlePool
from tidetune.clock import Clock, SystemClock
from tidetune.contract import RunState
from tidetune.storage import S3Credentials, StorageError
from tidetune_operator import admission, metrics, observe
from tidetune_operator.builders import ATTEMPT_LABEL, build_event, job_root_uri
from tidetune_operator.config import OperatorConfig
from tidetune_operator.kube import (
    CONFIGMAPS,
    EVENTS,
    FINETUNEJOBS,
    IDLEPOOLS,
    SECRETS,
    ApiError,
    Kube,
    Resource,
)
from tidetune_operator.launchers import Launcher, LauncherPhase
from tidetune_operator.reconcile import (
    ActionKind,
    ArtifactCheck,
    Decision,
    LaunchRefusal,
    World,
    decide,
    decide_invalid,
)
from tidetune_operator.status import parse_time

log = logging.getLogger("tidetune.operator")

JobKey = tuple[str, str]
QueueKey = tuple[str, str, str]  # ("job", namespace, name) or ("pool", "", name)

ACTIVE_PHASES = {Phase.RUNNING, Phase.EXPORTING}
#: HTTP codes with which the API server refuses a create (a webhook or schema says invalid;
#: RBAC, a quota or an admission plugin says no; the kind is not installed)
REFUSALS = (400, 403, 404, 422)


class LaunchRefusedError(Exception):
    """Creating what a launch needs was refused; carried to the state machine."""

    def __init__(self, refusal: LaunchRefusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


#: Events wait in a bounded queue and are posted by a few tasks (see ``_post_events``)
EVENT_QUEUE_SIZE = 10_000
EVENT_POSTERS = 2


@dataclass
class _Observed:
    at: float
    run: RunState | None
    launcher_version: str | None


class Controller:
    """Cache, queue and workers. One per operator process."""

    def __init__(
        self, config: OperatorConfig, launcher: Launcher, clock: Clock | None = None
    ) -> None:
        self.config = config
        self.launcher = launcher
        self.launcher_resource = Resource(launcher.group, launcher.version, launcher.plural)
        self.clock: Clock = clock or SystemClock(config.clock_offset_seconds)
        self.kube: Kube | None = None
        self.jobs: dict[JobKey, dict[str, Any]] = {}
        self.launched: dict[JobKey, dict[str, dict[str, Any]]] = {}
        self.pools: dict[str, dict[str, Any]] = {}
        self._queue: asyncio.Queue[QueueKey] | None = None
        self._queued: set[QueueKey] = set()
        self._active: set[QueueKey] = set()
        self._dirty: set[QueueKey] = set()
        self._timers: dict[QueueKey, asyncio.TimerHandle] = {}
        self._observed: dict[JobKey, _Observed] = {}
        self._pool_locks: dict[str, asyncio.Lock] = {}
        self._workers: list[asyncio.Task[None]] = []
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=EVENT_QUEUE_SIZE)
        self._posters: list[asyncio.Task[None]] = []
        #: consecutive failed reconciles per key, for exponential backoff
        self._failures: dict[QueueKey, int] = {}
        self._resync: asyncio.Task[None] | None = None
        self.reconciles: Counter[str] = Counter()
        #: running seconds already counted in tidetune_gpu_hours_total, per job
        self._accrued_seconds: dict[JobKey, float] = {}
        self._phase_counts_due = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self, kube: Kube) -> None:
        if self.kube is not None:
            return
        self.kube = kube
        self._queue = asyncio.Queue()
        for key in list(self._queued):  # events that arrived before start
            self._queue.put_nowait(key)
        self._workers = [asyncio.create_task(self._worker(i)) for i in range(self.config.workers)]
        self._resync = asyncio.create_task(self._resync_loop())
        self._posters = [asyncio.create_task(self._event_poster()) for _ in range(EVENT_POSTERS)]

    async def stop(self) -> None:
        tasks = [*self._workers, *self._posters, *([self._resync] if self._resync else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for handle in self._timers.values():
            handle.cancel()
        if self.kube is not None:
            await self.kube.close()

    # ------------------------------------------------------------------ events

    def observe_job(self, event_type: str | None, body: dict[str, Any]) -> None:
        meta = body.get("metadata", {})
        key = (meta.get("namespace", ""), meta.get("name", ""))
        if event_type == "DELETED":
            self.jobs.pop(key, None)
            self._observed.pop(key, None)
            self._accrued_seconds.pop(key, None)
            metrics.forget_job(*key)
        else:
            old = self.jobs.get(key)
            if (
                old is not None
                and _rv(old)
                and _rv(body)
                and int(_rv(body) or 0) <= int(_rv(old) or 0)
            ):
                return  # our own write (cached from its response), or an older version
            self.jobs[key] = body
        self._publish_phase_counts_soon()
        self.enqueue(("job", *key))

    def observe_launched(
        self, event_type: str | None, body: dict[str, Any], *, enqueue: bool = True
    ) -> None:
        """Cache a launched object; ``enqueue=False`` for the operator's own writes (the
        reconcile that made them already acted on them)."""
        meta = body.get("metadata", {})
        job_name = (meta.get("labels") or {}).get(JOB_LABEL)
        if not job_name:
            return
        key = (meta.get("namespace", ""), job_name)
        objects = self.launched.setdefault(key, {})
        if event_type == "DELETED":
            objects.pop(meta.get("name", ""), None)
            if not objects:
                self.launched.pop(key, None)
        else:
            old = objects.get(meta.get("name", ""))
            if (
                old is not None
                and _rv(old)
                and _rv(body)
                and int(_rv(body) or 0) <= int(_rv(old) or 0)
            ):
                return  # already known (we created or patched it and cached the response)
            objects[meta.get("name", "")] = body
        if enqueue:
            self.enqueue(("job", *key))

    def observe_pool(self, event_type: str | None, body: dict[str, Any]) -> None:
        name = body.get("metadata", {}).get("name", "")
        if event_type == "DELETED":
            self.pools.pop(name, None)
            metrics.forget_pool(name)
        else:
            self.pools[name] = body
        self.enqueue(("pool", "", name))
        for ns, job in self.jobs_in_pool(name):
            self.enqueue(("job", ns, job))

    # ------------------------------------------------------------------ queue

    def enqueue(self, key: QueueKey, delay: float = 0.0) -> None:
        if delay > 0:
            handle = self._timers.get(key)
            if handle is not None:
                handle.cancel()
            loop = asyncio.get_event_loop()
            self._timers[key] = loop.call_later(delay, self.enqueue, key)
            return
        self._timers.pop(key, None)
        if key in self._active:
            self._dirty.add(key)
            return
        if key in self._queued:
            return
        self._queued.add(key)
        if self._queue is not None:
            self._queue.put_nowait(key)

    async def _worker(self, index: int) -> None:
        assert self._queue is not None
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            self._active.add(key)
            started = time.perf_counter()
            try:
                if key[0] == "job":
                    delay = await self.reconcile_job((key[1], key[2]))
                else:
                    delay = await self.reconcile_pool(key[2])
                self._failures.pop(key, None)
                if delay is not None:
                    self.enqueue(key, delay)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                metrics.RECONCILE_ERRORS.labels(key[0]).inc()
                transient = isinstance(err, ApiError | StorageError)
                failures = self._failures[key] = self._failures.get(key, 0) + 1
                delay = retry_delay(failures)
                log.log(
                    logging.WARNING if transient else logging.ERROR,
                    "reconcile %s/%s failed (%s): %s; retry %d in %.0fs",
                    key[1],
                    key[2],
                    type(err).__name__,
                    err,
                    failures,
                    delay,
                    exc_info=not transient,
                )
                self.enqueue(key, delay)
            finally:
                metrics.RECONCILE_DURATION.labels(key[0]).observe(time.perf_counter() - started)
                self.reconciles[key[0]] += 1
                self._active.discard(key)
                if key in self._dirty:
                    self._dirty.discard(key)
                    self.enqueue(key)

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.resync_interval_seconds)
            for ns, name in list(self.jobs):
                self.enqueue(("job", ns, name))
            for pool in list(self.pools):
                self.enqueue(("pool", "", pool))
            self._publish_phase_counts()

    def _publish_phase_counts_soon(self) -> None:
        """Refresh ``tidetune_jobs`` within half a second (coalesces bursts of changes)."""
        if self._phase_counts_due:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a unit test): at once
            self._publish_phase_counts()
            return
        self._phase_counts_due = True
        loop.call_later(0.5, self._publish_phase_counts)

    def _publish_phase_counts(self) -> None:
        self._phase_counts_due = False
        counts: Counter[tuple[str, str]] = Counter()
        for (ns, _), body in self.jobs.items():
            counts[(ns, str((body.get("status") or {}).get("phase", Phase.PENDING)))] += 1
        metrics.set_phase_counts(dict(counts))

    # ------------------------------------------------------------------ pools

    def jobs_in_pool(self, pool: str) -> Iterable[JobKey]:
        for key, body in self.jobs.items():
            if ((body.get("spec") or {}).get("scheduling") or {}).get("pool") == pool:
                yield key

    def _candidates(self, pool_name: str) -> list[admission.Candidate]:
        out = []
        for key in self.jobs_in_pool(pool_name):
            body = self.jobs[key]
            cand = candidate(body)
            if cand is not None:
                out.append(cand)
        return out

    def _pool_problem(self, name: str) -> str:
        """Why a stored IdlePool is invalid (what the API server cannot check, such as an
        unknown time zone), in ``tidetune validate``'s words."""
        from tidetune.manifests import explain

        try:
            IdlePool.model_validate(_strip(self.pools.get(name) or {}))
        except ValidationError as err:
            return "; ".join(": ".join(explain(dict(e), IdlePool)) for e in err.errors()[:3])
        return "unknown"

    def _pool_model(self, name: str) -> IdlePool | None:
        body = self.pools.get(name)
        if body is None:
            return None
        try:
            return IdlePool.model_validate(_strip(body))
        except ValidationError:
            return None

    def _admission_for(
        self, job: FineTuneJob, pool: IdlePool | None, now: datetime
    ) -> admission.Admission:
        if not job.spec.scheduling.pool or pool is None:
            return admission.ADMIT_NOW
        verdicts = admission.plan(pool, self._candidates(pool.metadata.name), now)
        return verdicts.get(
            (job.metadata.namespace or "", job.metadata.name),
            admission.Admission(False, Reason.WAITING_FOR_POOL_WINDOW, "waiting for admission"),
        )

    async def reconcile_pool(self, name: str) -> float | None:
        pool = self._pool_model(name)
        if pool is None:
            metrics.forget_pool(name)
            return None
        now = self.clock.now()
        candidates = self._candidates(name)
        status = admission.pool_status(pool, candidates, now)
        status["observedGeneration"] = pool.metadata.generation
        current = self.pools[name].get("status") or {}
        if any(current.get(k) != v for k, v in status.items()):
            assert self.kube is not None
            updated = await self.kube.patch(IDLEPOOLS, name, {"status": status}, sub="status")
            self.pools[name] = updated
        metrics.observe_pool(name, status, pool.spec.gpus)
        nxt = admission.next_decision_time(pool, now)
        delay = self.config.resync_interval_seconds
        if nxt is not None:
            delay = min(delay, max(0.5, (nxt - now).total_seconds() + 0.5))
            # wake the pool's jobs when the drain starts, when it closes and when it opens
            for ns, job in self.jobs_in_pool(name):
                self.enqueue(("job", ns, job), delay)
        return delay

    # ------------------------------------------------------------------ jobs

    async def reconcile_job(self, key: JobKey) -> float | None:
        body = self.jobs.get(key)
        if body is None:
            return None
        pool_name = ((body.get("spec") or {}).get("scheduling") or {}).get("pool")
        if pool_name:
            lock = self._pool_locks.setdefault(pool_name, asyncio.Lock())
            async with lock:  # admission decisions in one pool are serialized
                return await self._reconcile_job(key, body)
        return await self._reconcile_job(key, body)

    async def _reconcile_job(self, key: JobKey, body: dict[str, Any]) -> float | None:
        assert self.kube is not None
        try:
            job = FineTuneJob.model_validate(_strip(body))
        except ValidationError as err:
            await self._fail_invalid(key, body, err)
            return None
        status = body.get("status") or {}
        phase = Phase(status.get("phase", Phase.PENDING))
        if phase.terminal:
            self._record_metrics(job, status)
            return None
        now = self.clock.now()
        launched = self._newest_launched(key, job)
        pool = self._pool_model(job.spec.scheduling.pool) if job.spec.scheduling.pool else None
        validated = any(
            c.get("type") == ConditionType.VALIDATED and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
        secret_data: dict[str, str] | None = None
        problems: list[tuple[Reason, str]] = []
        if not validated:
            problems, secret_data = await self._check_refs(job, pool)
        run: RunState | None = None
        creds: S3Credentials | None = None
        root = job_root_uri(job, self.config)
        if launched is not None and root is not None:
            lstate = self.launcher.observe(launched)
            seen = self._observed.get(key)
            started = bool((launched.get("status") or {}).get("conditions"))
            fresh = started and (
                seen is None
                or time.monotonic() - seen.at >= self.config.observe_interval_seconds
                or lstate.phase in (LauncherPhase.FAILED, LauncherPhase.SUCCEEDED)
                or seen.launcher_version != _rv(launched)
            )
            if fresh:
                creds = await self._credentials(job, secret_data)
                run = await asyncio.to_thread(observe.read_run_state, root, creds)
                self._observed[key] = _Observed(time.monotonic(), run, _rv(launched))
            else:
                run = seen.run if seen else None
        world = World(
            job=job,
            now=now,
            launcher=launched,
            ref_problems=problems,
            pool=pool,
            admission=self._admission_for(job, pool, now),
            run=run,
        )
        decision = decide(world, self.config, self.launcher)
        if decision.needs_artifacts and root is not None:
            creds = creds or await self._credentials(job, secret_data)
            check: ArtifactCheck = await asyncio.to_thread(observe.verify_artifacts, root, creds)
            decision = decide(
                World(**{**world.__dict__, "artifacts": check}), self.config, self.launcher
            )
        try:
            await self._execute(job, decision)
        except LaunchRefusedError as refused:
            # the API server said no to the launch: the state machine records why
            world = dataclasses.replace(world, launch_refused=refused.refusal)
            decision = decide(world, self.config, self.launcher)
        new_status = await self._write_status(key, body, decision.status)
        await self._post_events(job.metadata, decision)
        self._record_transition(job, status, new_status)
        self._record_metrics(job, new_status)
        return self._next_delay(Phase(new_status.get("phase", Phase.PENDING)), job)

    def _next_delay(self, phase: Phase, job: FineTuneJob) -> float | None:
        if phase.terminal:
            return None
        if phase in ACTIVE_PHASES or (phase is Phase.SUSPENDED and self.launched.get(_key(job))):
            return self.config.observe_interval_seconds
        return self.config.resync_interval_seconds

    def _newest_launched(self, key: JobKey, job: FineTuneJob) -> dict[str, Any] | None:
        objects = [
            o
            for o in (self.launched.get(key) or {}).values()
            if any(
                ref.get("uid") == job.metadata.uid
                for ref in (o.get("metadata") or {}).get("ownerReferences") or []
            )
        ]
        if not objects:
            return None
        return max(
            objects,
            key=lambda o: int(
                ((o.get("metadata") or {}).get("labels") or {}).get(ATTEMPT_LABEL, 0)
            ),
        )

    async def _check_refs(
        self, job: FineTuneJob, pool: IdlePool | None
    ) -> tuple[list[tuple[Reason, str]], dict[str, str] | None]:
        """Check what the spec refers to, in the job's own namespace only."""
        assert self.kube is not None
        ns = job.metadata.namespace or "default"
        problems: list[tuple[Reason, str]] = []
        secret_data = None
        if job_root_uri(job, self.config) is None:
            problems.append(
                (
                    Reason.SPEC_INVALID,
                    "no output location: set spec.output.uri "
                    "(the operator has no defaultOutputUri)",
                )
            )
        ref = job.spec.storage_secret_ref
        if ref is not None:
            try:
                secret = await self.kube.get(SECRETS, ref.name, ns)
            except ApiError as err:
                if not err.not_found:
                    raise
                problems.append(
                    (
                        Reason.SECRET_NOT_FOUND,
                        f"spec.storageSecretRef: Secret {ref.name} not found in namespace {ns}; "
                        "create it there with keys accessKey and secretKey "
                        "(a job reads only Secrets of its own namespace)",
                    )
                )
            else:
                secret_data = _decode(secret.get("data") or {})
                missing = [k for k in ("accessKey", "secretKey") if not secret_data.get(k)]
                if missing:
                    problems.append(
                        (
                            Reason.SECRET_KEY_MISSING,
                            f"spec.storageSecretRef: Secret {ref.name} has no "
                            f"{' or '.join(missing)}; "
                            "it needs keys accessKey and secretKey (endpoint optional)",
                        )
                    )
        if job.spec.rl is not None:
            for i, rule in enumerate(job.spec.rl.rewards):
                if rule.function is None:
                    continue
                cm = rule.function.config_map_ref
                where = f"spec.rl.rewards[{i}].function.configMapRef"
                try:
                    found = await self.kube.get(CONFIGMAPS, cm.name, ns)
                except ApiError as err:
                    if not err.not_found:
                        raise
                    problems.append(
                        (
                            Reason.CONFIG_MAP_NOT_FOUND,
                            f"{where}: ConfigMap {cm.name} not found in namespace {ns}",
                        )
                    )
                    continue
                if cm.key not in (found.get("data") or {}):
                    problems.append(
                        (
                            Reason.CONFIG_MAP_NOT_FOUND,
                            f"{where}: ConfigMap {cm.name} has no key {cm.key}",
                        )
                    )
        pool_name = job.spec.scheduling.pool
        if pool_name:
            if pool is None and pool_name in self.pools:
                problems.append(
                    (
                        Reason.POOL_INVALID,
                        f"spec.scheduling.pool: IdlePool {pool_name} is invalid: "
                        f"{self._pool_problem(pool_name)}",
                    )
                )
            elif pool is None:
                problems.append(
                    (
                        Reason.POOL_NOT_FOUND,
                        f"spec.scheduling.pool: IdlePool {pool_name} does not exist",
                    )
                )
            elif job.spec.resources.total_gpus > pool.spec.gpus:
                problems.append(
                    (
                        Reason.POOL_TOO_SMALL,
                        f"spec.resources: the job needs {job.spec.resources.total_gpus} GPUs "
                        f"({job.spec.resources.nodes} × {job.spec.resources.gpus_per_node}) "
                        "but pool "
                        f"{pool_name} has {pool.spec.gpus}",
                    )
                )
        return problems, secret_data

    async def _credentials(
        self, job: FineTuneJob, known: dict[str, str] | None
    ) -> S3Credentials | None:
        ref = job.spec.storage_secret_ref
        if ref is None:
            return None
        data = known
        if data is None:
            assert self.kube is not None
            secret = await self.kube.get(SECRETS, ref.name, job.metadata.namespace)
            data = _decode(secret.get("data") or {})
        return observe.credentials_from_secret(data)

    async def _execute(self, job: FineTuneJob, decision: Decision) -> None:
        assert self.kube is not None
        ns = job.metadata.namespace
        creates = [
            a for a in decision.actions
            if a.kind in (ActionKind.CREATE_CONFIG_MAP, ActionKind.CREATE_LAUNCHER)
        ]  # fmt: skip
        if creates:  # independent objects (the pods mount the ConfigMap by name): in parallel
            created = await asyncio.gather(
                *(
                    self.kube.create_or_get(
                        CONFIGMAPS
                        if a.kind is ActionKind.CREATE_CONFIG_MAP
                        else self.launcher_resource,
                        a.body or {},
                    )
                    for a in creates
                ),
                return_exceptions=True,
            )
            for action, result in zip(creates, created, strict=True):
                if isinstance(result, ApiError) and result.status in REFUSALS:
                    meta = (action.body or {}).get("metadata") or {}
                    kind = str((action.body or {}).get("kind", ""))
                    raise LaunchRefusedError(
                        LaunchRefusal(result.status, kind, str(meta.get("name")), result.message)
                    )
                if isinstance(result, BaseException):
                    raise result
                if action.kind is ActionKind.CREATE_LAUNCHER:
                    self.observe_launched("ADDED", result[0], enqueue=False)
        for action in decision.actions:
            if action in creates:
                continue
            if action.kind in (ActionKind.SUSPEND_LAUNCHER, ActionKind.RESUME_LAUNCHER):
                assert action.name is not None
                obj = await self.kube.patch(
                    self.launcher_resource,
                    action.name,
                    self.launcher.suspend_patch(action.kind is ActionKind.SUSPEND_LAUNCHER),
                    ns,
                )
                self.observe_launched("MODIFIED", obj, enqueue=False)
            elif action.kind is ActionKind.DELETE_LAUNCHER:
                assert action.name is not None
                await self.kube.delete(self.launcher_resource, action.name, ns)
                self.launched.get(_key(job), {}).pop(action.name, None)

    async def _write_status(
        self, key: JobKey, body: dict[str, Any], status: dict[str, Any]
    ) -> dict[str, Any]:
        assert self.kube is not None
        current = body.get("status") or {}
        if status == current:
            return current
        patch: dict[str, Any] = dict(status)
        for gone in set(current) - set(status):
            patch[gone] = None
        try:
            updated = await self.kube.patch(
                FINETUNEJOBS, key[1], {"status": patch}, key[0], sub="status"
            )
        except ApiError as err:
            if err.not_found:
                return status
            raise
        if key in self.jobs:
            self.jobs[key] = updated  # write-through: the next plan sees it at once
            self._publish_phase_counts_soon()
        return updated.get("status") or status

    async def _post_events(self, meta: ObjectMeta, decision: Decision) -> None:
        """Queue the decision's Events for the posters (as client-go's event recorder
        does): launch-critical writes go first, Events follow when the API has room.
        Status already holds the timeline; a full queue drops Events, never blocks."""
        for i, entry in enumerate(decision.events):
            hint = f"{meta.uid}/{entry['time']}/{entry['type']}/{entry['reason']}/{i}"
            body = build_event(
                meta,
                entry["reason"],
                f"{entry['type']}: {entry['message']}",
                warning=bool(entry.get("warning")),
                now=self.clock.now(),
                uid_hint=hint,
            )
            try:
                self._events.put_nowait(body)
            except asyncio.QueueFull:
                metrics.RECONCILE_ERRORS.labels("event").inc()
                log.warning("event queue full; dropped %s for %s", entry["reason"], meta.name)

    async def _event_poster(self) -> None:
        assert self.kube is not None
        while True:
            body = await self._events.get()
            try:
                await self.kube.create(EVENTS, body)
            except ApiError as err:  # best effort: the timeline in status is the record
                log.debug("event %s not posted: %s", body["metadata"]["name"], err)

    async def _fail_invalid(self, key: JobKey, body: dict[str, Any], err: ValidationError) -> None:
        """A stored object the model rejects (the CRD is older or laxer): fail it, clearly,
        through the state machine like every failure (bounded timeline, Event)."""
        from tidetune.manifests import explain

        path, what = explain(dict(err.errors()[0]), FineTuneJob)
        status = body.get("status") or {}
        meta = body.get("metadata") or {}
        decision = decide_invalid(
            status, meta.get("generation"), self.clock.now(), f"{path}: {what}"
        )
        if decision.status == status:
            return
        await self._write_status(key, body, decision.status)
        involved = ObjectMeta.model_construct(name=key[1], namespace=key[0], uid=meta.get("uid"))
        await self._post_events(involved, decision)

    def _record_transition(
        self, job: FineTuneJob, old: dict[str, Any], new: dict[str, Any]
    ) -> None:
        before, after = old.get("phase"), new.get("phase")
        ns = job.metadata.namespace or ""
        pool = job.spec.scheduling.pool or ""
        if after and after != before:
            metrics.PHASE_TRANSITIONS.labels(ns, after).inc()
            if (
                after == Phase.RUNNING
                and before in (None, Phase.PENDING, Phase.QUEUED)
                and int(new.get("attempt", 0)) <= 1
            ):
                queued = parse_time(new.get("queuedTime")) or job.metadata.creation_timestamp
                if queued is not None:
                    metrics.QUEUE_WAIT.labels(pool).observe(
                        max(0.0, (self.clock.now() - queued).total_seconds())
                    )
        # a preemption may keep the phase (Running → Running on a new attempt)
        preempted = int(new.get("preemptions", 0)) - int(old.get("preemptions", 0))
        if preempted > 0:
            metrics.PREEMPTIONS.labels(ns, pool).inc(preempted)

    def _accrue_gpu_hours(self, key: JobKey, job: FineTuneJob, status: dict[str, Any]) -> None:
        """Add the running time since the last look to ``tidetune_gpu_hours_total``.

        Running time is ``runSeconds`` plus the current stint (``runningSince``), so the
        counter grows while a job runs rather than when a stint ends. The first look at a
        job after the operator starts only sets the baseline (a restarted operator must not
        count a job's earlier hours again).
        """
        elapsed = float(status.get("runSeconds", 0.0))
        since = parse_time(status.get("runningSince"))
        if since is not None:
            elapsed += max(0.0, (self.clock.now() - since).total_seconds())
        counted = self._accrued_seconds.get(key)
        self._accrued_seconds[key] = max(elapsed, counted or 0.0)
        if counted is None or elapsed <= counted:
            return
        gpus = max(job.spec.resources.total_gpus, 0)
        metrics.GPU_HOURS.labels(job.metadata.namespace or "", job.spec.scheduling.pool or "").inc(
            (elapsed - counted) * gpus / 3600.0
        )

    def _record_metrics(self, job: FineTuneJob, status: dict[str, Any]) -> None:
        queued = parse_time(status.get("queuedTime")) or job.metadata.creation_timestamp
        metrics.observe_job(
            job.metadata.namespace or "",
            job.metadata.name,
            status,
            job.spec.scheduling.pool or "",
            str(job.spec.method),
            queued_since=queued.timestamp() if queued is not None else None,
        )
        self._accrue_gpu_hours(_key(job), job, status)


def retry_delay(failures: int, base: float = 1.0, cap: float = 60.0) -> float:
    """Seconds before retrying a reconcile that failed ``failures`` times in a row:
    1, 2, 4, … up to a minute (the API or storage may be briefly down)."""
    return min(cap, base * 2.0 ** max(0, failures - 1))


def candidate(body: dict[str, Any]) -> admission.Candidate | None:
    """What admission needs to know about one job (None for jobs that are done)."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    phase = status.get("phase", Phase.PENDING)
    if phase in (Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED):
        return None
    resources = spec.get("resources") or {}
    gpus = int(resources.get("nodes", 1)) * int(resources.get("gpusPerNode", 1))
    created = parse_time(meta.get("creationTimestamp")) or parse_time(status.get("queuedTime"))
    suspended_reason = next(
        (
            c.get("reason")
            for c in status.get("conditions") or []
            if c.get("type") == "Suspended" and c.get("status") == "True"
        ),
        None,
    )
    running = int(status.get("attempt", 0)) > 0 and phase in (Phase.RUNNING, Phase.EXPORTING)
    if spec.get("suspend") and not running:
        return None  # suspended by its owner: neither waiting nor holding GPUs
    interval = remaining = None
    estimate = status.get("estimate") or {}
    progress = status.get("progress") or {}
    total = progress.get("totalSteps") or (spec.get("hyperparameters") or {}).get("maxSteps")
    devices = max(gpus, 1)
    if estimate.get("gpuHours"):
        wall = float(estimate["gpuHours"]) / devices * 3600.0
        remaining = wall * (1.0 - float(progress.get("percent", 0.0)) / 100.0)
        if total:
            every = int((spec.get("checkpointing") or {}).get("everySteps", 100))
            interval = wall * min(1.0, every / float(total))
    return admission.Candidate(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        gpus=gpus,
        priority=int((spec.get("scheduling") or {}).get("priority", 0)),
        created=created or datetime.fromtimestamp(0).astimezone(),
        running=running,
        resuming=suspended_reason in (Reason.WINDOW_CLOSING, Reason.NODE_RECLAIMED)
        or (
            phase == Phase.SUSPENDED
            and bool(status.get("checkpoints"))
            and suspended_reason != Reason.SUSPENDED_BY_USER
        ),
        checkpoint_interval_seconds=interval,
        remaining_seconds=remaining,
    )


def _strip(body: dict[str, Any]) -> dict[str, Any]:
    """The parts of an API object the models read (kopf adds nothing we need)."""
    return {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec", "status") if k in body}


def _rv(body: dict[str, Any]) -> str | None:
    rv = (body.get("metadata") or {}).get("resourceVersion")
    return str(rv) if rv is not None and str(rv).isdigit() else None


def _key(job: FineTuneJob) -> JobKey:
    return (job.metadata.namespace or "", job.metadata.name)


def _decode(data: dict[str, str]) -> dict[str, str]:
    out = {}
    for k, v in data.items():
        try:
            out[k] = base64.b64decode(v).decode()
        except (ValueError, UnicodeDecodeError):
            out[k] = ""
    return out


def fingerprint(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]
