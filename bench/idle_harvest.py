"""Idle-harvest benchmark: a simulated week on one idle pool, TideTune's admission vs a
naive peer, side by side on the same job stream and the same node reclaims.

The pool: 64 GPUs, open weeknights 22:00–08:00 and all weekend (Asia/Shanghai),
``drainBefore: 10m``. The week runs from Monday 00:00 to the next Monday 00:00 local in
1-minute ticks (seconds are accounted exactly inside a tick).

Jobs: a backlog at the start plus a Poisson stream from three namespaces; 8, 16, 24 or
32 GPUs; 30 minutes to 16 hours of training; demand well above what the pool can
serve, so the pool never runs dry. Every job checkpoints every ``--checkpoint-minutes``
of training (10 by default; a "step" is 10 s, so 60 steps) at a cost of
``--checkpoint-seconds``, and spends ``--startup-seconds`` on every (re)start (pods
scheduled, model loaded, checkpoint restored). Node reclaims arrive as a Poisson process
while the pool is open; each kills one running job (chosen at random), which loses its
progress since its last complete checkpoint and queues again to resume.

Ours: the real :func:`tidetune_operator.admission.plan` and :mod:`tidetune.windows`
with a simulated clock, every tick: resuming first, priority, round-robin across
namespaces, EASY backfill with estimates (each job's runtime estimate is off by a
random factor of 0.8–1.25), no admission with less than one checkpoint interval left,
and drain before close (evicted jobs checkpoint, then stop, losing nothing).

Peer (what a time-unaware batch queue does on the same pool): strict FIFO by queue
time (head-of-line blocking, no backfill), admits whenever the pool is open and the head
fits, no drain: jobs run until the window closes and lose everything since their last
checkpoint; a killed job (window close or reclaim) re-queues at the back (no resume
priority).

Measured, for each: harvest efficiency = GPU-hours spent on training steps that were
kept (checkpointed or finished) ÷ GPU-hours the pool was open; mean queue wait (first
start − submission, over jobs that started); steps lost per reclaim; preemptions (window
suspends or kills + reclaims); jobs finished; GPU-hours share per namespace.

Run: ``python bench/idle_harvest.py [--seed N] [--json]``; deterministic for a seed.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from tidetune.api import IdlePool
from tidetune.windows import schedule_for
from tidetune_operator.admission import Candidate, plan

TICK = 60.0
STEP_SECONDS = 10.0
NAMESPACES = ("team-a", "team-b", "team-c")


@dataclass(frozen=True)
class Config:
    seed: int = 7
    gpus: int = 64
    timezone: str = "Asia/Shanghai"
    drain_before: str = "10m"
    days: int = 7
    backlog: int = 24
    arrivals_per_day: float = 18.0
    checkpoint_minutes: float = 10.0
    checkpoint_seconds: float = 20.0
    startup_seconds: float = 90.0
    reclaims_per_day: float = 8.0


@dataclass(frozen=True)
class JobSpec:
    name: str
    namespace: str
    gpus: int
    priority: int
    submitted: datetime
    work: float  # seconds of training to finish
    estimate_factor: float  # how far off its runtime estimate is


@dataclass
class Job:
    spec: JobSpec
    queued_at: datetime  # FIFO key for the peer; reset when it re-queues
    committed: float = 0.0  # trained seconds kept (checkpointed or finished)
    pending: float = 0.0  # trained seconds since the last complete checkpoint
    state: str = "queued"  # queued | starting | training | checkpointing | finished
    overhead_left: float = 0.0
    stop_after_checkpoint: bool = False
    resuming: bool = False
    first_start: datetime | None = None
    finished_at: datetime | None = None

    @property
    def running(self) -> bool:
        return self.state in ("starting", "training", "checkpointing")


@dataclass
class Tally:
    kept_gpu_s: float = 0.0
    lost_gpu_s: float = 0.0
    held_gpu_s: float = 0.0
    reclaims: int = 0
    reclaim_lost_steps: float = 0.0
    window_preemptions: int = 0
    window_lost_steps: float = 0.0
    kept_by_ns: dict[str, float] = field(default_factory=lambda: dict.fromkeys(NAMESPACES, 0.0))


def make_pool(cfg: Config) -> IdlePool:
    return IdlePool.model_validate(
        {
            "metadata": {"name": "night-a100"},
            "spec": {
                "gpus": cfg.gpus,
                "timezone": cfg.timezone,
                "drainBefore": cfg.drain_before,
                "windows": [
                    {"days": ["Mon", "Tue", "Wed", "Thu", "Fri"], "start": "22:00", "end": "08:00"},
                    {"days": ["Sat", "Sun"], "start": "00:00", "end": "24:00"},
                ],
            },
        }
    )


def week_start(cfg: Config) -> datetime:
    # Monday 2026-11-23 00:00 in the pool's zone
    return datetime(2026, 11, 23, tzinfo=ZoneInfo(cfg.timezone)).astimezone(UTC)


def make_jobs(cfg: Config, start: datetime) -> list[JobSpec]:
    rng = random.Random(cfg.seed)
    specs: list[JobSpec] = []
    t = 0.0
    horizon = cfg.days * 86400.0
    n = 0
    while True:
        if n < cfg.backlog:
            at = n * 60.0  # the backlog arrives in the first minutes
            ns = NAMESPACES[0] if n < cfg.backlog * 2 // 3 else rng.choice(NAMESPACES)
        else:
            t += rng.expovariate(cfg.arrivals_per_day / 86400.0)
            if t >= horizon:
                break
            at = t
            ns = rng.choice(NAMESPACES)
        hours = math.exp(rng.uniform(math.log(0.5), math.log(16.0)))
        specs.append(
            JobSpec(
                name=f"job-{n:03d}",
                namespace=ns,
                gpus=rng.choice((8, 8, 16, 16, 24, 32)),
                priority=1 if rng.random() < 0.1 else 0,
                submitted=start + timedelta(seconds=round(at / TICK) * TICK),
                work=hours * 3600.0,
                estimate_factor=rng.uniform(0.8, 1.25),
            )
        )
        n += 1
    return specs


def make_reclaims(cfg: Config, start: datetime, pool: IdlePool) -> list[datetime]:
    """Reclaim instants (whole minutes) while the pool is open."""
    rng = random.Random(cfg.seed * 7919 + 1)
    out: list[datetime] = []
    for opens, closes in schedule_for(pool).open_intervals(start, start + timedelta(days=cfg.days)):
        t = opens
        while True:
            t += timedelta(seconds=rng.expovariate(cfg.reclaims_per_day / 86400.0))
            if t >= closes:
                break
            out.append(start + timedelta(minutes=math.floor((t - start).total_seconds() / 60)))
    return out


class Sim:
    """One policy on the shared stream. ``decide(now)`` starts and stops jobs."""

    def __init__(self, cfg: Config, pool: IdlePool, specs: Sequence[JobSpec], seed: int) -> None:
        self.cfg = cfg
        self.pool = pool
        self.specs = sorted(specs, key=lambda s: s.submitted)
        self.jobs: list[Job] = []
        self.tally = Tally()
        self.rng = random.Random(seed)
        self.interval = cfg.checkpoint_minutes * 60.0
        self._next_spec = 0

    # -- mechanics shared by both policies --------------------------------------------

    def arrive(self, now: datetime) -> None:
        while self._next_spec < len(self.specs) and self.specs[self._next_spec].submitted <= now:
            spec = self.specs[self._next_spec]
            self.jobs.append(Job(spec=spec, queued_at=spec.submitted))
            self._next_spec += 1

    def start(self, job: Job, now: datetime) -> None:
        job.state = "starting"
        job.overhead_left = self.cfg.startup_seconds
        job.stop_after_checkpoint = False
        if job.first_start is None:
            job.first_start = now

    def kill(self, job: Job, now: datetime) -> float:
        """The job's pods die: progress since the last complete checkpoint is lost."""
        lost = job.pending
        self.tally.lost_gpu_s += lost * job.spec.gpus
        job.pending = 0.0
        job.state = "queued"
        job.resuming = job.committed > 0
        job.queued_at = now
        return lost / STEP_SECONDS

    def suspend(self, job: Job) -> None:
        """Checkpoint, then stop (the drain): nothing is lost."""
        if job.state == "starting" or (job.state == "training" and job.pending == 0):
            job.state = "queued"
            job.resuming = job.committed > 0
        elif job.state == "training":
            job.state = "checkpointing"
            job.overhead_left = self.cfg.checkpoint_seconds
            job.stop_after_checkpoint = True
        else:  # already checkpointing
            job.stop_after_checkpoint = True

    def reclaim(self, now: datetime) -> None:
        running = sorted((j for j in self.jobs if j.running), key=lambda j: j.spec.name)
        if not running:
            return
        victim = self.rng.choice(running)
        self.tally.reclaims += 1
        self.tally.reclaim_lost_steps += self.kill(victim, now)

    def advance(self, now: datetime) -> None:
        for job in self.jobs:
            if not job.running:
                continue
            budget = TICK
            while budget > 1e-9 and job.running:
                if job.state in ("starting", "checkpointing"):
                    used = min(budget, job.overhead_left)
                    job.overhead_left -= used
                    budget -= used
                    self.tally.held_gpu_s += used * job.spec.gpus
                    if job.overhead_left <= 1e-9:
                        if job.state == "checkpointing":
                            self._commit(job)
                            if job.stop_after_checkpoint:
                                job.state = "queued"
                                job.resuming = True
                                job.queued_at = now
                                break
                        job.state = "training"
                    continue
                left = job.spec.work - job.committed - job.pending
                used = min(budget, self.interval - job.pending, left)
                job.pending += used
                budget -= used
                self.tally.held_gpu_s += used * job.spec.gpus
                if job.committed + job.pending >= job.spec.work - 1e-6:
                    self._commit(job)  # the final save is part of the export
                    job.state = "finished"
                    job.finished_at = now + timedelta(seconds=TICK - budget)
                elif job.pending >= self.interval - 1e-6:
                    job.state = "checkpointing"
                    job.overhead_left = self.cfg.checkpoint_seconds

    def _commit(self, job: Job) -> None:
        self.tally.kept_gpu_s += job.pending * job.spec.gpus
        self.tally.kept_by_ns[job.spec.namespace] += job.pending * job.spec.gpus
        job.committed += job.pending
        job.pending = 0.0

    def decide(self, now: datetime) -> None:
        raise NotImplementedError

    # -- results ----------------------------------------------------------------------

    def result(self, open_gpu_s: float, end: datetime) -> dict[str, Any]:
        t = self.tally
        started = [j for j in self.jobs if j.first_start is not None]
        waits = [
            (j.first_start - j.spec.submitted).total_seconds() / 60
            for j in started
            if j.first_start
        ]
        never = [
            (end - j.spec.submitted).total_seconds() / 60
            for j in self.jobs
            if j.first_start is None
        ]
        total_kept = sum(t.kept_by_ns.values()) or 1.0
        return {
            "harvestEfficiency": round(t.kept_gpu_s / open_gpu_s, 4),
            "utilization": round(t.held_gpu_s / open_gpu_s, 4),
            "gpuHoursOpen": round(open_gpu_s / 3600, 1),
            "gpuHoursKept": round(t.kept_gpu_s / 3600, 1),
            "gpuHoursLost": round(t.lost_gpu_s / 3600, 1),
            "meanQueueWaitMinutes": round(sum(waits) / len(waits), 1) if waits else None,
            "jobsNeverStarted": len(never),
            "stepsLostPerReclaim": round(t.reclaim_lost_steps / t.reclaims, 1)
            if t.reclaims
            else 0.0,
            "reclaims": t.reclaims,
            "windowPreemptions": t.window_preemptions,
            "stepsLostAtWindowClose": round(t.window_lost_steps, 1),
            "preemptions": t.reclaims + t.window_preemptions,
            "jobsSubmitted": len(self.jobs),
            "jobsStarted": len(started),
            "jobsFinished": sum(1 for j in self.jobs if j.state == "finished"),
            "shareByNamespace": {ns: round(v / total_kept, 3) for ns, v in t.kept_by_ns.items()},
        }


class Ours(Sim):
    """The real admission plan, every tick."""

    def candidates(self, now: datetime) -> list[Candidate]:
        cfg = self.cfg
        per_interval = self.interval + cfg.checkpoint_seconds
        out = []
        for j in self.jobs:
            if j.state == "finished":
                continue
            left = j.spec.work - j.committed - j.pending
            wall = left * per_interval / self.interval + (0 if j.running else cfg.startup_seconds)
            out.append(
                Candidate(
                    namespace=j.spec.namespace,
                    name=j.spec.name,
                    gpus=j.spec.gpus,
                    priority=j.spec.priority,
                    created=j.spec.submitted,
                    running=j.running,
                    resuming=j.resuming and not j.running,
                    checkpoint_interval_seconds=per_interval,
                    remaining_seconds=wall * j.spec.estimate_factor,
                )
            )
        return out

    def decide(self, now: datetime) -> None:
        verdicts = plan(self.pool, self.candidates(now), now)
        by_key = {(j.spec.namespace, j.spec.name): j for j in self.jobs}
        for key, verdict in verdicts.items():
            job = by_key[key]
            if job.running and verdict.evict is not None:
                if not job.stop_after_checkpoint:
                    self.tally.window_preemptions += 1
                self.suspend(job)
            elif not job.running and verdict.admitted:
                self.start(job, now)


class Peer(Sim):
    """Strict FIFO, no drain, no resume priority."""

    def decide(self, now: datetime) -> None:
        if not schedule_for(self.pool).is_open(now):
            for job in self.jobs:
                if job.running:
                    self.tally.window_preemptions += 1
                    self.tally.window_lost_steps += self.kill(job, now)
            return
        free = self.cfg.gpus - sum(j.spec.gpus for j in self.jobs if j.running)
        queue = sorted(
            (j for j in self.jobs if j.state == "queued"),
            key=lambda j: (j.queued_at, j.spec.submitted, j.spec.name),
        )
        for job in queue:
            if job.spec.gpus > free:
                break  # head-of-line blocking
            free -= job.spec.gpus
            self.start(job, now)


def simulate(cfg: Config) -> dict[str, Any]:
    started = time.perf_counter()
    pool = make_pool(cfg)
    start = week_start(cfg)
    end = start + timedelta(days=cfg.days)
    specs = make_jobs(cfg, start)
    reclaims = make_reclaims(cfg, start, pool)
    open_gpu_s = schedule_for(pool).open_seconds(start, end) * cfg.gpus
    sims: dict[str, Sim] = {
        "ours": Ours(cfg, pool, specs, cfg.seed + 1),
        "peer": Peer(cfg, pool, specs, cfg.seed + 1),
    }
    reclaim_at: dict[datetime, int] = {}
    for t in reclaims:
        reclaim_at[t] = reclaim_at.get(t, 0) + 1
    now = start
    while now < end:
        for sim in sims.values():
            sim.arrive(now)
            for _ in range(reclaim_at.get(now, 0)):
                sim.reclaim(now)
            sim.decide(now)
            sim.advance(now)
        now += timedelta(seconds=TICK)
    for sim in sims.values():  # nothing should be left running: the week ends on a close
        for job in sim.jobs:
            if job.running:
                sim.kill(job, end)
    ours = sims["ours"].result(open_gpu_s, end)
    peer = sims["peer"].result(open_gpu_s, end)
    demand = sum(s.work * s.gpus for s in specs) / 3600
    return {
        **ours,
        "peer": peer,
        "ratio": round(ours["harvestEfficiency"] / peer["harvestEfficiency"], 3),
        "setup": {
            "seed": cfg.seed,
            "pool": f"{cfg.gpus} GPUs, weeknights 22:00-08:00 + weekends, {cfg.timezone}, "
            f"drainBefore {cfg.drain_before}",
            "days": cfg.days,
            "demandGpuHours": round(demand, 1),
            "checkpointEveryMinutes": cfg.checkpoint_minutes,
            "checkpointSeconds": cfg.checkpoint_seconds,
            "startupSeconds": cfg.startup_seconds,
            "stepSeconds": STEP_SECONDS,
            "reclaimsPerOpenDay": cfg.reclaims_per_day,
            "seconds": round(time.perf_counter() - started, 2),
        },
    }


def _table(r: dict[str, Any]) -> str:
    p = r["peer"]
    rows: list[tuple[str, str, Callable[[Any], str]]] = [
        ("harvest efficiency", "harvestEfficiency", lambda v: f"{v:.3f}"),
        ("GPU utilization (held/open)", "utilization", lambda v: f"{v:.3f}"),
        ("GPU-hours kept", "gpuHoursKept", lambda v: f"{v:.0f}"),
        ("GPU-hours lost", "gpuHoursLost", lambda v: f"{v:.0f}"),
        ("mean queue wait (min)", "meanQueueWaitMinutes", lambda v: f"{v:.0f}"),
        ("steps lost per reclaim", "stepsLostPerReclaim", lambda v: f"{v:.1f}"),
        ("reclaims", "reclaims", str),
        ("window preemptions", "windowPreemptions", str),
        ("steps lost at window close", "stepsLostAtWindowClose", lambda v: f"{v:.0f}"),
        ("jobs started / submitted", "jobsStarted", str),
        ("jobs finished", "jobsFinished", str),
    ]
    s = r["setup"]
    out = [
        f"idle harvest bench: {s['pool']}; {s['days']} days; demand {s['demandGpuHours']:.0f} "
        f"GPU-h vs {r['gpuHoursOpen']:.0f} GPU-h open; checkpoint every "
        f"{s['checkpointEveryMinutes']:g} min ({s['checkpointSeconds']:g} s), "
        f"start-up {s['startupSeconds']:g} s; seed {s['seed']}",
        "",
        f"{'':30}{'ours':>12}{'peer (FIFO)':>14}",
    ]
    for label, key, fmt in rows:
        out.append(f"{label:30}{fmt(r[key]):>12}{fmt(p[key]):>14}")
    share = "  ".join(f"{ns} {v:.2f}" for ns, v in r["shareByNamespace"].items())
    peer_share = "  ".join(f"{ns} {v:.2f}" for ns, v in p["shareByNamespace"].items())
    out += [
        f"{'GPU-hours share, ours':30}{share}",
        f"{'GPU-hours share, peer':30}{peer_share}",
        "",
        f"harvest efficiency ours/peer: {r['ratio']:.3f}x   (goal for ours: >= 0.90)",
        f"simulated in {s['seconds']:.1f} s",
    ]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    d = Config()
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--days", type=int, default=d.days)
    parser.add_argument("--checkpoint-minutes", type=float, default=d.checkpoint_minutes)
    parser.add_argument("--checkpoint-seconds", type=float, default=d.checkpoint_seconds)
    parser.add_argument("--startup-seconds", type=float, default=d.startup_seconds)
    parser.add_argument("--reclaims-per-day", type=float, default=d.reclaims_per_day)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    a = parser.parse_args(argv)
    cfg = Config(
        seed=a.seed,
        days=a.days,
        checkpoint_minutes=a.checkpoint_minutes,
        checkpoint_seconds=a.checkpoint_seconds,
        startup_seconds=a.startup_seconds,
        reclaims_per_day=a.reclaims_per_day,
    )
    result = simulate(cfg)
    sys.stdout.write((json.dumps(result, indent=2) if a.json else _table(result)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
