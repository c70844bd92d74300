"""The controller: an informer cache fed by kopf's watches, and the reconciles.

kopf watches FineTuneJobs, the launched jobs and IdlePools and hands every event to
``Controller.observe_*``, which updates an in-memory cache and queues the affected keys
in the :class:`~tidetune_operator.workqueue.WorkQueue`. Its workers hand one key at a
time to :meth:`Controller.reconcile_job` (or ``reconcile_pool``), which gathers the world
from the cache — plus the few reads that cannot come from a watch: the reference checks
(:mod:`~tidetune_operator.references`), the trainer's progress
(:mod:`~tidetune_operator.observe`) — calls the pure
:func:`~tidetune_operator.reconcile.decide`, carries the decision out, and tells the
:class:`~tidetune_operator.recorder.MetricsRecorder`. Reconciling is by level: every job
is re-queued periodically (``resyncIntervalSeconds``, or ``observeIntervalSeconds``
while it runs), so a missed event only delays, never loses, a transition.
"""

from __future__ import annotations

import asyncio
import dataclasses
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
    CLUSTERTRAININGRUNTIMES,
    CONFIGMAPS,
    EVENTS,
    FINETUNEJOBS,
    IDLEPOOLS,
    PODS,
    ApiError,
    Kube,
    Resource,
)
from tidetune_operator.launchers import Launcher, LauncherPhase
from tidetune_operator.reconcile import (
    WAIT_FOR_REFERENCE,
    ActionKind,
    ArtifactCheck,
    Decision,
    LaunchRefusal,
    PodExit,
    World,
    decide,
    decide_invalid,
)
from tidetune_operator.recorder import MetricsRecorder
from tidetune_operator.references import check_references, storage_credentials, strip
from tidetune_operator.status import parse_time
from tidetune_operator.workqueue import QueueKey, WorkQueue, retry_delay

log = logging.getLogger("tidetune.operator")

JobKey = tuple[str, str]

ACTIVE_PHASES = {Phase.RUNNING, Phase.EXPORTING}
#: first re-check of a job waiting for a reference; doubles up to ``resyncIntervalSeconds``
WAIT_FIRST_DELAY = 2.0
#: HTTP codes with which the API server refuses a create (a webhook or schema says invalid;
#: RBAC, a quota or an admission plugin says no; the kind is not installed)
REFUSALS = (400, 403, 404, 422)


class LaunchRefusedError(Exception):
    """Creating what a launch needs was refused; carried to the state machine."""

    def __init__(self, refusal: LaunchRefusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


#: how much of a failed pod's log is kept in the run location (``pods/log`` tailLines and
#: limitBytes)
POD_LOG_LINES = 100
POD_LOG_BYTES = 64 * 1024
#: the field manager of what the operator server-side applies
FIELD_MANAGER = "tidetune-operator"
#: where each kind of cluster object a launcher asks the operator to keep lives
CLUSTER_OBJECT_RESOURCES = {"ClusterTrainingRuntime": CLUSTERTRAININGRUNTIMES}

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
        self.queue = WorkQueue(self._handle, config.workers)
        self.recorder = MetricsRecorder(self.clock, lambda: list(self.jobs.items()))
        self._observed: dict[JobKey, _Observed] = {}
        #: jobs waiting for an object they name: consecutive looks that did not find it
        self._waiting: dict[JobKey, int] = {}
        #: jobs whose launched object the API was asked for (see _launched_from_api)
        self._launched_confirmed: set[JobKey] = set()
        self._pool_locks: dict[str, asyncio.Lock] = {}
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=EVENT_QUEUE_SIZE)
        self._posters: list[asyncio.Task[None]] = []
        self._resync: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None

    @property
    def reconciles(self) -> Counter[str]:
        """Reconciles done, by kind (the liveness probe shows them)."""
        return self.queue.reconciles

    # ------------------------------------------------------------------ lifecycle

    async def start(self, kube: Kube) -> None:
        if self.kube is not None:
            return
        self.kube = kube
        self.queue.start()
        self._resync = asyncio.create_task(self._resync_loop())
        self._posters = [asyncio.create_task(self._event_poster()) for _ in range(EVENT_POSTERS)]
        if self.launcher.cluster_objects(self.config):
            self._keeper = asyncio.create_task(self._keep_cluster_objects())

    async def _keep_cluster_objects(self, first_delay: float = 1.0) -> None:
        """Server-side apply the launcher's cluster objects (a TrainJob's
        ClusterTrainingRuntime), retried with a backoff of up to a minute until the API
        server takes them; until then launches are refused (the runtime is missing) and
        retried, and the log says why."""
        assert self.kube is not None
        delay = first_delay
        for body in self.launcher.cluster_objects(self.config):
            res = CLUSTER_OBJECT_RESOURCES[body["kind"]]
            while True:
                try:
                    await self.kube.apply(res, body, FIELD_MANAGER)
                    log.info("applied %s %s", body["kind"], body["metadata"]["name"])
                    break
                except ApiError as err:
                    log.error(
                        "cannot apply %s %s (%s: %s); retrying in %.0f s",
                        body["kind"],
                        body["metadata"]["name"],
                        err.status,
                        err.message,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 60.0)

    async def stop(self) -> None:
        tasks = [*self._posters, *(t for t in (self._resync, self._keeper) if t is not None)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.queue.stop()
        if self.kube is not None:
            await self.kube.close()

    # ------------------------------------------------------------------ events

    def observe_job(self, event_type: str | None, body: dict[str, Any]) -> None:
        meta = body.get("metadata", {})
        key = (meta.get("namespace", ""), meta.get("name", ""))
        if event_type == "DELETED":
            self.jobs.pop(key, None)
            self._observed.pop(key, None)
            self._waiting.pop(key, None)
            self._launched_confirmed.discard(key)
            self.recorder.forget_job(key)
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
        self.recorder.publish_phase_counts_soon()
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
        self.queue.enqueue(key, delay)

    async def _handle(self, key: QueueKey) -> float | None:
        if key[0] == "job":
            return await self.reconcile_job((key[1], key[2]))
        return await self.reconcile_pool(key[2])

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.resync_interval_seconds)
            for ns, name in list(self.jobs):
                self.queue.resync(("job", ns, name))
            for pool in list(self.pools):
                self.queue.resync(("pool", "", pool))
            self.recorder.publish_phase_counts()

    # ------------------------------------------------------------------ pools

    def jobs_in_pool(self, pool: str) -> Iterable[JobKey]:
        for key, body in self.jobs.items():
            if ((body.get("spec") or {}).get("scheduling") or {}).get("pool") == pool:
                yield key

    def _candidates(self, pool_name: str, me: JobKey | None = None) -> list[admission.Candidate]:
        """The pool's jobs as admission sees them. A job waiting for a reference holds no
        place (a typo in a Secret name must not block the queue), except ``me``: the job
        being reconciled, which may just have found what it waited for."""
        out = []
        for key in self.jobs_in_pool(pool_name):
            body = self.jobs[key]
            if key != me and waiting_for_reference(body.get("status") or {}):
                continue
            cand = candidate(body)
            if cand is not None:
                out.append(cand)
        return out

    def _pool_model(self, name: str) -> IdlePool | None:
        body = self.pools.get(name)
        if body is None:
            return None
        try:
            return IdlePool.model_validate(strip(body))
        except ValidationError:
            return None

    def _admission_for(
        self, job: FineTuneJob, pool: IdlePool | None, now: datetime
    ) -> admission.Admission:
        if not job.spec.scheduling.pool or pool is None:
            return admission.ADMIT_NOW
        key = (job.metadata.namespace or "", job.metadata.name)
        verdicts = admission.plan(pool, self._candidates(pool.metadata.name, me=key), now)
        return verdicts.get(
            key,
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
            self._waiting.pop(key, None)
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
            job = FineTuneJob.model_validate(strip(body))
        except ValidationError as err:
            await self._fail_invalid(key, body, err)
            return None
        status = body.get("status") or {}
        phase = Phase(status.get("phase", Phase.PENDING))
        if phase.terminal:
            self._waiting.pop(key, None)
            self.recorder.record_metrics(job, status)
            return None
        now = self.clock.now()
        launched = self._newest_launched(key, job)
        if launched is None and status.get("attempt") and key not in self._launched_confirmed:
            launched = await self._launched_from_api(key, job, status)
        pool = self._pool_model(job.spec.scheduling.pool) if job.spec.scheduling.pool else None
        validated = any(
            c.get("type") == ConditionType.VALIDATED and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
        secret_data: dict[str, str] | None = None
        problems: list[tuple[Reason, str]] = []
        if not validated:
            problems, secret_data = await check_references(
                self.kube, job, pool, self.pools, self.config, self.launcher
            )
        run: RunState | None = None
        creds: S3Credentials | None = None
        root = job_root_uri(job, self.config)
        if launched is not None and root is not None:
            lstate = self.launcher.observe(launched)
            seen = self._observed.get(key)
            fresh = self.launcher.has_started(launched) and (
                seen is None
                or time.monotonic() - seen.at >= self.config.observe_interval_seconds
                or lstate.phase in (LauncherPhase.FAILED, LauncherPhase.SUCCEEDED)
                or seen.launcher_version != _rv(launched)
            )
            if fresh:
                creds = await storage_credentials(self.kube, job, secret_data)
                run = await asyncio.to_thread(observe.read_run_state, root, creds)
                self._observed[key] = _Observed(time.monotonic(), run, _rv(launched))
            else:
                run = seen.run if seen else None
        pod_exits: tuple[PodExit, ...] = ()
        if launched is not None and self.launcher.observe(launched).phase is LauncherPhase.FAILED:
            creds = creds or await storage_credentials(self.kube, job, secret_data)
            pod_exits = await self._pod_exits(key, launched, root, creds)
        pods_waiting: tuple[str, str] | None = None
        if (
            launched is not None
            and not self.launcher.is_suspended(launched)
            and self.launcher.observe(launched).phase
            in (LauncherPhase.PENDING, LauncherPhase.SUSPENDED)
        ):
            pods = await self.kube.list(PODS, key[0], label_selector=f"{JOB_LABEL}={key[1]}")
            pods_waiting = observe.pods_waiting(pods, launched["metadata"]["name"])
        world = World(
            job=job,
            now=now,
            launcher=launched,
            pods_waiting=pods_waiting,
            pod_exits=pod_exits,
            previous_attempts=self._previous_attempts(key, job, launched),
            ref_problems=problems,
            pool=pool,
            admission=self._admission_for(job, pool, now),
            run=run,
        )
        decision = decide(world, self.config, self.launcher)
        if decision.needs_artifacts and root is not None:
            creds = creds or await storage_credentials(self.kube, job, secret_data)
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
        self.recorder.record_transition(job, status, new_status)
        self.recorder.record_metrics(job, new_status)
        if decision.waiting:
            return self._wait_delay(key)
        self._waiting.pop(key, None)
        delay = self._next_delay(Phase(new_status.get("phase", Phase.PENDING)), job)
        retry = parse_time(new_status.get("startRetryAfter"))
        if delay is not None and retry is not None:
            # the next attempt after a start timeout may start then: look again at that time
            delay = min(delay, max(0.5, (retry - now).total_seconds() + 0.5))
        return delay

    async def _pod_exits(
        self,
        key: JobKey,
        launched: dict[str, Any],
        root: str | None,
        creds: S3Credentials | None,
    ) -> tuple[PodExit, ...]:
        """How the failed launched job's pods ended, and their last log lines kept in the run
        location (``logs/attempt-<N>/<pod>.log``). The training operator keeps failed pods
        until the attempt is deleted (no backoffLimit: see ``launchers.pytorchjob``), which
        happens only after this. Credentials are removed from messages and logs; a log that
        cannot be read or kept is skipped with a warning (the cause is in the status)."""
        assert self.kube is not None
        name = launched["metadata"]["name"]
        try:
            pods = await self.kube.list(PODS, key[0], label_selector=f"{JOB_LABEL}={key[1]}")
        except ApiError as err:
            log.warning("%s/%s: cannot list the pods of %s: %s", *key, name, err)
            return ()
        secrets = [v for v in (creds.access_key, creds.secret_key) if v] if creds else []
        labels = (launched.get("metadata") or {}).get("labels") or {}
        attempt = int(labels.get(ATTEMPT_LABEL, 0) or 0)
        out = []
        kept: set[str] = set()
        for found in observe.pod_exits(pods, name):
            found = dataclasses.replace(found, message=observe.redact(found.message, secrets))
            if root is not None and found.pod not in kept:
                kept.add(found.pod)
                uri = await self._keep_log(key, found, root, creds, attempt, secrets)
                found = dataclasses.replace(found, log_uri=uri)
            out.append(found)
        return tuple(out)

    async def _keep_log(
        self,
        key: JobKey,
        found: PodExit,
        root: str,
        creds: S3Credentials | None,
        attempt: int,
        secrets: list[str],
    ) -> str | None:
        assert self.kube is not None
        try:
            text = await self.kube.pod_log(
                found.pod, key[0], found.container, POD_LOG_LINES, POD_LOG_BYTES
            )
        except ApiError as err:
            log.warning("%s/%s: cannot read the log of pod %s: %s", *key, found.pod, err)
            return None
        try:
            return await asyncio.to_thread(
                observe.keep_pod_log, root, creds, attempt, found.pod, observe.redact(text, secrets)
            )
        except StorageError as err:
            log.warning("%s/%s: cannot keep the log of pod %s: %s", *key, found.pod, err)
            return None

    def _wait_delay(self, key: JobKey) -> float:
        """When to look again for what a waiting job names: 2 s, 4 s, … up to the resync
        interval (GitOps usually applies it within seconds; a typo should not cost a read a
        second). Secrets and ConfigMaps are not watched; a new IdlePool wakes its jobs."""
        looks = self._waiting[key] = self._waiting.get(key, 0) + 1
        return retry_delay(looks, WAIT_FIRST_DELAY, self.config.resync_interval_seconds)

    def _next_delay(self, phase: Phase, job: FineTuneJob) -> float | None:
        if phase.terminal:
            return None
        if phase in ACTIVE_PHASES or (phase is Phase.SUSPENDED and self.launched.get(_key(job))):
            return self.config.observe_interval_seconds
        return self.config.resync_interval_seconds

    def _owned_launched(self, key: JobKey, job: FineTuneJob) -> list[dict[str, Any]]:
        """Launched objects of this job (owned by its uid: not a namesake's leftovers)."""
        return [
            o
            for o in (self.launched.get(key) or {}).values()
            if any(
                ref.get("uid") == job.metadata.uid
                for ref in (o.get("metadata") or {}).get("ownerReferences") or []
            )
        ]

    def _previous_attempts(
        self, key: JobKey, job: FineTuneJob, newest: dict[str, Any] | None
    ) -> tuple[str, ...]:
        """Launched jobs of earlier attempts still there (deleted in the foreground, they
        stay until their pods are gone)."""
        if newest is None:
            return ()
        name = newest["metadata"]["name"]
        return tuple(
            sorted(
                o["metadata"]["name"]
                for o in self._owned_launched(key, job)
                if o["metadata"]["name"] != name
            )
        )

    async def _launched_from_api(
        self, key: JobKey, job: FineTuneJob, status: dict[str, Any]
    ) -> dict[str, Any] | None:
        """A job that launched an attempt, with nothing launched in the cache: kopf starts
        its watches together, so an operator just (re)started can look at a job before its
        launched object arrives — and would launch it again ("was missing"). Ask the API
        once per job and process before believing the cache."""
        assert self.kube is not None
        self._launched_confirmed.add(key)
        name = (status.get("launcher") or {}).get("name")
        if not name:
            return None
        try:
            body = await self.kube.get(self.launcher_resource, name, key[0])
        except ApiError as err:
            if err.status == 404:
                return None
            raise
        self.observe_launched("ADDED", body, enqueue=False)
        return self._newest_launched(key, job)

    def _newest_launched(self, key: JobKey, job: FineTuneJob) -> dict[str, Any] | None:
        objects = self._owned_launched(key, job)
        if not objects:
            return None
        return max(
            objects,
            key=lambda o: int(
                ((o.get("metadata") or {}).get("labels") or {}).get(ATTEMPT_LABEL, 0)
            ),
        )

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
                # in the foreground: the object stays until its pods are gone, and the next
                # attempt starts only then (reconcile._hand_over)
                left = await self.kube.delete(
                    self.launcher_resource, action.name, ns, propagation="Foreground"
                )
                if left is None:
                    self.launched.get(_key(job), {}).pop(action.name, None)
                else:
                    self.observe_launched("MODIFIED", left, enqueue=False)

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
            self.recorder.publish_phase_counts_soon()
        return updated.get("status") or status

    async def _post_events(self, meta: ObjectMeta, decision: Decision) -> None:
        """Queue the decision's Events for the posters (as client-go's event recorder
        does): launch-critical writes go first, Events follow when the API has room.
        Status already holds the timeline; a full queue drops Events, never blocks.

        One Event per run of Normal entries (Validated, Estimated, Launched → one Event
        with the last one's reason that names the others); every Warning alone."""
        for i, run in enumerate(_event_runs(decision.events)):
            last, earlier = run[-1], run[:-1]
            message = f"{last['type']}: {last['message']}"
            if earlier:
                message += " — after " + "; ".join(f"{e['type']}: {e['message']}" for e in earlier)
            hint = f"{meta.uid}/{last['time']}/{last['type']}/{last['reason']}/{i}"
            body = build_event(
                meta,
                last["reason"],
                message,
                warning=bool(last.get("warning")),
                now=self.clock.now(),
                uid_hint=hint,
            )
            try:
                self._events.put_nowait(body)
            except asyncio.QueueFull:
                metrics.RECONCILE_ERRORS.labels("event").inc()
                log.warning("event queue full; dropped %s for %s", last["reason"], meta.name)

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
        self._waiting.pop(key, None)
        if decision.status == status:
            return
        await self._write_status(key, body, decision.status)
        involved = ObjectMeta.model_construct(name=key[1], namespace=key[0], uid=meta.get("uid"))
        await self._post_events(involved, decision)


def waiting_for_reference(status: dict[str, Any]) -> bool:
    """The stored status says the job waits for a Secret, ConfigMap or IdlePool it names."""
    if status.get("phase", Phase.PENDING) != Phase.PENDING:
        return False
    return any(
        c.get("type") == ConditionType.VALIDATED
        and c.get("status") == "False"
        and c.get("reason") in WAIT_FOR_REFERENCE
        for c in status.get("conditions") or []
    )


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


def _rv(body: dict[str, Any]) -> str | None:
    rv = (body.get("metadata") or {}).get("resourceVersion")
    return str(rv) if rv is not None and str(rv).isdigit() else None


def _key(job: FineTuneJob) -> JobKey:
    return (job.metadata.namespace or "", job.metadata.name)


def _event_runs(entries: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Timeline entries grouped for Events: consecutive Normal entries together, each
    Warning on its own (so that a Warning is never hidden behind a Normal reason)."""
    runs: list[list[dict[str, Any]]] = []
    for entry in entries:
        if entry.get("warning") or not runs or runs[-1][-1].get("warning"):
            runs.append([entry])
        else:
            runs[-1].append(entry)
    return runs
