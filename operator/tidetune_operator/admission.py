"""Admission to idle pools: who may run in a pool now, who waits, who must drain.

INTERFACE (the controller depends on it; keep it stable):

- :class:`Admission` — the verdict for one job (see fields).
- :class:`Candidate` — what admission needs to know about one job that names a pool.
- :func:`plan` — verdicts for every candidate of one pool at one instant. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from tidetune.api import Reason


@dataclass(frozen=True)
class Admission:
    """What admission says about one job now."""

    admitted: bool
    reason: Reason = Reason.ADMITTED
    message: str = ""
    #: set while the job must not run (its pool's window is closing or closed):
    #: the controller suspends it (the trainer checkpoints) with this reason
    evict: Reason | None = None


ADMIT_NOW = Admission(
    admitted=True, reason=Reason.ADMITTED, message="no pool: runs on any capacity"
)


@dataclass(frozen=True)
class Candidate:
    """One job that names a pool."""

    namespace: str
    name: str
    gpus: int  # nodes × gpusPerNode
    priority: int
    created: datetime
    #: holding capacity now: launched and not suspended (Running, Exporting, starting)
    running: bool
    #: was suspended by a closing window (or preempted) and has a checkpoint: it resumes
    #: ahead of newer jobs when the pool opens again
    resuming: bool = False
    #: estimated wall-clock seconds of one checkpoint interval, if known (a job is not
    #: admitted when less than this remains in the window)
    checkpoint_interval_seconds: float | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)
