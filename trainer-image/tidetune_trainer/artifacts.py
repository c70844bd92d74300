"""Final artifacts and their manifest, under ``<output>/<namespace>/<name>/<uid>/``::

    final/            the LoRA adapter (adapter_config.json, adapter_model.safetensors)
                      or the full model, plus the tokenizer
    merged/           with output.mergeLora: the base model with the adapter merged in
    checkpoint-<N>/   the output.exportCheckpoints latest checkpoints, as loadable models
    metrics.jsonl     the training curve
    manifest.json     written last: every artifact with name, uri, sizeBytes, sha256 and
                      its files (path, uri, sizeBytes, sha256)

The manifest's format and the digest rule (a directory artifact's ``sha256`` is the
sha256 of its file list) are :mod:`tidetune.contract`'s, which the operator checks with.
Readers must treat a location without ``manifest.json`` as incomplete.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tidetune.contract import (
    MANIFEST_API_VERSION,
    MANIFEST_KIND,
    artifact_digest,
    checkpoint_artifact,
)
from tidetune.layout import MANIFEST_FILE, job_root
from tidetune.storage import LocalStore, ObjectStore, open_store
from tidetune_trainer.checkpoint import CheckpointManager, utcnow

MANIFEST = MANIFEST_FILE


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def output_prefix(output_uri: str, namespace: str, name: str, uid: str) -> str:
    """``<output>/<namespace>/<name>/<uid>`` as a URI (the layout the operator reads)."""
    return job_root(output_uri, namespace, name, uid)


@dataclass
class FileEntry:
    path: str
    uri: str
    size_bytes: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "uri": self.uri,
            "sizeBytes": self.size_bytes,
            "sha256": self.sha256,
        }


@dataclass
class ArtifactEntry:
    name: str
    type: str
    uri: str
    files: list[FileEntry] = field(default_factory=list)
    step: int | None = None

    @property
    def size_bytes(self) -> int:
        return sum(f.size_bytes for f in self.files)

    @property
    def sha256(self) -> str:
        return artifact_digest(f.to_dict() for f in self.files)

    def to_status(self) -> dict[str, Any]:
        """``{name, uri, sizeBytes, sha256}`` as in ``status.artifacts``."""
        return {
            "name": self.name,
            "uri": self.uri,
            "sizeBytes": self.size_bytes,
            "sha256": self.sha256,
        }

    def to_dict(self) -> dict[str, Any]:
        d = {**self.to_status(), "type": self.type, "files": [f.to_dict() for f in self.files]}
        if self.step is not None:
            d["step"] = self.step
        return d


class ArtifactWriter:
    """Uploads artifacts to the job's output prefix (rank 0 only) and writes the manifest."""

    def __init__(
        self, output_uri: str, namespace: str, name: str, uid: str, credentials: Any = None
    ) -> None:
        self.prefix_uri = output_prefix(output_uri, namespace, name, uid)
        self.store, self.key = open_store(self.prefix_uri, credentials)
        self.job = {"namespace": namespace, "name": name, "uid": uid}
        self.entries: list[ArtifactEntry] = []

    def _upload_file(self, local: Path, rel: str) -> FileEntry:
        key = ObjectStore.join(self.key, rel)
        digest = sha256_file(local)
        self.store.upload_file(local, key)
        return FileEntry(
            rel.split("/", 1)[1] if "/" in rel else "",
            self.store.uri(key),
            local.stat().st_size,
            digest,
        )

    def add_dir(
        self, name: str, kind: str, local_dir: Path, *, step: int | None = None
    ) -> ArtifactEntry:
        """Upload every file of ``local_dir`` to ``<prefix>/<name>/``."""
        entry = ArtifactEntry(
            name, kind, self.store.uri(ObjectStore.join(self.key, name)) + "/", step=step
        )
        for p in sorted(q for q in local_dir.rglob("*") if q.is_file()):
            entry.files.append(
                self._upload_file(p, f"{name}/{p.relative_to(local_dir).as_posix()}")
            )
        self.entries.append(entry)
        return entry

    def add_file(self, name: str, kind: str, local: Path) -> ArtifactEntry:
        """Upload one file as ``<prefix>/<local.name>``."""
        key = ObjectStore.join(self.key, local.name)
        digest = sha256_file(local)
        self.store.upload_file(local, key)
        entry = ArtifactEntry(
            name,
            kind,
            self.store.uri(key),
            [FileEntry("", self.store.uri(key), local.stat().st_size, digest)],
        )
        self.entries.append(entry)
        return entry

    def add_checkpoints(
        self, ckpt: CheckpointManager, count: int, kind: str
    ) -> list[ArtifactEntry]:
        """Export the ``count`` latest complete checkpoints' ``model/`` directories."""
        out = []
        for info in ckpt.complete()[-count:] if count > 0 else []:
            src_key = ObjectStore.join(info.key, "model")
            with _local_copy(ckpt.store, src_key) as local:
                out.append(
                    self.add_dir(checkpoint_artifact(info.step), kind, local, step=info.step)
                )
        return out

    def write_manifest(self, extra: dict[str, Any] | None = None) -> ArtifactEntry:
        """Write ``manifest.json`` (last). Returns its own entry."""
        body = {
            "apiVersion": MANIFEST_API_VERSION,
            "kind": MANIFEST_KIND,
            "job": self.job,
            "createdAt": utcnow(),
            **(extra or {}),
            "artifacts": [e.to_dict() for e in self.entries],
        }
        data = json.dumps(body, indent=1).encode()
        key = ObjectStore.join(self.key, MANIFEST)
        self.store.write_bytes(key, data)
        digest = hashlib.sha256(data).hexdigest()
        return ArtifactEntry(
            "manifest",
            "manifest",
            self.store.uri(key),
            [FileEntry("", self.store.uri(key), len(data), digest)],
        )


class _local_copy:
    """A local directory with the objects under ``key`` (the store's own path if local)."""

    def __init__(self, store: ObjectStore, key: str) -> None:
        self.store, self.key = store, key
        self.tmp: str | None = None

    def __enter__(self) -> Path:
        if isinstance(self.store, LocalStore):
            return self.store.path(self.key)
        self.tmp = tempfile.mkdtemp(prefix="tidetune-export-")
        self.store.download_dir(self.key, self.tmp)
        return Path(self.tmp)

    def __exit__(self, *exc: object) -> None:
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


def read_manifest(uri: str, credentials: Any = None) -> dict[str, Any]:
    """Read ``<uri>/manifest.json``."""
    store, key = open_store(uri, credentials)
    data: dict[str, Any] = json.loads(store.read_text(ObjectStore.join(key, MANIFEST)))
    return data
