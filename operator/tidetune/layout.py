"""Where a job's files live in object storage, and the names the trainer writes there.

One definition for both sides: the trainer writes these names, the operator reads them.

``<output base>/<namespace>/<name>/<uid>/`` is the job's root: exported artifacts and
``manifest.json`` at the top, the run location (checkpoints, ``progress.json``,
``metrics.jsonl``, ``estimate.json``) under ``run/``. The uid keeps a re-created job
with the same name from ever resuming or overwriting the old one's files.
"""

from __future__ import annotations

from typing import Final

RUN_DIR: Final = "run"
PROGRESS_FILE: Final = "progress.json"
METRICS_FILE: Final = "metrics.jsonl"
ESTIMATE_FILE: Final = "estimate.json"
MANIFEST_FILE: Final = "manifest.json"
SPEC_FILE: Final = "job.yaml"
SPEC_MOUNT: Final = "/etc/tidetune"


def job_root(output_base: str, namespace: str, name: str, uid: str) -> str:
    """``<output base>/<namespace>/<name>/<uid>`` (no trailing slash)."""
    return f"{output_base.rstrip('/')}/{namespace}/{name}/{uid}"


def run_uri(root: str) -> str:
    return f"{root}/{RUN_DIR}"
