"""Checkpoints in the run location: written completely or not at all, resumed exactly.

Layout under the run URI (any :mod:`tidetune.storage` store: ``file://``, ``pvc://``,
``s3://``)::

    checkpoints/step-00000020/
        trainer_state.json        step, epoch, data position, tokens, world size, spec
                                  fingerprint (see :class:`TrainerState`)
        state/…                   the engine's state: weights that train, optimizer
                                  (ZeRO partitions under DeepSpeed), per-rank RNG and
                                  scheduler (see ``Engine.save_state``)
        model/…                   a loadable model (LoRA adapter or full weights) and
                                  the tokenizer, what ``exportCheckpoints`` exports
        COMPLETE                  written last: JSON with every file's size

Protocol: every rank writes its part into a node-local staging directory; each node's
local rank 0 uploads it; after a barrier, rank 0 writes ``COMPLETE``. A checkpoint
without ``COMPLETE`` is ignored on resume and deleted by retention, so a checkpoint cut
short by a kill is never resumed. For a local store (``file://``, ``pvc://``) the staging
directory *is* the final directory and nothing is copied.

Retention keeps the newest ``keep`` complete checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tidetune.storage import LocalStore, ObjectStore
from tidetune_trainer.errors import CheckpointError

CHECKPOINTS = "checkpoints"
COMPLETE = "COMPLETE"
TRAINER_STATE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def step_dir(step: int) -> str:
    """The directory name of a checkpoint (zero-padded so names sort by step)."""
    return f"step-{step:08d}"


@dataclass
class TrainerState:
    """Where training is: enough to continue exactly as if never interrupted."""

    step: int = 0
    epoch: int = 0
    #: the next micro-batch (within ``epoch``) to train on
    micro_index: int = 0
    trained_tokens: int = 0
    total_steps: int = 0
    world_size: int = 1
    fingerprint: str = ""
    #: the base model and data it trained on (``TrainConfig.inputs``), to name a change
    inputs: dict[str, str] = field(default_factory=dict)
    elapsed_seconds: float = 0.0
    last_eval_loss: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainerState:
        raw = json.loads(text)
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        return cls(**known)


@dataclass(frozen=True)
class CheckpointInfo:
    """A complete checkpoint in the run location."""

    step: int
    uri: str
    key: str
    time: str


def utcnow() -> str:
    """Now, as an RFC 3339 UTC timestamp."""
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class CheckpointManager:
    """Saves, lists, prunes and fetches checkpoints under ``<run>/checkpoints/``.

    ``barrier`` is the process group's barrier (a no-op for one process); ranks are the
    torchrun ranks. ``scratch`` is a node-local directory for staging remote stores.
    """

    def __init__(
        self,
        store: ObjectStore,
        run_key: str,
        *,
        rank: int = 0,
        local_rank: int = 0,
        barrier: Callable[[], None] = lambda: None,
        scratch: Path | None = None,
    ) -> None:
        self.store = store
        self.run_key = run_key
        self.rank = rank
        self.local_rank = local_rank
        self.barrier = barrier
        digest = hashlib.sha256(store.uri(run_key).encode()).hexdigest()[:12]
        base = scratch or Path(os.environ.get("TIDETUNE_SCRATCH_DIR") or tempfile.gettempdir())
        self.scratch = base / f"tidetune-{digest}"

    # ------------------------------------------------------------------ naming

    @property
    def is_local(self) -> bool:
        return isinstance(self.store, LocalStore)

    def key(self, step: int) -> str:
        return ObjectStore.join(self.run_key, CHECKPOINTS, step_dir(step))

    def uri(self, step: int) -> str:
        return self.store.uri(self.key(step))

    def local_dir(self, step: int) -> Path:
        """Where this node writes (or reads) the checkpoint's files."""
        if isinstance(self.store, LocalStore):
            return self.store.path(self.key(step))
        return self.scratch / step_dir(step)

    # ------------------------------------------------------------------ listing

    def _steps(self) -> dict[int, set[str]]:
        """step → the file names directly present (COMPLETE among them or not)."""
        prefix = ObjectStore.join(self.run_key, CHECKPOINTS)
        found: dict[int, set[str]] = {}
        for k in self.store.list(prefix):
            rel = k[len(prefix) :].lstrip("/")
            head, _, rest = rel.partition("/")
            m = _STEP_DIR.match(head)
            if m:
                found.setdefault(int(m.group(1)), set()).add(rest)
        return found

    def complete(self) -> list[CheckpointInfo]:
        """Complete checkpoints, oldest first."""
        out = []
        for step, files in sorted(self._steps().items()):
            if COMPLETE in files:
                try:
                    meta = json.loads(
                        self.store.read_text(ObjectStore.join(self.key(step), COMPLETE))
                    )
                    when = str(meta.get("time", ""))
                except (ValueError, OSError):
                    when = ""
                out.append(CheckpointInfo(step, self.uri(step), self.key(step), when))
        return out

    def latest(self) -> CheckpointInfo | None:
        """The newest complete checkpoint, or None."""
        done = self.complete()
        return done[-1] if done else None

    # ------------------------------------------------------------------ saving

    def begin(self, step: int) -> Path:
        """Prepare an empty directory for step ``step`` on every node. Collective."""
        if self.rank == 0 and self._steps().get(step) is not None:
            self.store.delete(self.key(step))  # a half-written one from a killed attempt
        target = self.local_dir(step)
        if self.local_rank == 0 and not self.is_local and target.exists():
            shutil.rmtree(target)
        self.barrier()
        target.mkdir(parents=True, exist_ok=True)
        return target

    def commit(self, step: int, state: TrainerState, keep: int) -> CheckpointInfo:
        """Upload (remote stores), then write ``trainer_state.json`` and ``COMPLETE`` last,
        then prune to ``keep``. Collective; call after every rank has written its files."""
        self.barrier()
        local = self.local_dir(step)
        if not self.is_local and self.local_rank == 0:
            self.store.upload_dir(local, self.key(step))
        self.barrier()
        info = CheckpointInfo(step, self.uri(step), self.key(step), utcnow())
        if self.rank == 0:
            self.store.write_text(ObjectStore.join(self.key(step), TRAINER_STATE), state.to_json())
            files = self.store.list(self.key(step))
            sizes = {k[len(self.key(step)) + 1 :]: self.store.size(k) for k in files}
            marker = {"step": step, "time": info.time, "files": sizes}
            self.store.write_text(
                ObjectStore.join(self.key(step), COMPLETE), json.dumps(marker, indent=1)
            )
            self.prune(keep)
        if not self.is_local and self.local_rank == 0:
            shutil.rmtree(local, ignore_errors=True)
        self.barrier()
        return info

    def prune(self, keep: int) -> list[int]:
        """Delete all but the newest ``keep`` complete checkpoints, and every incomplete
        one older than the newest complete one. Rank 0 only. Returns the deleted steps."""
        steps = self._steps()
        done = sorted(s for s, f in steps.items() if COMPLETE in f)
        newest = done[-1] if done else -1
        doomed = set(done[:-keep] if keep > 0 else done)
        doomed |= {s for s, f in steps.items() if COMPLETE not in f and s < newest}
        for s in sorted(doomed):
            self.store.delete(self.key(s))
        return sorted(doomed)

    # ------------------------------------------------------------------ loading

    def fetch(self, info: CheckpointInfo) -> tuple[Path, TrainerState]:
        """Make the checkpoint's files available on this node and read its trainer state.
        Collective. Raises :class:`CheckpointError` if it has no trainer state."""
        local = self.local_dir(info.step)
        if not self.is_local and self.local_rank == 0:
            if local.exists():
                shutil.rmtree(local)
            t = time.monotonic()
            self.store.download_dir(info.key, local)
            _ = time.monotonic() - t
        self.barrier()
        state_file = local / TRAINER_STATE
        if not state_file.exists():
            raise CheckpointError(f"{info.uri}: complete but without {TRAINER_STATE}; delete it")
        return local, TrainerState.from_json(state_file.read_text())

    def release(self, info: CheckpointInfo) -> None:
        """Drop the local copy of a fetched remote checkpoint. Collective."""
        self.barrier()
        if not self.is_local and self.local_rank == 0:
            shutil.rmtree(self.local_dir(info.step), ignore_errors=True)
