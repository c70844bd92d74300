"""Register an exported model in an MLflow model registry, over MLflow's REST API.

What a publication makes, in the registry at ``registry`` (an MLflow tracking server):

- an experiment ``tidetune/<namespace>`` and in it a run named after the job, with the
  hyperparameters and spec facts as params, the metric series (``metrics.jsonl``) as
  metrics with their steps, and tags (``tidetune.*``: job, uid, base model, data URIs,
  method, tuning, artifact, sha256);
- the artifact's files, copied into the run's artifacts under ``model/`` through the
  tracking server (``--serve-artifacts``; it writes them to its own store, e.g. S3) and
  checked against the manifest's sha256 — or, with ``copy=False``, nothing copied and the
  artifact registered where it is;
- the registered model (created when missing) and a new version whose source is the
  copy (or the artifact's own URI), with the same facts as version tags.

Publishing the same artifact of the same job again returns the version it already has
(matched by the ``tidetune.uid``, ``tidetune.artifact`` and ``tidetune.sha256`` tags), so a
retried export never registers twice. Credentials for the registry come from the
environment as the MLflow client reads them: ``MLFLOW_TRACKING_TOKEN`` (bearer) or
``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` (basic).

Only the standard library is used, so the operator image and the trainer can publish.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tidetune.jobs.source import JobError, NotWrittenYet
from tidetune.storage import ObjectStore, S3Credentials, StorageError, open_store, scheme_of

#: where the result of the last publication is kept, next to manifest.json
PUBLISHED_FILE = "published.json"
TAG = "tidetune."
MAX_BATCH = {"metrics": 1000, "params": 100, "tags": 100}


class RegistryError(JobError):
    """The registry refused or could not be reached; the message says which call and why."""


class Mlflow:
    """The few calls of MLflow's REST API a publication needs."""

    def __init__(
        self, url: str, env: Mapping[str, str] | None = None, timeout: float = 60.0
    ) -> None:
        env = os.environ if env is None else env
        if not url.startswith(("http://", "https://")):
            raise JobError(f"registry {url!r}: give the MLflow tracking server's http(s):// URL")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.headers = {"Content-Type": "application/json"}
        if env.get("MLFLOW_TRACKING_TOKEN"):
            self.headers["Authorization"] = f"Bearer {env['MLFLOW_TRACKING_TOKEN']}"
        elif env.get("MLFLOW_TRACKING_USERNAME"):
            pair = f"{env['MLFLOW_TRACKING_USERNAME']}:{env.get('MLFLOW_TRACKING_PASSWORD', '')}"
            self.headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()

    def _request(
        self, method: str, path: str, data: bytes | None, headers: dict[str, str], what: str
    ) -> bytes:
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                body: bytes = resp.read()
                return body
        except urllib.error.HTTPError as e:
            text = e.read().decode("utf-8", "replace")
            try:
                detail = json.loads(text)
                code, message = detail.get("error_code", e.code), detail.get("message", text)
            except ValueError:
                code, message = e.code, text.strip()[:300]
            raise RegistryError(f"{self.url}: {what}: {code}: {message}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise RegistryError(
                f"{self.url}: {what}: cannot reach the registry ({reason})"
            ) from None

    def call(
        self,
        method: str,
        endpoint: str,
        body: dict[str, Any] | None = None,
        query: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        path = f"/api/2.0/mlflow/{endpoint}"
        if query:
            path += "?" + urllib.parse.urlencode(query)
        data = json.dumps(body).encode() if body is not None else None
        raw = self._request(method, path, data, self.headers, endpoint)
        out: dict[str, Any] = json.loads(raw or b"{}")
        return out

    def exists_error(self, e: RegistryError) -> bool:
        return "RESOURCE_ALREADY_EXISTS" in str(e)

    def experiment(self, name: str) -> str:
        try:
            got = self.call("GET", "experiments/get-by-name", query={"experiment_name": name})
            return str(got["experiment"]["experiment_id"])
        except RegistryError as e:
            if "RESOURCE_DOES_NOT_EXIST" not in str(e):
                raise
        try:
            return str(self.call("POST", "experiments/create", {"name": name})["experiment_id"])
        except RegistryError as e:  # created by someone else meanwhile
            if not self.exists_error(e):
                raise
            got = self.call("GET", "experiments/get-by-name", query={"experiment_name": name})
            return str(got["experiment"]["experiment_id"])

    def upload(self, artifact_uri: str, rel: str, local: Path) -> None:
        """PUT one file into a run's artifacts (``mlflow-artifacts:/…``) via the server."""
        if not artifact_uri.startswith("mlflow-artifacts:"):
            raise RegistryError(
                f"{self.url}: the run's artifacts live at {artifact_uri}, not behind the "
                "tracking server; start it with --serve-artifacts, or publish with "
                "--reference-only"
            )
        base = artifact_uri.split(":", 1)[1].lstrip("/")
        path = "/api/2.0/mlflow-artifacts/artifacts/" + urllib.parse.quote(f"{base}/{rel}")
        headers = {k: v for k, v in self.headers.items() if k != "Content-Type"}
        headers["Content-Type"] = "application/octet-stream"
        headers["Content-Length"] = str(local.stat().st_size)
        with open(local, "rb") as f:
            req = urllib.request.Request(self.url + path, data=f, method="PUT", headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    resp.read()
            except urllib.error.HTTPError as e:
                raise RegistryError(
                    f"{self.url}: upload {rel}: {e.code}: {e.read().decode()[:300]}"
                ) from None
            except (urllib.error.URLError, OSError) as e:
                raise RegistryError(
                    f"{self.url}: upload {rel}: {getattr(e, 'reason', e)}"
                ) from None

    def batch(self, run_id: str, kind: str, items: Sequence[dict[str, Any]]) -> None:
        size = MAX_BATCH[kind]
        for i in range(0, len(items), size):
            self.call("POST", "runs/log-batch", {"run_id": run_id, kind: list(items[i : i + size])})


# --------------------------------------------------------------------------- the record


def _flat(node: Any, prefix: str) -> dict[str, str]:
    if isinstance(node, dict):
        out: dict[str, str] = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: json.dumps(node) if isinstance(node, list | dict) else str(node)}


def record_facts(
    body: dict[str, Any], manifest: dict[str, Any], artifact: dict[str, Any]
) -> dict[str, str]:
    """The ``tidetune.*`` tags: who made the model, from what, how, and its digest."""
    spec = body.get("spec") or {}
    data = spec.get("data") or {}
    meta = body.get("metadata") or {}
    facts = {
        "job": f"{meta.get('namespace') or 'default'}/{meta.get('name')}",
        "uid": str(meta.get("uid") or (manifest.get("job") or {}).get("uid") or ""),
        "baseModel": str((spec.get("baseModel") or {}).get("uri", "")),
        "method": str(spec.get("method", "")),
        "tuning": str((spec.get("tuning") or {}).get("type", "lora")),
        "data.train": str((data.get("train") or {}).get("uri", "")),
        "data.validation": str(
            (data.get("validation") or {}).get("uri")
            or (data.get("validation") or {}).get("splitRatio")
            or ""
        ),
        "data.mixIn": str((data.get("mixIn") or {}).get("uri", "")),
        "artifact": str(artifact["name"]),
        "artifactUri": str(artifact["uri"]),
        "sha256": str(artifact["sha256"]),
        "sizeBytes": str(artifact.get("sizeBytes", "")),
    }
    return {TAG + k: v for k, v in facts.items() if v}


def _params(body: dict[str, Any]) -> dict[str, str]:
    spec = body.get("spec") or {}
    params = {
        **_flat(spec.get("hyperparameters") or {}, "hyperparameters"),
        **_flat((spec.get("tuning") or {}), "tuning"),
        **_flat(spec.get("resources") or {}, "resources"),
        **_flat(spec.get("deepspeed") or {}, "deepspeed"),
        "method": str(spec.get("method", "")),
        "baseModel": str((spec.get("baseModel") or {}).get("uri", "")),
    }
    for key in ("dpo", "rl"):
        if spec.get(key):
            params.update(_flat(spec[key], key))
    return {k[:250]: v[:6000] for k, v in params.items()}


def _metrics(lines: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    now = int(time.time() * 1000)
    for obj in lines:
        step = obj.get("step")
        if not isinstance(step, int):
            continue
        when = now
        if isinstance(obj.get("time"), str):
            with contextlib.suppress(ValueError):
                when = int(
                    datetime.fromisoformat(obj["time"].replace("Z", "+00:00")).timestamp() * 1000
                )
        for k, v in obj.items():
            if k in ("step", "epoch", "time") or isinstance(v, bool):
                continue
            if isinstance(v, int | float) and math.isfinite(v):
                out.append({"key": k, "value": float(v), "timestamp": when, "step": step})
    return out


def choose_artifact(manifest: dict[str, Any], wanted: str | None) -> dict[str, Any]:
    """The exported model ``wanted`` names (default: merged if exported, else final)."""
    from tidetune.contract import default_model_artifact, model_artifacts

    models = model_artifacts(manifest)
    name = wanted or default_model_artifact(models)
    if name not in models:
        raise JobError(f"no artifact {name!r} exported; exported: {', '.join(models) or 'none'}")
    return dict(models[name])


def publish(
    registry: str,
    model: str,
    body: dict[str, Any],
    manifest: dict[str, Any],
    metrics_lines: Sequence[dict[str, Any]],
    *,
    artifact: str | None = None,
    copy: bool = True,
    storage: S3Credentials | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Register ``artifact`` of the job ``body`` (see the module doc); returns the record
    ``{registry, model, version, source, runId, artifact, sha256, time}``."""
    entry = choose_artifact(manifest, artifact)
    if not copy and scheme_of(str(entry["uri"])) in ("file", "pvc"):
        raise JobError(
            f"{entry['uri']} is on this machine or a volume, which the registry cannot read; "
            "register a copy instead (drop --reference-only / set copyFiles: true)"
        )
    facts = record_facts(body, manifest, entry)
    api = Mlflow(registry, env)
    existing = _existing_version(api, model, facts)
    if existing is not None:
        return _record(registry, model, existing, entry, reused=True)
    namespace = (body.get("metadata") or {}).get("namespace") or "default"
    experiment = api.experiment(f"tidetune/{namespace}")
    run = api.call(
        "POST",
        "runs/create",
        {
            "experiment_id": experiment,
            "run_name": (body.get("metadata") or {}).get("name", "job"),
            "start_time": int(time.time() * 1000),
            "tags": [{"key": k, "value": v} for k, v in facts.items()],
        },
    )["run"]["info"]
    run_id = str(run["run_id"])
    api.batch(run_id, "params", [{"key": k, "value": v} for k, v in _params(body).items()])
    api.batch(run_id, "metrics", _metrics(metrics_lines))
    if copy:
        _copy_files(api, run["artifact_uri"], entry, storage)
        source = f"{run['artifact_uri']}/model"
    else:
        source = str(entry["uri"]).rstrip("/")
    api.call(
        "POST",
        "runs/update",
        {"run_id": run_id, "status": "FINISHED", "end_time": int(time.time() * 1000)},
    )
    try:
        api.call(
            "POST",
            "registered-models/create",
            {
                "name": model,
                "description": "Fine-tuned with TideTune",
            },
        )
    except RegistryError as e:
        if not api.exists_error(e):
            raise
    spec = body.get("spec") or {}
    version = api.call(
        "POST",
        "model-versions/create",
        {
            "name": model,
            "source": source,
            "run_id": run_id,
            "tags": [{"key": k, "value": v} for k, v in facts.items()],
            "description": (
                f"{spec.get('method')} ({(spec.get('tuning') or {}).get('type', 'lora')}) of "
                f"{facts.get(TAG + 'baseModel')} on {facts.get(TAG + 'data.train')}; "
                f"job {facts[TAG + 'job']}, artifact {entry['name']} sha256 {entry['sha256']}"
            ),
        },
    )["model_version"]
    return _record(registry, model, version, entry)


def _existing_version(api: Mlflow, model: str, facts: dict[str, str]) -> dict[str, Any] | None:
    try:
        found = api.call(
            "GET",
            "model-versions/search",
            query={"filter": f"name='{model}'", "max_results": "1000"},
        )
    except RegistryError as e:
        if "RESOURCE_DOES_NOT_EXIST" in str(e):
            return None
        raise
    keys = (TAG + "uid", TAG + "artifact", TAG + "sha256")
    for version in found.get("model_versions", []):
        tags = {t["key"]: t.get("value") for t in version.get("tags", [])}
        if all(tags.get(k) == facts.get(k) for k in keys):
            return dict(version)
    return None


def _copy_files(
    api: Mlflow, artifact_uri: str, entry: dict[str, Any], storage: S3Credentials | None
) -> None:
    import hashlib

    with tempfile.TemporaryDirectory(prefix="tidetune-publish-") as tmp:
        for f in entry.get("files", []):
            rel = f["path"] or Path(str(f["uri"])).name
            store, key = open_store(str(f["uri"]), storage)
            local = Path(tmp) / "file"
            try:
                store.download_file(key, local)
            except StorageError as e:
                raise JobError(f"cannot read {f['uri']} to publish it: {e}") from None
            h = hashlib.sha256()
            with open(local, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            if h.hexdigest() != f["sha256"]:
                raise JobError(
                    f"{f['uri']}: sha256 {h.hexdigest()} differs from the manifest's "
                    f"{f['sha256']}; not publishing a changed artifact"
                )
            api.upload(artifact_uri, f"model/{rel}", local)
            local.unlink()


def _record(
    registry: str, model: str, version: dict[str, Any], entry: dict[str, Any], reused: bool = False
) -> dict[str, Any]:
    return {
        "registry": registry,
        "model": model,
        "version": str(version.get("version")),
        "source": version.get("source"),
        "runId": version.get("run_id"),
        "artifact": entry["name"],
        "sha256": entry["sha256"],
        "alreadyRegistered": reused,
        "time": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }


def keep_record(root_uri: str, record: dict[str, Any], storage: S3Credentials | None) -> None:
    """Append the record to ``<root>/published.json``."""
    store, key = open_store(root_uri, storage)
    path = ObjectStore.join(key, PUBLISHED_FILE)
    records: list[Any] = []
    if store.exists(path):
        try:
            records = list(json.loads(store.read_text(path)))
        except (ValueError, TypeError):
            records = []
    records.append(record)
    store.write_text(path, json.dumps(records, indent=1))


# --------------------------------------------------------------------------- the CLI side


def publish_job(
    job: Any,
    *,
    registry: str | None,
    model: str | None,
    artifact: str | None,
    copy_files: bool = True,
) -> dict[str, Any]:
    """``tidetune publish JOB``: options override ``spec.output.publish``."""
    from tidetune.jobs.series import parse_lines

    configured = (job.spec.get("output") or {}).get("publish") or {}
    registry = registry or configured.get("registry")
    if not registry:
        raise JobError(
            f"{job.ref}: no registry: give --registry URL (the job has no spec.output.publish)"
        )
    model = model or configured.get("model") or job.name
    artifact = artifact or configured.get("artifact")
    copy = copy_files and configured.get("copyFiles", True)
    manifest = job.require_manifest()
    try:
        lines = parse_lines(job.metrics_text())
    except NotWrittenYet:
        lines = []
    try:
        record = publish(
            registry,
            model,
            job.body,
            manifest,
            lines,
            artifact=artifact,
            copy=copy,
            storage=job.credentials,
        )
    except JobError as e:
        raise JobError(f"{job.ref}: {e}") from None
    if job.root_uri:
        keep_record(job.root_uri, record, job.credentials)
    return record
