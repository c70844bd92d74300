"""Finding a job and reading what it left: a cluster job through the user's kubeconfig, or
a local run in the folder ``tidetune run --workdir`` used.

Both kinds give a :class:`JobView`: the FineTuneJob (spec and status, as ``kubectl get -o
json`` shows it), its timeline, and the object storage of its run location and artifacts,
opened with the job's own Secret when the user may read it, else the user's credentials.
Every failure is a :class:`JobError` whose message says what is missing.
"""

from __future__ import annotations

import abc
import base64
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from tidetune import layout
from tidetune.api.constants import FINETUNEJOB_PLURAL, GROUP, VERSION, Phase
from tidetune.storage import ObjectStore, S3Credentials, StorageError, open_store, scheme_of


class JobError(Exception):
    """A command cannot go on; the message is the one line the user sees (exit 1)."""


class UsageError(JobError):
    """The command line itself is wrong (exit 2)."""


class NotWrittenYet(JobError):
    """A file the job writes is not there (yet): commands that show what there is go on
    without it; an error reading storage is not this."""


@dataclass(frozen=True)
class JobRef:
    namespace: str | None
    name: str

    @classmethod
    def parse(cls, text: str) -> JobRef:
        """``NAME`` or ``NAMESPACE/NAME``."""
        parts = text.split("/")
        label = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
        if len(parts) > 2 or not all(re.match(label, p) for p in parts):
            raise UsageError(
                f"{text!r} is not a job; write NAME or NAMESPACE/NAME (lower-case DNS labels)"
            )
        return cls(parts[0], parts[1]) if len(parts) == 2 else cls(None, parts[0])

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


# --------------------------------------------------------------------------- label selectors


_SET = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_selector(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def selector_matches(selector: str, labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector semantics: ``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``,
    ``k in (a,b)``, ``k notin (a,b)``, comma-separated (all must hold)."""
    for req in _split_selector(selector):
        if m := _SET.match(req):
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            ok = labels.get(key) in values if op == "in" else labels.get(key) not in values
        elif "!=" in req:
            key, value = (s.strip() for s in req.split("!=", 1))
            ok = labels.get(key) != value
        elif "=" in req:
            key, value = (s.strip() for s in req.replace("==", "=").split("=", 1))
            ok = labels.get(key) == value
        elif req.startswith("!"):
            ok = req[1:].strip() not in labels
        else:
            ok = req in labels
        if not ok:
            return False
    return True


# --------------------------------------------------------------------------- the view


@dataclass
class JobView(abc.ABC):
    """One job, wherever it runs."""

    body: dict[str, Any]
    credentials: S3Credentials | None = None
    #: how storage is read (``the job's Secret team-a/s3-creds`` / ``your credentials``)
    access_note: str = ""
    #: set when there is nothing to read storage with (no access to the job's Secret and
    #: no keys of the user's own): what is missing
    access_problem: str = ""
    _stores: dict[str, tuple[ObjectStore, str]] = field(default_factory=dict, repr=False)

    # -- identity
    @property
    def namespace(self) -> str:
        return str(self.body["metadata"].get("namespace") or "default")

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.body.get("spec") or {}
        return spec

    @property
    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.body.get("status") or {}
        return status

    @property
    def phase(self) -> str:
        return str(self.status.get("phase") or Phase.PENDING)

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.body["metadata"].get("labels") or {})

    def timeline(self) -> list[dict[str, Any]]:
        return list(self.status.get("timeline") or [])

    # -- locations
    @property
    @abc.abstractmethod
    def root_uri(self) -> str | None:
        """``<output>/<namespace>/<name>/<uid>`` (artifacts, manifest.json), or None."""

    @property
    @abc.abstractmethod
    def run_uri(self) -> str | None:
        """The run location (checkpoints, metrics.jsonl, progress.json, logs), or None."""

    @property
    def kind(self) -> str:
        return "local run" if isinstance(self, LocalJob) else "job"

    def _open(self, uri: str) -> tuple[ObjectStore, str]:
        if uri not in self._stores:
            self._stores[uri] = open_store(uri, self.credentials)
        return self._stores[uri]

    def read_run(self, name: str) -> str | None:
        """A file of the run location as text; None when it is not there (yet)."""
        if self.run_uri is None:
            return None
        return self._read(self.run_uri, name)

    def read_root(self, name: str) -> str | None:
        if self.root_uri is None:
            return None
        return self._read(self.root_uri, name)

    def _read(self, base: str, name: str) -> str | None:
        store, key = self._open(base)
        full = ObjectStore.join(key, name)
        try:
            if not store.exists(full):
                return None
            return store.read_text(full)
        except StorageError as e:
            raise self._storage_error(e) from None

    def list_run(self, prefix: str) -> list[str]:
        """Keys under ``<run>/<prefix>``, relative to the run location."""
        if self.run_uri is None:
            return []
        store, key = self._open(self.run_uri)
        base = ObjectStore.join(key, prefix)
        try:
            return [k[len(key) :].lstrip("/") for k in store.list(base)]
        except StorageError as e:
            raise self._storage_error(e) from None

    def _storage_error(self, e: StorageError) -> JobError:
        if self.access_problem:
            # the user may read neither the job's Secret nor has keys of their own: say
            # that, not the store's "access denied" that follows from it
            return JobError(
                f"{self.ref}: cannot read its files at {e.uri or self.root_uri}: "
                f"{self.access_problem}; ask for `get` on that Secret, or set "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY to keys that may read it"
            )
        hint = f" (read with {self.access_note})" if self.access_note else ""
        return JobError(f"{self.ref}: {e}{hint}")

    # -- what the trainer wrote
    def metrics_text(self) -> str:
        text = self.read_run(layout.METRICS_FILE)
        if text is None:
            # a finished job also exports the curve next to its artifacts
            text = self.read_root(layout.METRICS_FILE)
        if text is None:
            raise NotWrittenYet(
                f"{self.ref}: no metrics yet ({layout.METRICS_FILE} is not in "
                f"{self.run_uri or 'the run location'}); phase {self.phase}"
            )
        return text

    def manifest(self) -> dict[str, Any] | None:
        text = self.read_root(layout.MANIFEST_FILE)
        if text is None:
            return None
        try:
            data: dict[str, Any] = json.loads(text)
        except ValueError:
            raise JobError(f"{self.ref}: {layout.MANIFEST_FILE} is not valid JSON") from None
        return data

    def require_manifest(self) -> dict[str, Any]:
        manifest = self.manifest()
        if manifest is None:
            raise JobError(
                f"{self.ref}: no artifact exported yet ({layout.MANIFEST_FILE} is not in "
                f"{self.root_uri or 'the output location'}); phase {self.phase}"
            )
        return manifest

    def json_doc(self, name: str) -> dict[str, Any] | None:
        text = self.read_run(name)
        if text is None:
            return None
        try:
            data = json.loads(text)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    # -- actions
    @abc.abstractmethod
    def cancel(self) -> str:
        """Stop the job for good; returns what was done."""


# --------------------------------------------------------------------------- local runs


@dataclass
class LocalJob(JobView):
    run_dir: Path = Path(".")

    @property
    def uid(self) -> str:
        return str(self.body["metadata"].get("uid") or "")

    @property
    def run_uri(self) -> str | None:
        return "file://" + str(self.run_dir)

    @property
    def root_uri(self) -> str | None:
        # what the run reported, else where `tidetune run` put it
        for artifact in self.status.get("artifacts") or []:
            if artifact.get("name") == "manifest":
                return str(artifact["uri"]).rsplit("/", 1)[0]
        out = self.spec.get("output", {}).get("uri")
        if not out:
            store = self.run_dir.parents[3]
            out = "file://" + str(store / layout.LOCAL_ARTIFACTS_DIR)
        return layout.job_root(out, self.namespace, self.name, self.uid)

    def process(self) -> dict[str, Any] | None:
        """The ``tidetune run`` that is running this job now, or None."""
        path = self.run_dir / layout.LOCAL_PROCESS_FILE
        try:
            info: dict[str, Any] = json.loads(path.read_text())
            os.kill(int(info["pid"]), 0)
            return info
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def cancel(self) -> str:
        if self.phase in (Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED):
            raise JobError(f"{self.ref}: already {self.phase}; nothing to cancel")
        from datetime import UTC, datetime

        now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        running = self.process()
        if running is not None:
            # the running `tidetune run` sees the file, stops the trainer (it checkpoints)
            # and records Cancelled in the timeline
            (self.run_dir / layout.LOCAL_CANCEL_FILE).write_text(json.dumps({"time": now}))
            return f"cancelling: tidetune run (pid {running['pid']}) stops the trainer"
        path = self.run_dir / layout.LOCAL_TIMELINE_FILE
        entries = json.loads(path.read_text()) if path.exists() else []
        entries.append(
            {
                "time": now,
                "type": "Cancelled",
                "reason": "Cancelled",
                "message": "cancelled; checkpoints and artifacts are kept",
            }
        )
        path.write_text(json.dumps(entries, indent=1))
        return "cancelled (it was not running); checkpoints and artifacts are kept"


def _local_runs(workdir: Path) -> list[Path]:
    runs = workdir / layout.LOCAL_STORE_DIR / layout.LOCAL_RUNS_DIR
    return sorted(p.parent for p in runs.glob(f"*/*/*/{layout.LOCAL_JOB_FILE}"))


def load_local(run_dir: Path) -> LocalJob:
    """The FineTuneJob of one local run folder, its status rebuilt from the run's files."""
    from tidetune.jobs.localstatus import final_job

    body = json.loads((run_dir / layout.LOCAL_JOB_FILE).read_text())
    timeline_path = run_dir / layout.LOCAL_TIMELINE_FILE
    timeline = json.loads(timeline_path.read_text()) if timeline_path.exists() else []

    def doc(name: str) -> dict[str, Any] | None:
        try:
            data = json.loads((run_dir / name).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    progress = doc(layout.PROGRESS_FILE)
    estimate = _local_estimate(body, doc(layout.ESTIMATE_FILE))
    job = LocalJob(body={}, credentials=S3Credentials.from_env(), run_dir=run_dir)
    job.body = body
    running = job.process() is not None
    phase = local_phase(timeline, running)
    message = (progress or {}).get("message") if phase == Phase.FAILED else None
    job.body = final_job(body, phase, timeline, estimate, message, progress)
    return job


def _local_estimate(body: dict[str, Any], counted: dict[str, Any] | None) -> dict[str, Any] | None:
    from pydantic import ValidationError

    from tidetune.api import FineTuneJob
    from tidetune.jobs.localstatus import price_local

    try:
        spec = FineTuneJob.model_validate(body).spec
    except ValidationError:
        return None
    return price_local(spec, counted)


def local_phase(timeline: list[dict[str, Any]], running: bool) -> str:
    """A local run's phase from its timeline and whether ``tidetune run`` is running it."""
    ends = {"Succeeded", "Failed", "Cancelled", "Suspended"}
    last = next((e["type"] for e in reversed(timeline) if e["type"] in ends), None)
    if running:
        return Phase.RUNNING
    if last in ("Succeeded", "Failed", "Cancelled"):
        return str(last)
    if last == "Suspended" or any(e["type"] in ("Started", "Resumed") for e in timeline):
        return Phase.SUSPENDED  # stopped (Ctrl-C or killed): `tidetune run` again resumes
    return Phase.PENDING


def find_local(workdir: str | os.PathLike[str], ref: JobRef) -> LocalJob:
    root = Path(workdir)
    if not (root / layout.LOCAL_STORE_DIR).is_dir():
        raise JobError(
            f"{workdir}: not a tidetune run folder (no {layout.LOCAL_STORE_DIR}/ in it); "
            "give the --workdir that `tidetune run` used"
        )
    runs = _local_runs(root)
    namespace = ref.namespace or "default"
    matches = [p for p in runs if p.parent.name == ref.name and p.parent.parent.name == namespace]
    if not matches:
        known = sorted({f"{p.parent.parent.name}/{p.parent.name}" for p in runs})
        raise JobError(
            f"job {namespace}/{ref.name} not found in {workdir}; runs there: "
            + (", ".join(known) or "none")
        )
    newest = max(matches, key=lambda p: (p / layout.LOCAL_JOB_FILE).stat().st_mtime)
    return load_local(newest)


def list_local(workdir: str | os.PathLike[str], selector: str | None) -> list[LocalJob]:
    jobs = [load_local(p) for p in _local_runs(Path(workdir))]
    return [j for j in jobs if selector is None or selector_matches(selector, j.labels)]


# --------------------------------------------------------------------------- cluster jobs


@dataclass
class ClusterJob(JobView):
    api: Any = None

    @property
    def root_uri(self) -> str | None:
        uri = self.status.get("outputUri")
        if uri:
            return str(uri).rstrip("/")
        # an operator that did not record it: the spec's output, else the checkpoints' root
        for ckpt in self.status.get("checkpoints") or []:
            head, sep, _ = str(ckpt.get("uri", "")).partition(f"/{layout.RUN_DIR}/")
            if sep:
                return head
        out = self.spec.get("output", {}).get("uri")
        uid = self.body["metadata"].get("uid")
        return layout.job_root(out, self.namespace, self.name, uid) if out and uid else None

    @property
    def run_uri(self) -> str | None:
        root = self.root_uri
        return layout.run_uri(root) if root else None

    def cancel(self) -> str:
        if self.phase in (Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED):
            raise JobError(f"{self.ref}: already {self.phase}; nothing to cancel")
        _call(
            lambda: self.api.custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                self.namespace,
                FINETUNEJOB_PLURAL,
                self.name,
                {"spec": {"cancelled": True}},
            ),
            f"cannot cancel {self.ref}",
        )
        return (
            "spec.cancelled set; the operator deletes the launched job (the trainer "
            "checkpoints) and the phase becomes Cancelled"
        )

    def pods(self) -> list[Any]:
        """The job's pods (any attempt), oldest first."""
        from tidetune.api.constants import JOB_LABEL

        result = _call(
            lambda: self.api.core.list_namespaced_pod(
                self.namespace, label_selector=f"{JOB_LABEL}={self.name}"
            ),
            f"cannot list the pods of {self.ref}",
        )
        return sorted(result.items, key=lambda p: p.metadata.creation_timestamp or 0)


class KubeApi:
    """The user's kubeconfig: the clients, and the context's namespace."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None) -> None:
        try:
            from kubernetes import client, config
        except ImportError:
            raise JobError(
                "cluster jobs need the kubernetes client: pip install 'tidetune[operator]' "
                "(or give --workdir for a local run)"
            ) from None
        path = kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or None
        try:
            self.client = config.new_client_from_config(config_file=path, context=context)
            contexts, active = config.list_kube_config_contexts(config_file=path)
        except Exception as e:
            where = path or "~/.kube/config"
            raise JobError(
                f"cannot load the kubeconfig {where}: {_first_line(e)}; give --kubeconfig, or "
                "--workdir DIR for a local run"
            ) from None
        chosen = next((c for c in contexts if c["name"] == context), active) if context else active
        self.namespace = str((chosen or {}).get("context", {}).get("namespace") or "default")
        self.custom = client.CustomObjectsApi(self.client)
        self.core = client.CoreV1Api(self.client)


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def _call(fn: Any, what: str) -> Any:
    """Run a Kubernetes API call; its failure becomes a one-line JobError."""
    try:
        return fn()
    except JobError:
        raise
    except Exception as e:
        status = getattr(e, "status", None)
        if status == 403:
            raise JobError(f"{what}: forbidden; ask for access to it ({_reason(e)})") from None
        if status == 404:
            raise JobError(f"{what}: not found") from None
        if status is not None:
            raise JobError(f"{what}: API error {status} {_reason(e)}") from None
        raise JobError(f"{what}: cannot reach the cluster ({_first_line(e)})") from None


def _reason(e: BaseException) -> str:
    body = getattr(e, "body", None)
    try:
        return str(json.loads(body)["message"]) if body else str(getattr(e, "reason", ""))
    except (ValueError, KeyError, TypeError):
        return str(getattr(e, "reason", ""))


NO_CREDENTIALS: Final = "no credentials: "


def storage_credentials(api: KubeApi, body: dict[str, Any]) -> tuple[S3Credentials, str]:
    """The job's Secret when the user may read it, else the user's own credentials.

    Returns the credentials and how they were found; the note starts with ``no
    credentials:`` when there are none (no access to the Secret, no keys of one's own).
    """
    namespace = body["metadata"].get("namespace") or "default"
    ref = (body.get("spec") or {}).get("storageSecretRef")
    own = S3Credentials.from_env()
    if not ref:
        return own, "your credentials (the job names no storageSecretRef)"
    name = ref["name"]
    try:
        secret = api.core.read_namespaced_secret(name, namespace)
    except Exception as e:
        status = getattr(e, "status", None)
        why = "forbidden" if status == 403 else "not found" if status == 404 else _first_line(e)
        if own.access_key and own.secret_key:
            return own, f"your credentials (no access to Secret {namespace}/{name}: {why})"
        return (
            S3Credentials(endpoint=own.endpoint),
            f"{NO_CREDENTIALS}no access to Secret {namespace}/{name} ({why}) and no "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY of your own",
        )
    data = {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}
    creds = S3Credentials(
        endpoint=data.get("endpoint") or own.endpoint,
        access_key=data.get("accessKey"),
        secret_key=data.get("secretKey"),
        region=own.region,
    )
    return creds, f"the job's Secret {namespace}/{name}"


def find_cluster(api: KubeApi, ref: JobRef) -> ClusterJob:
    namespace = ref.namespace or api.namespace
    body = _call(
        lambda: api.custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, FINETUNEJOB_PLURAL, ref.name
        ),
        f"job {namespace}/{ref.name}",
    )
    return _cluster_job(api, body)


def _cluster_job(api: KubeApi, body: dict[str, Any]) -> ClusterJob:
    job = ClusterJob(body=body, api=api)
    out = job.root_uri
    if out and scheme_of(out) == "s3":
        job.credentials, job.access_note = storage_credentials(api, body)
        if job.access_note.startswith(NO_CREDENTIALS):
            job.access_problem = job.access_note.removeprefix(NO_CREDENTIALS)
    return job


def list_cluster(api: KubeApi, namespace: str | None, selector: str | None) -> list[ClusterJob]:
    ns = namespace or api.namespace
    result = _call(
        lambda: api.custom.list_namespaced_custom_object(
            GROUP, VERSION, ns, FINETUNEJOB_PLURAL, label_selector=selector or ""
        ),
        f"cannot list the jobs in {ns}",
    )
    return [_cluster_job(api, b) for b in result.get("items", [])]


# --------------------------------------------------------------------------- one entry point


@dataclass
class Where:
    """Where jobs are looked up: a local run folder, or the cluster of a kubeconfig."""

    workdir: str | None = None
    kubeconfig: str | None = None
    context: str | None = None
    _api: KubeApi | None = None

    @property
    def api(self) -> KubeApi:
        if self._api is None:
            self._api = KubeApi(self.kubeconfig, self.context)
        return self._api

    def find(self, text: str) -> JobView:
        ref = JobRef.parse(text)
        if self.workdir is not None:
            return find_local(self.workdir, ref)
        return find_cluster(self.api, ref)

    def select(self, selector: str, namespace: str | None = None) -> list[JobView]:
        jobs: list[JobView]
        if self.workdir is not None:
            jobs = list(list_local(self.workdir, selector))
        else:
            jobs = list(list_cluster(self.api, namespace, selector))
        if not jobs:
            where = self.workdir or f"namespace {namespace or self.api.namespace}"
            raise JobError(f"no job matches -l {selector} in {where}")
        return jobs
