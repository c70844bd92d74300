"""The trainer ↔ operator file contract: what the trainer writes and its readers (the
operator, ``tidetune run``, the job commands) read. Where the files live and what they
are called is :mod:`tidetune.layout`; what is in them is here, once, for both sides.

``<run>/progress.json`` — :class:`ProgressDocument`, rewritten on every logging step;
its ``state`` is a :class:`RunStateName`. Readers parse it with
:meth:`RunState.from_progress`, which tolerates missing and malformed fields (a reader
must never fail on a half-written or older document).

``<run>/estimate.json`` — :class:`EstimateDocument`: what the trainer *counted* at start
(training tokens over the whole run, the model's parameters, the devices). It carries no
price: whoever owns the job's status prices it with :func:`price_count` — the operator
with its configured tables and the pool's GPU type, ``tidetune run`` with the defaults —
so a custom price table or a pool's GPU type is never replaced by a second pricing.

``<root>/manifest.json`` — :class:`ManifestDocument`, written last by the trainer's
export: every artifact with its files (``path``, ``uri``, ``sizeBytes``, ``sha256``). An
artifact's ``sha256`` follows :func:`artifact_digest`. A location without the manifest is
an incomplete export.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, NotRequired, TypedDict

from tidetune.estimate import EstimateError, EstimateTables, estimate_for_spec

__all__ = [
    "FINAL_ARTIFACT",
    "MANIFEST_API_VERSION",
    "MANIFEST_KIND",
    "MERGED_ARTIFACT",
    "METRICS_ARTIFACT",
    "ArtifactRecord",
    "ArtifactStatus",
    "CheckpointRecord",
    "EstimateDocument",
    "FileRecord",
    "ManifestDocument",
    "ProgressDocument",
    "RunState",
    "RunStateName",
    "artifact_digest",
    "checkpoint_artifact",
    "default_model_artifact",
    "model_artifacts",
    "price_count",
]


# --------------------------------------------------------------------------- progress.json


class RunStateName(StrEnum):
    """``progress.json``'s ``state``."""

    STARTING = "starting"
    RUNNING = "running"
    CHECKPOINTING = "checkpointing"
    PREEMPTED = "preempted"
    EXPORTING = "exporting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class CheckpointRecord(TypedDict):
    step: int
    uri: str
    time: NotRequired[str]


class ArtifactStatus(TypedDict):
    """One artifact as ``status.artifacts`` (and ``progress.json``) list it."""

    name: str
    uri: str
    sizeBytes: int
    sha256: str


class ProgressDocument(TypedDict, total=False):
    state: str
    step: int
    totalSteps: int
    epoch: float
    percent: float
    trainedTokens: int
    eta: str | None
    etaSeconds: float | None
    updatedAt: str
    #: the latest values: trainLoss, evalLoss, learningRate, tokensPerSecond, gradNorm, …
    metrics: dict[str, Any]
    checkpoints: list[CheckpointRecord]
    artifacts: list[ArtifactStatus]
    #: this trainer run's id, the pod it runs in (rank 0's), the step it resumed from
    session: str
    pod: str
    resumedFrom: int | None
    message: str | None
    #: the trainer's exit code (:mod:`tidetune.exitcodes`), once it knows it
    exitCode: int


@dataclass(frozen=True)
class RunState:
    """What the trainer last wrote to ``progress.json`` (and ``estimate.json``)."""

    state: str | None = None
    step: int = 0
    total_steps: int | None = None
    epoch: float = 0.0
    percent: float = 0.0
    trained_tokens: float = 0.0
    eta: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    message: str | None = None
    exit_code: int | None = None
    estimate: EstimateDocument | None = None
    session: str | None = None
    pod: str | None = None
    resumed_from: int | None = None

    @classmethod
    def from_progress(
        cls, progress: Mapping[str, Any], estimate_doc: Mapping[str, Any] | None = None
    ) -> RunState:
        def num(key: str, default: float = 0.0) -> float:
            value = progress.get(key)
            return (
                float(value) if isinstance(value, int | float) and math.isfinite(value) else default
            )

        total = progress.get("totalSteps")
        code = progress.get("exitCode")
        return cls(
            state=progress.get("state") if isinstance(progress.get("state"), str) else None,
            step=int(num("step")),
            total_steps=int(total) if isinstance(total, int | float) else None,
            epoch=num("epoch"),
            percent=min(100.0, max(0.0, num("percent"))),
            trained_tokens=num("trainedTokens"),
            eta=progress.get("eta") if isinstance(progress.get("eta"), str) else None,
            metrics=dict(progress.get("metrics") or {}),
            checkpoints=[c for c in progress.get("checkpoints") or [] if isinstance(c, dict)],
            message=progress.get("message") if isinstance(progress.get("message"), str) else None,
            exit_code=int(code) if isinstance(code, int) else None,
            session=progress.get("session") if isinstance(progress.get("session"), str) else None,
            pod=progress.get("pod") if isinstance(progress.get("pod"), str) else None,
            resumed_from=(
                int(progress["resumedFrom"])
                if isinstance(progress.get("resumedFrom"), int)
                else None
            ),
            estimate=EstimateDocument(**estimate_doc) if estimate_doc else None,  # type: ignore[typeddict-item]
        )


# --------------------------------------------------------------------------- estimate.json


class EstimateDocument(TypedDict, total=False):
    """What the trainer counted before training (no price: see :func:`price_count`)."""

    #: tokens over the whole run (all epochs, or the maxSteps share)
    trainTokens: int
    tokensPerEpoch: int
    modelParams: int
    #: devices the run trains on (a CPU run: its processes)
    devices: int
    #: counted on a seeded sample of a large dataset and scaled up
    sampled: bool


def price_count(
    doc: Mapping[str, Any], spec: Any, gpu_type: str, tables: EstimateTables
) -> dict[str, Any] | None:
    """``status.estimate`` for the trainer's count: ``{trainTokens, gpuHours, cost,
    currency, gpuType, sampled}`` priced on ``gpu_type`` with ``tables``; None when the
    document is not a count (or the device type is not in the tables)."""
    tokens, params = doc.get("trainTokens"), doc.get("modelParams")
    if not isinstance(tokens, int | float) or not isinstance(params, int | float):
        return None
    devices = doc.get("devices")
    try:
        est = estimate_for_spec(
            spec,
            int(tokens),
            int(params),
            gpu_type,
            tables,
            devices=int(devices) if isinstance(devices, int | float) and devices > 0 else None,
        )
    except EstimateError:
        return None
    return {**est.to_status(), "gpuType": est.device_type, "sampled": bool(doc.get("sampled"))}


# --------------------------------------------------------------------------- manifest.json

MANIFEST_API_VERSION: Final = "tidetune.io/v1alpha1"
MANIFEST_KIND: Final = "ArtifactManifest"
#: the trained model (a LoRA adapter, or the full model), with its tokenizer
FINAL_ARTIFACT: Final = "final"
#: with output.mergeLora: the base model with the adapter merged in
MERGED_ARTIFACT: Final = "merged"
#: the training curve (metrics.jsonl)
METRICS_ARTIFACT: Final = "metrics"


def checkpoint_artifact(step: int) -> str:
    """An exported checkpoint's artifact name: ``checkpoint-<step>``."""
    return f"checkpoint-{step}"


def model_artifacts(manifest: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The manifest's loadable models (folder artifacts, whose uri ends with ``/``), by
    name, in the manifest's order."""
    return {
        str(a["name"]): a
        for a in manifest.get("artifacts") or []
        if isinstance(a, Mapping) and str(a.get("uri", "")).endswith("/")
    }


def default_model_artifact(names: Iterable[str]) -> str:
    """The model to use when none is named: the merged model if exported, else the final."""
    return MERGED_ARTIFACT if MERGED_ARTIFACT in set(names) else FINAL_ARTIFACT


class FileRecord(TypedDict):
    #: relative to the artifact's folder; "" for a single-file artifact
    path: str
    uri: str
    sizeBytes: int
    sha256: str


class ArtifactRecord(ArtifactStatus):
    #: adapter, model, checkpoint, metrics, …
    type: str
    files: list[FileRecord]
    step: NotRequired[int]


class ManifestDocument(TypedDict):
    apiVersion: str
    kind: str
    #: namespace, name, uid
    job: dict[str, str]
    createdAt: str
    artifacts: list[ArtifactRecord]


def artifact_digest(files: Iterable[Mapping[str, Any]]) -> str:
    """An artifact's ``sha256``: a single-file artifact's (``path`` "") is the file's own;
    a folder's is the sha256 of its file list in ``sha256sum`` format (``<sha256>  <path>``
    and a newline per file, sorted by path), so it changes when any file does.

    Raises ``KeyError`` when a file lacks ``path`` or ``sha256``.
    """
    listed = list(files)
    if len(listed) == 1 and listed[0]["path"] == "":
        return str(listed[0]["sha256"])
    listing = "".join(
        f"{f['sha256']}  {f['path']}\n" for f in sorted(listed, key=lambda f: str(f["path"]))
    )
    return hashlib.sha256(listing.encode()).hexdigest()
