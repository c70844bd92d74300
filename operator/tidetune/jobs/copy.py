"""``tidetune copy JOB NEW [--set path=value …]``: a new manifest from an old one — no
status, no server fields, a new name — validated before it is printed or applied."""

from __future__ import annotations

import copy as _copy
import re
from collections.abc import Sequence
from typing import Any

import yaml

from tidetune.jobs.source import UsageError

_EXPONENT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")

#: metadata users write; everything else in metadata is the server's
KEEP_METADATA = ("namespace", "labels", "annotations")
#: annotations the server or kubectl add
DROP_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)
#: spec fields that describe the old job's life, not what to train: a copy starts fresh
RESET_SPEC = ("cancelled", "suspend")


def _parse_set(item: str) -> tuple[list[str], Any]:
    path, sep, raw = item.partition("=")
    if not sep or not path.strip():
        raise UsageError(
            f"--set {item!r}: write PATH=VALUE, e.g. hyperparameters.learningRate=3e-4"
        )
    parts = path.strip().split(".")
    if parts[0] not in ("spec", "metadata"):
        parts = ["spec", *parts]
    if parts[0] == "metadata" and (len(parts) < 2 or parts[1] not in ("labels", "annotations")):
        raise UsageError(
            f"--set {item!r}: in metadata only labels.KEY and annotations.KEY can be set "
            "(the name is NEW, the namespace comes with it)"
        )
    if parts[0] == "metadata" and len(parts) > 3:
        parts = [*parts[:2], ".".join(parts[2:])]  # label keys may hold dots
    if parts[0] == "metadata":
        return parts, None if raw.strip() == "null" else raw  # label values are strings
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _EXPONENT.match(value.strip()):
        value = float(value)  # YAML 1.1 (PyYAML) reads 3e-4 as a string; users mean 3e-4
    return parts, value


def copy_manifest(
    body: dict[str, Any], new_name: str, sets: Sequence[str] = (), namespace: str | None = None
) -> dict[str, Any]:
    """The new manifest: ``apiVersion``, ``kind``, the kept metadata with ``new_name`` and
    the spec, with each ``PATH=VALUE`` applied (PATH relative to ``spec`` unless it starts
    with ``spec.`` or ``metadata.``; VALUE is YAML; ``null`` removes the field)."""
    meta = body.get("metadata") or {}
    new_meta: dict[str, Any] = {"name": new_name}
    for key in KEEP_METADATA:
        if meta.get(key):
            new_meta[key] = _copy.deepcopy(meta[key])
    if namespace:
        new_meta["namespace"] = namespace
    annotations = {
        k: v for k, v in (new_meta.get("annotations") or {}).items() if k not in DROP_ANNOTATIONS
    }
    if annotations:
        new_meta["annotations"] = annotations
    else:
        new_meta.pop("annotations", None)
    spec = {k: v for k, v in _copy.deepcopy(body.get("spec") or {}).items() if k not in RESET_SPEC}
    new = {
        "apiVersion": body.get("apiVersion", "tidetune.io/v1alpha1"),
        "kind": body.get("kind", "FineTuneJob"),
        "metadata": new_meta,
        "spec": spec,
    }
    for item in sets:
        parts, value = _parse_set(item)
        node: Any = new
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                if value is None:
                    break
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise UsageError(
                    f"--set {item!r}: {'.'.join(parts[: i + 1])} is not a mapping (it is {nxt!r})"
                )
            node = nxt
        else:
            if value is None:
                node.pop(parts[-1], None)
            else:
                node[parts[-1]] = value
    return new


def to_yaml(manifest: dict[str, Any]) -> str:
    return yaml.safe_dump(manifest, sort_keys=False, allow_unicode=True)
