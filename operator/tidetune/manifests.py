"""Read manifests and explain what is wrong with them, field by field.

:func:`check_file` is what ``tidetune validate`` runs: it reads a (multi-document) YAML
file, validates each document with the model of its kind, and turns every error into a
:class:`Problem` that names the field path, says what is wrong and what is allowed, and
points at the line. It never raises on bad input: unreadable files and invalid YAML are
problems too.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tidetune.api.cel import CROSS_FIELD_ERROR
from tidetune.api.constants import (
    API_VERSION,
    BUILTIN_MODELS,
    FINETUNEJOB_KIND,
    GROUP,
    IDLEPOOL_KIND,
)
from tidetune.api.finetunejob import (
    DATA_URI_PATTERN,
    GPU_TYPE_PATTERN,
    KEY_PATTERN,
    MODEL_URI_PATTERN,
    FineTuneJob,
)
from tidetune.api.idlepool import IdlePool
from tidetune.api.types import (
    CLOCK_PATTERN,
    DNS1123_LABEL_PATTERN,
    DNS1123_SUBDOMAIN_PATTERN,
    DURATION_PATTERN,
    IDENTIFIER_PATTERN,
    QUANTITY_PATTERN,
)

KINDS: dict[str, type[FineTuneJob] | type[IdlePool]] = {
    FINETUNEJOB_KIND: FineTuneJob,
    IDLEPOOL_KIND: IdlePool,
}

_PATTERN_WORDS = {
    DNS1123_LABEL_PATTERN: (
        "a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a "
        "letter or digit, at most 63 characters"
    ),
    DNS1123_SUBDOMAIN_PATTERN: (
        "a DNS-1123 name: lowercase letters, digits, '-' and '.', starting and ending with a "
        "letter or digit"
    ),
    DURATION_PATTERN: "a duration: a number and a unit d, h, m or s, e.g. 90m, 24h, 1h30m",
    QUANTITY_PATTERN: "a Kubernetes quantity, e.g. 8, 500m, 64Gi",
    CLOCK_PATTERN: "a time of day HH:MM from 00:00 to 24:00",
    IDENTIFIER_PATTERN: "a Python identifier (letters, digits, '_'; not starting with a digit)",
    MODEL_URI_PATTERN: (
        "a model URI: s3://bucket/prefix, pvc://claim/path, file:///path, hf://org/name or "
        + " or ".join(f"builtin://{name}" for name in BUILTIN_MODELS)
    ),
    DATA_URI_PATTERN: "a data URI: s3://bucket/key, pvc://claim/path or file:///path",
    KEY_PATTERN: "a ConfigMap key: letters, digits, '-', '_' and '.'",
    GPU_TYPE_PATTERN: "a GPU model name: lowercase letters, digits and '-', e.g. a100",
}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one document."""

    file: str
    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line is not None else ""
        return f"{self.file}: {self.path}: {self.message}{where}"


@dataclass(frozen=True)
class Document:
    """One YAML document of a file, with the line of every field path."""

    index: int
    body: Any
    lines: dict[str, int]

    def line_of(self, path: str) -> int | None:
        """The line of ``path``, or of its nearest ancestor that is in the file."""
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            path = _parent(path)


def _parent(path: str) -> str:
    if path.endswith("]"):
        return path[: path.rindex("[")]
    return path.rsplit(".", 1)[0] if "." in path else ""


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _line_map(node: yaml.Node, path: str, out: dict[str, int]) -> None:
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = str(key.value)
            out[_join(path, name)] = key.start_mark.line + 1
            _line_map(value, _join(path, name), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[_join(path, i)] = item.start_mark.line + 1
            _line_map(item, _join(path, i), out)


def load_documents(text: str) -> Iterator[Document]:
    """Parse every non-empty YAML document of ``text``.

    Raises:
        yaml.YAMLError: the text is not valid YAML (the error carries the line).
    """
    loader = yaml.SafeLoader(text)
    try:
        index = 0
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            index += 1
            lines: dict[str, int] = {}
            _line_map(node, "", lines)
            body = loader.construct_document(node)
            if body is None:
                continue
            yield Document(index=index, body=body, lines=lines)
    finally:
        loader.dispose()


def _allowed_keys(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    """The camelCase keys a model accepts at ``loc`` (for 'unknown field' hints)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = next((f for n, f in current.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            return []
        current = _model_in(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or n for n, f in current.model_fields.items()]
    return []


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@functools.cache
def _schema(model: type[BaseModel]) -> dict[str, Any]:
    from tidetune.crdgen import openapi_schema

    return openapi_schema(model)


def _schema_at(model: type[BaseModel], loc: tuple[str | int, ...]) -> dict[str, Any]:
    node = _schema(model)
    for part in loc:
        node = (
            node.get("items", {})
            if isinstance(part, int)
            else node.get("properties", {}).get(part, {})
        )
    return node


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _range(node: dict[str, Any]) -> str | None:
    """'allowed: 1–256' (or '> 0 and ≤ 1') from a schema node's bounds."""
    lo, hi = node.get("minimum"), node.get("maximum")
    lo_open, hi_open = node.get("exclusiveMinimum", False), node.get("exclusiveMaximum", False)
    if lo is not None and hi is not None and not lo_open and not hi_open:
        return f"allowed: {_number(lo)}–{_number(hi)}"
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '≥'} {_number(lo)}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '≤'} {_number(hi)}")
    return f"allowed: {' and '.join(parts)}" if parts else None


def explain(error: dict[str, Any], model: type[BaseModel]) -> tuple[str, str]:
    """(field path, message) for one pydantic error, in the words users need."""
    loc: tuple[str | int, ...] = tuple(error["loc"])
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    kind = error["type"]
    got = error.get("input")
    path = ""
    for part in loc:
        path = _join(path, part)

    if kind == CROSS_FIELD_ERROR:
        for part in str(ctx.get("field", "")).split("."):
            if part:
                path = _join(path, part)
        return path, str(error["msg"])
    if kind == "missing":
        return path, "is required"
    if kind == "extra_forbidden":
        known = _allowed_keys(model, loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
        msg = "unknown field"
        if hint:
            msg += f"; did you mean {hint[0]}? Allowed here"
        elif known:
            msg += "; allowed here"
        if known:
            msg += f": {', '.join(known)}"
        return path, msg
    if kind in ("enum", "literal_error"):
        expected = str(ctx.get("expected", "")).replace("'", "")
        return path, f"got {_show(got)}; allowed: {expected}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {
            "greater_than_equal": "≥",
            "greater_than": ">",
            "less_than_equal": "≤",
            "less_than": "<",
        }[kind]
        limit = next(iter(ctx.values()))
        allowed = _range(_schema_at(model, loc))
        return path, f"got {_show(got)}; " + (allowed or f"must be {op} {_number(limit)}")
    if kind == "string_pattern_mismatch":
        words = _PATTERN_WORDS.get(str(ctx.get("pattern")), f"text matching {ctx.get('pattern')}")
        return path, f"got {_show(got)}; must be {words}"
    if kind in ("string_too_short", "string_too_long"):
        lo, hi = ctx.get("min_length"), ctx.get("max_length")
        limit = f"at least {lo}" if lo is not None else f"at most {hi}"
        return path, f"has {len(got) if isinstance(got, str) else '?'} characters; {limit} allowed"
    if kind in ("too_short", "too_long"):
        lo, hi = ctx.get("min_length"), ctx.get("max_length")
        limit = f"at least {lo}" if kind == "too_short" else f"at most {hi}"
        return path, f"has {ctx.get('actual_length')} items; {limit} allowed"
    if kind == "value_error":
        return path, str(error["msg"]).removeprefix("Value error, ")
    readable = {
        "int_parsing": "a whole number",
        "int_type": "a whole number",
        "int_from_float": "a whole number",
        "float_parsing": "a number",
        "float_type": "a number",
        "bool_parsing": "true or false",
        "bool_type": "true or false",
        "string_type": "text",
        "dict_type": "a mapping (key: value)",
        "model_type": "a mapping (key: value)",
        "model_attributes_type": "a mapping (key: value)",
        "list_type": "a list",
        "datetime_parsing": "an RFC 3339 time",
        "datetime_type": "an RFC 3339 time",
    }
    if kind in readable:
        return path, f"got {_show(got)}; expected {readable[kind]}"
    return path, str(error["msg"])


def check_document(doc: Document, file: str) -> list[Problem]:
    """Every problem of one document; empty when it is valid."""
    body = doc.body
    if not isinstance(body, dict):
        return [
            Problem(
                file,
                "(document)",
                f"document {doc.index} is not a mapping; expected a "
                "Kubernetes manifest with apiVersion, kind, metadata and spec",
                doc.line_of(""),
            )
        ]
    kind = body.get("kind")
    api_version = body.get("apiVersion")
    if (
        kind not in KINDS
        and isinstance(api_version, str)
        and not api_version.startswith(f"{GROUP}/")
    ):
        return []  # another product's kind (a ConfigMap beside a job, say): not ours to judge
    if kind not in KINDS:
        return [
            Problem(
                file,
                "kind",
                f"got {_show(kind)}; allowed: {', '.join(KINDS)}",
                doc.line_of("kind"),
            )
        ]
    model = KINDS[kind]
    try:
        model.model_validate(body)
    except ValidationError as err:
        problems = []
        for error in err.errors():
            path, message = explain(dict(error), model)
            if path == "apiVersion":
                message = f"got {_show(body.get('apiVersion'))}; allowed: {API_VERSION}"
            problems.append(Problem(file, path, message, doc.line_of(path)))
        return problems
    return []


def check_text(text: str, file: str) -> tuple[list[Problem], int]:
    """(problems, number of documents) for YAML text."""
    try:
        docs = list(load_documents(text))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(err, "problem", None) or str(err).splitlines()[0]
        return [Problem(file, "(yaml)", f"not valid YAML: {reason}", line)], 0
    if not docs:
        return [Problem(file, "(document)", "no manifest found; the file is empty")], 0
    problems: list[Problem] = []
    for doc in docs:
        problems.extend(check_document(doc, file))
    return problems, len(docs)


def check_file(path: str | Path) -> tuple[list[Problem], int]:
    """(problems, number of documents) for a file; unreadable files are a problem too."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return [Problem(name, "(file)", "no such file")], 0
    except IsADirectoryError:
        return [Problem(name, "(file)", "is a directory; name the YAML files in it")], 0
    except UnicodeDecodeError as err:
        return [Problem(name, "(file)", f"not UTF-8 text (byte {err.start})")], 0
    except OSError as err:
        return [Problem(name, "(file)", f"cannot read it: {err.strerror}")], 0
    return check_text(text, name)


def load_finetunejob(path: str | Path) -> FineTuneJob:
    """The single FineTuneJob in a file.

    Raises:
        ManifestError: the file is unreadable, invalid, or does not hold exactly one
            FineTuneJob; the message lists every problem.
    """
    problems, _ = check_file(path)
    if problems:
        raise ManifestError(problems)
    jobs = [
        doc.body
        for doc in load_documents(Path(path).read_text(encoding="utf-8"))
        if isinstance(doc.body, dict) and doc.body.get("kind") == FINETUNEJOB_KIND
    ]
    if len(jobs) != 1:
        raise ManifestError(
            [Problem(str(path), "kind", f"expected exactly one FineTuneJob, found {len(jobs)}")]
        )
    return FineTuneJob.model_validate(jobs[0])


class ManifestError(Exception):
    """A manifest is invalid; ``problems`` says where and why."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))
