"""The trainer's exceptions and how each maps to an exit code (:mod:`tidetune.exitcodes`).

``TrainerError``
    ├── ``BadInputError``   — the spec/data/model cannot be trained on (exit 65)
    │     └── ``UnsupportedError`` — a valid spec asks for what this trainer or this
    │                                 hardware cannot do (GRPO/PPO, 4-bit without CUDA)
    ├── ``CheckpointError`` — a checkpoint exists but cannot be resumed (exit 65)
    └── ``Preempted``       — a stop was requested and a checkpoint written (exit 85)

Errors of the data side (``tidetune_trainer.data.errors.DataError``) are bad input too;
``tidetune.storage.StorageError`` maps to exit 74. Anything else is a crash (exit 1).
"""

from __future__ import annotations

from tidetune import exitcodes


class TrainerError(Exception):
    """Base of the trainer's own errors; the message says what to change."""

    exit_code: int = exitcodes.CRASHED


class BadInputError(TrainerError):
    """The spec, the data or the model cannot be trained on; retrying cannot help."""

    exit_code = exitcodes.BAD_INPUT


class UnsupportedError(BadInputError):
    """A valid spec asks for something this trainer or this hardware does not support."""


class CheckpointError(BadInputError):
    """A complete checkpoint exists but does not fit this run (other world size, spec)."""


class Preempted(TrainerError):
    """Training stopped on request (SIGTERM, suspend) after writing a checkpoint."""

    exit_code = exitcodes.PREEMPTED

    def __init__(self, step: int, checkpoint_uri: str | None) -> None:
        self.step = step
        self.checkpoint_uri = checkpoint_uri
        where = f"; checkpoint {checkpoint_uri}" if checkpoint_uri else ""
        super().__init__(f"preempted at step {step}{where}; run again to resume")


def exit_code_for(err: BaseException) -> int:
    """The exit code for an exception that ended the trainer."""
    if isinstance(err, TrainerError):
        return err.exit_code
    from tidetune_trainer.data.errors import DataError
    from tidetune_trainer.tiny import ModelLoadError

    if isinstance(err, DataError | ModelLoadError):
        return exitcodes.BAD_INPUT
    from tidetune.storage import StorageError

    if isinstance(err, StorageError):
        return exitcodes.STORAGE
    try:
        from pydantic import ValidationError
    except ImportError:  # pragma: no cover
        return exitcodes.CRASHED
    if isinstance(err, ValidationError):
        return exitcodes.BAD_INPUT
    return exitcodes.CRASHED
