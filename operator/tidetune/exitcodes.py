"""Exit codes of the TideTune trainer, shared by the trainer, the launchers and the operator.

The trainer (``python -m tidetune_trainer``, run under ``torchrun`` through
``python -m tidetune_trainer.launch``) exits with one of these codes; the operator and
``tidetune run`` classify a finished attempt by it:

==========  ===========  ==============================================================
code        name         meaning and what the operator does
==========  ===========  ==============================================================
0           SUCCEEDED    training finished and artifacts + manifest were written
1           CRASHED      an unexpected error (a bug, out of memory, a lost peer); may be
                         retried up to a limit, resuming from the last checkpoint
65          BAD_INPUT    the spec or the data cannot be trained on (malformed lines, a
                         missing column, an unsupported option on this hardware); a
                         retry cannot help: fail the job and show the termination message
74          STORAGE      the run/output location or the model could not be read or
                         written (network, credentials, a missing bucket); may heal
85          PREEMPTED    SIGTERM (or a stop request) arrived; a checkpoint of the last
                         finished step was written before exiting, so the job can be
                         resumed exactly where it stopped
==========  ===========  ==============================================================

Why 85: 128+N is what a shell reports for a process killed by signal N (143 = SIGTERM),
so a "preempted" code must stay below 128 to be distinguishable from a hard kill; 65 and
74 follow BSD ``sysexits.h`` (EX_DATAERR, EX_IOERR). Note that the Kubeflow training
operator's ``restartPolicy: ExitCode`` treats 1–127 as permanent, so launchers classify
attempts with :func:`classify` rather than relying on that policy.

``torchrun`` itself always exits 1 when any worker fails, whatever the worker's code;
``tidetune_trainer.launch`` (the container entry point) collects the per-rank codes and
exits with the most meaningful one (see :func:`combine`).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Final

SUCCEEDED: Final = 0
CRASHED: Final = 1
BAD_INPUT: Final = 65
STORAGE: Final = 74
PREEMPTED: Final = 85

#: Codes a shell or container runtime reports for a process killed by a signal.
SIGNAL_BASE: Final = 128


class Outcome(StrEnum):
    """How an attempt ended, derived from its exit code."""

    SUCCEEDED = "Succeeded"
    PREEMPTED = "Preempted"
    BAD_INPUT = "BadInput"
    STORAGE = "StorageError"
    KILLED = "Killed"
    CRASHED = "Crashed"

    @property
    def retryable(self) -> bool:
        """Whether running the attempt again (resuming) may succeed."""
        return self in (Outcome.PREEMPTED, Outcome.STORAGE, Outcome.KILLED, Outcome.CRASHED)


def classify(code: int | None) -> Outcome:
    """Map a process exit code to an :class:`Outcome`.

    Negative codes (Python's ``Popen.returncode`` for a signal) and codes above 128 mean
    the process was killed by a signal without checkpointing (``KILLED``). ``None``
    (still running / unknown) is treated as ``CRASHED``.
    """
    if code == SUCCEEDED:
        return Outcome.SUCCEEDED
    if code == PREEMPTED:
        return Outcome.PREEMPTED
    if code == BAD_INPUT:
        return Outcome.BAD_INPUT
    if code == STORAGE:
        return Outcome.STORAGE
    if code is not None and (code < 0 or code > SIGNAL_BASE):
        return Outcome.KILLED
    return Outcome.CRASHED


#: Which code wins when ranks disagree: a bad input explains everything else, then a
#: crash (its peers usually die of the lost connection), then storage, then preemption.
_PRIORITY: Final = (BAD_INPUT, CRASHED, STORAGE, PREEMPTED, SUCCEEDED)


def combine(codes: Iterable[int]) -> int:
    """The one exit code that describes several processes' codes (e.g. all ranks).

    Returns ``SUCCEEDED`` only if every code is 0 (and for an empty input). Unknown
    non-zero codes (signals, other errors) count as ``CRASHED``.
    """
    seen = set()
    for c in codes:
        seen.add(c if c in _PRIORITY else CRASHED)
    for c in _PRIORITY:
        if c in seen:
            return c
    return SUCCEEDED


def describe(code: int | None) -> str:
    """A short human description of an exit code, for timelines and logs."""
    outcome = classify(code)
    if outcome is Outcome.KILLED and code is not None:
        sig = -code if code < 0 else code - SIGNAL_BASE
        return f"killed by signal {sig} before it could checkpoint"
    return {
        Outcome.SUCCEEDED: "training succeeded",
        Outcome.PREEMPTED: "preempted: checkpointed and stopped; resume to continue",
        Outcome.BAD_INPUT: "bad input: fix the spec or the data (see the message)",
        Outcome.STORAGE: "storage error: the run, output or model location failed",
        Outcome.CRASHED: f"trainer crashed (exit code {code})",
        Outcome.KILLED: "killed",
    }[outcome]
