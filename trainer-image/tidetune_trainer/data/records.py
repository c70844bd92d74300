"""Reading and validating datasets: JSONL (one JSON object per line) or a JSON array.

Formats (``DataFormat``) and what a record looks like:

``messages``
    ``{"messages": [{"role": "system"|"user"|"assistant", "content": "…",
    "loss_weight": 1.0}, …]}``. Roles: an optional ``system`` message first, then
    ``user``/``assistant`` turns; the conversation must end with a non-empty assistant
    answer. ``loss_weight`` (optional, number ≥ 0, default 1) applies to assistant
    messages: 0 masks that message, other values scale its loss; on system/user messages
    it is accepted and ignored (their tokens never carry loss). At least one assistant
    message must carry loss.
``prompt-completion``
    ``{"prompt": "…", "completion": "…"}`` with configurable column names; the loss is
    on the completion, which must be non-empty.
``text``
    ``{"text": "…"}`` (continued pre-training); loss on every token; must be non-empty.
``preference``
    ``{"messages": [… prompt turns …, {"role": "assistant", "content": [{"text": "…",
    "score": 1.0}, {"text": "…", "score": 0.0}, …]}]}``: the last message is an
    assistant turn with at least two scored candidates; the highest score becomes
    ``chosen`` and the lowest ``rejected``. A tie for the highest or for the lowest score
    is an error (nothing singles out one answer).

Every line is checked; ``read_dataset`` raises ``DataValidationError`` listing problems as
``file:line: problem``. Blank lines are skipped (they hold no record); nothing else is.
Keys a format does not use are kept in the record's ``extra`` (``messages`` and
``prompt-completion``): reward rules read them (a reference answer, say).
"""

from __future__ import annotations

import bisect
import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias, get_args

from tidetune.storage import S3Credentials, StorageError, open_store

from .errors import DataConfigError, DataValidationError, Problem

DataFormat: TypeAlias = Literal["messages", "prompt-completion", "text", "preference"]
FORMATS: tuple[str, ...] = get_args(DataFormat)
ROLES = ("system", "user", "assistant")
MAX_LOSS_WEIGHT = 100.0
#: Files read when a dataset URI names a prefix.
DATA_SUFFIXES = (".jsonl", ".json")


@dataclass(frozen=True, slots=True)
class Columns:
    """Column names of the record formats (``prompt-completion`` ones are configurable)."""

    prompt: str = "prompt"
    completion: str = "completion"
    text: str = "text"
    messages: str = "messages"


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message; ``loss_weight`` matters for assistant messages only."""

    role: str
    content: str
    loss_weight: float = 1.0


@dataclass(frozen=True, slots=True)
class ChatRecord:
    """A ``messages`` record."""

    origin: str
    messages: tuple[Message, ...]
    #: the record's other keys (passed to reward rules)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def texts(self) -> Iterator[str]:
        """The texts in the record (for training a tokenizer)."""
        for m in self.messages:
            yield m.content


@dataclass(frozen=True, slots=True)
class PromptCompletionRecord:
    """A ``prompt-completion`` record."""

    origin: str
    prompt: str
    completion: str
    #: the record's other keys (passed to reward rules)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def texts(self) -> Iterator[str]:
        """The texts in the record (for training a tokenizer)."""
        yield self.prompt
        yield self.completion


@dataclass(frozen=True, slots=True)
class TextRecord:
    """A ``text`` record (continued pre-training)."""

    origin: str
    text: str

    def texts(self) -> Iterator[str]:
        """The texts in the record (for training a tokenizer)."""
        yield self.text


@dataclass(frozen=True, slots=True)
class PreferenceRecord:
    """A ``preference`` record: prompt turns plus the chosen and rejected answers."""

    origin: str
    prompt: tuple[Message, ...]
    chosen: str
    rejected: str
    chosen_score: float
    rejected_score: float

    def texts(self) -> Iterator[str]:
        """The texts in the record (for training a tokenizer)."""
        for m in self.prompt:
            yield m.content
        yield self.chosen
        yield self.rejected


Record: TypeAlias = ChatRecord | PromptCompletionRecord | TextRecord | PreferenceRecord


def check_format(fmt: str) -> DataFormat:
    """Return ``fmt`` if it is a known format, else raise ``DataConfigError``."""
    if fmt not in FORMATS:
        raise DataConfigError(f"unknown data format {fmt!r}; allowed: {', '.join(FORMATS)}")
    return fmt  # type: ignore[return-value]


# --------------------------------------------------------------------------- parsing


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _parse_message(
    m: Any, where: str, problems: list[str], *, candidates_ok: bool = False
) -> Message | list[tuple[str, float]] | None:
    """One message; candidates (a list content) are returned for the preference format."""
    if not isinstance(m, dict):
        problems.append(
            f"{where}: expected an object with 'role' and 'content', got {_type_name(m)}"
        )
        return None
    role = m.get("role")
    if "role" not in m:
        problems.append(f"{where}: missing 'role' (one of {', '.join(ROLES)})")
        return None
    if not isinstance(role, str) or role not in ROLES:
        problems.append(f"{where}: unknown role {role!r}; allowed: {', '.join(ROLES)}")
        return None
    weight = 1.0
    if "loss_weight" in m:
        w = m["loss_weight"]
        if not _is_number(w) or w < 0 or w > MAX_LOSS_WEIGHT:
            problems.append(
                f"{where}: loss_weight must be a number from 0 to {MAX_LOSS_WEIGHT:g}, got {w!r}"
            )
            return None
        weight = float(w)
    if "content" not in m or m["content"] is None:
        problems.append(f"{where} ({role}): missing 'content'")
        return None
    content = m["content"]
    if candidates_ok and role == "assistant" and isinstance(content, list):
        return _parse_candidates(content, where, problems)
    if not isinstance(content, str):
        want = "a string or a list of scored candidates" if candidates_ok else "a string"
        problems.append(f"{where} ({role}): 'content' must be {want}, got {_type_name(content)}")
        return None
    if role != "system" and not content.strip():
        problems.append(f"{where} ({role}): empty content")
        return None
    return Message(role, content, weight)


def _parse_candidates(
    content: list[Any], where: str, problems: list[str]
) -> list[tuple[str, float]] | None:
    out: list[tuple[str, float]] = []
    ok = True
    for j, c in enumerate(content):
        cw = f"{where}.content[{j}]"
        if not isinstance(c, dict):
            problems.append(
                f"{cw}: a candidate must be {{'text': …, 'score': …}}, got {_type_name(c)}"
            )
            ok = False
            continue
        text, score = c.get("text"), c.get("score")
        if not isinstance(text, str):
            problems.append(f"{cw}: 'text' must be a string, got {_type_name(text)}")
            ok = False
        elif not text.strip():
            problems.append(f"{cw}: empty candidate text")
            ok = False
        if not _is_number(score):
            problems.append(f"{cw}: 'score' must be a finite number, got {_type_name(score)}")
            ok = False
        if ok:
            out.append((str(text), float(c["score"])))
    if not ok:
        return None
    if len(out) < 2:
        problems.append(
            f"{where}: a preference needs at least two scored candidates, got {len(out)}"
        )
        return None
    return out


def _parse_messages(
    obj: dict[str, Any], col: str, problems: list[str], *, preference: bool
) -> tuple[list[Message], list[tuple[str, float]] | None] | None:
    if col not in obj:
        problems.append(f"missing key '{col}' (a list of messages)")
        return None
    msgs = obj[col]
    if not isinstance(msgs, list):
        problems.append(f"'{col}' must be a list of messages, got {_type_name(msgs)}")
        return None
    if not msgs:
        problems.append(f"'{col}' is empty")
        return None
    parsed: list[Message] = []
    candidates: list[tuple[str, float]] | None = None
    n_before = len(problems)
    for i, m in enumerate(msgs):
        last = i == len(msgs) - 1
        r = _parse_message(m, f"{col}[{i}]", problems, candidates_ok=preference and last)
        if isinstance(r, Message):
            if r.role == "system" and i != 0:
                problems.append(f"{col}[{i}]: a system message may only come first")
            parsed.append(r)
        elif isinstance(r, list):
            candidates = r
    if len(problems) > n_before:
        return None
    return parsed, candidates


def _parse_chat(
    obj: dict[str, Any], origin: str, cols: Columns, problems: list[str]
) -> Record | None:
    r = _parse_messages(obj, cols.messages, problems, preference=False)
    if r is None:
        return None
    msgs, _ = r
    roles = [m.role for m in msgs]
    if "assistant" not in roles:
        problems.append("no assistant message: a conversation needs an assistant answer to learn")
        return None
    if roles[-1] != "assistant":
        problems.append(
            f"the last message is '{roles[-1]}': a conversation must end with an assistant answer"
        )
        return None
    if not any(m.loss_weight > 0 for m in msgs if m.role == "assistant"):
        problems.append("every assistant message has loss_weight 0: nothing to learn")
        return None
    extra = {k: v for k, v in obj.items() if k != cols.messages}
    return ChatRecord(origin, tuple(msgs), extra)


def _parse_preference(
    obj: dict[str, Any], origin: str, cols: Columns, problems: list[str]
) -> Record | None:
    r = _parse_messages(obj, cols.messages, problems, preference=True)
    if r is None:
        return None
    msgs, cands = r
    if cands is None:
        problems.append(
            "the last message must be an assistant turn whose content is a list of scored "
            "candidates [{'text': …, 'score': …}, …]"
        )
        return None
    if not any(m.role == "user" for m in msgs):
        problems.append("no user message before the candidates: a preference needs a prompt")
        return None
    scores = [s for _, s in cands]
    hi, lo = max(scores), min(scores)
    if hi == lo:
        problems.append(f"all {len(cands)} candidates have the score {hi:g}: no chosen/rejected")
        return None
    top = [j for j, s in enumerate(scores) if s == hi]
    bottom = [j for j, s in enumerate(scores) if s == lo]
    for name, idx, val in (("highest", top, hi), ("lowest", bottom, lo)):
        if len(idx) > 1:
            problems.append(
                f"candidates {', '.join(str(j) for j in idx)} tie for the {name} score {val:g}; "
                "scores must single out one best and one worst answer"
            )
            return None
    return PreferenceRecord(origin, tuple(msgs), cands[top[0]][0], cands[bottom[0]][0], hi, lo)


def _string_column(
    obj: dict[str, Any], col: str, problems: list[str], *, allow_empty: bool
) -> str | None:
    if col not in obj:
        present = ", ".join(repr(k) for k in list(obj)[:8]) or "none"
        problems.append(f"missing column '{col}' (columns present: {present})")
        return None
    v = obj[col]
    if not isinstance(v, str):
        problems.append(f"column '{col}' must be a string, got {_type_name(v)}")
        return None
    if not allow_empty and not v.strip():
        problems.append(f"column '{col}' is empty")
        return None
    return v


def _parse_prompt_completion(
    obj: dict[str, Any], origin: str, cols: Columns, problems: list[str]
) -> Record | None:
    p = _string_column(obj, cols.prompt, problems, allow_empty=True)
    c = _string_column(obj, cols.completion, problems, allow_empty=False)
    if p is None or c is None:
        return None
    extra = {k: v for k, v in obj.items() if k not in (cols.prompt, cols.completion)}
    return PromptCompletionRecord(origin, p, c, extra)


def _parse_text(
    obj: dict[str, Any], origin: str, cols: Columns, problems: list[str]
) -> Record | None:
    t = _string_column(obj, cols.text, problems, allow_empty=False)
    return None if t is None else TextRecord(origin, t)


_PARSERS = {
    "messages": _parse_chat,
    "preference": _parse_preference,
    "prompt-completion": _parse_prompt_completion,
    "text": _parse_text,
}


def parse_record(
    obj: Any, fmt: DataFormat, origin: str, columns: Columns = Columns()
) -> tuple[Record | None, list[str]]:
    """Validate one decoded JSON value as a record of ``fmt``.

    Returns ``(record, [])`` or ``(None, problems)``; never raises for bad data.
    """
    problems: list[str] = []
    if not isinstance(obj, dict):
        return None, [f"expected a JSON object, got {_type_name(obj)}"]
    rec = _PARSERS[fmt](obj, origin, columns, problems)
    if rec is None and not problems:  # pragma: no cover - every None path adds a problem
        problems.append("invalid record")
    return rec, problems


# --------------------------------------------------------------------------- reading


_WS = re.compile(r"[ \t\n\r]*")


def _iter_json_array(text: str, source: str) -> Iterator[tuple[int, Any, str | None]]:
    """Yield ``(line, value, error)`` for each element of a JSON array document."""
    newlines = [m.start() for m in re.finditer("\n", text)]

    def line_of(pos: int) -> int:
        return bisect.bisect_right(newlines, pos - 1) + 1

    dec = json.JSONDecoder()
    pos = _WS.match(text, 0).end()  # type: ignore[union-attr]
    if pos >= len(text) or text[pos] != "[":
        yield line_of(pos), None, "a .json file must hold a JSON array of records"
        return
    pos = _WS.match(text, pos + 1).end()  # type: ignore[union-attr]
    if pos < len(text) and text[pos] == "]":
        return
    while True:
        try:
            value, end = dec.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            yield line_of(e.pos), None, f"malformed JSON: {e.msg} (column {e.colno})"
            return
        yield line_of(pos), value, None
        pos = _WS.match(text, end).end()  # type: ignore[union-attr]
        if pos < len(text) and text[pos] == ",":
            pos = _WS.match(text, pos + 1).end()  # type: ignore[union-attr]
            continue
        if pos < len(text) and text[pos] == "]":
            rest = text[pos + 1 :].strip()
            if rest:
                yield line_of(pos + 1), None, "unexpected text after the closing ']'"
            return
        yield line_of(pos), None, "malformed JSON: expected ',' or ']' after a record"
        return


def _iter_jsonl(data: bytes) -> Iterator[tuple[int, Any, str | None]]:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    loads = json.loads
    for i, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield i, None, f"not valid UTF-8 (byte {e.start}); save the file as UTF-8"
            continue
        try:
            yield i, loads(line), None
        except json.JSONDecodeError as e:
            yield i, None, f"malformed JSON: {e.msg} (column {e.colno})"
        except RecursionError:
            yield i, None, "malformed JSON: nested too deeply"


def iter_raw(data: bytes, source: str) -> Iterator[tuple[int, Any, str | None]]:
    """Decode a dataset's bytes: ``(line, value, error)`` per record.

    A document whose first non-blank character is ``[`` (or a ``.json`` file) is a JSON
    array; anything else is JSON Lines.
    """
    head = data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if head == b"[" or source.lower().endswith(".json"):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = data[: e.start].count(b"\n") + 1
            yield line, None, f"not valid UTF-8 (byte {e.start}); save the file as UTF-8"
            return
        yield from _iter_json_array(text, source)
    else:
        yield from _iter_jsonl(data)


def parse_dataset(
    data: bytes,
    source: str,
    fmt: DataFormat,
    columns: Columns = Columns(),
) -> tuple[list[Record], list[Problem]]:
    """Parse and validate every record of a dataset's bytes; never raises for bad data."""
    fmt = check_format(fmt)
    parser = _PARSERS[fmt]
    records: list[Record] = []
    problems: list[Problem] = []
    n = 0
    for line, obj, err in iter_raw(data, source):
        n += 1
        if err is not None:
            problems.append(Problem(source, line, err))
            continue
        if not isinstance(obj, dict):
            problems.append(Problem(source, line, f"expected a JSON object, got {_type_name(obj)}"))
            continue
        found: list[str] = []
        rec = parser(obj, f"{source}:{line}", columns, found)
        if rec is None:
            problems.extend(Problem(source, line, p) for p in found or ["invalid record"])
        else:
            records.append(rec)
    if n == 0:
        problems.append(Problem(source, 0, "the file holds no records"))
    return records, problems


def load_dataset(
    uri: str,
    fmt: DataFormat,
    columns: Columns = Columns(),
    credentials: S3Credentials | None = None,
) -> tuple[list[Record], list[Problem]]:
    """Read ``uri`` from any object store and validate every record.

    ``uri`` names a file, or a prefix (folder) whose ``.jsonl``/``.json`` files are read in
    sorted order, each with its own line numbers. Returns records and problems; raises
    ``StorageError`` when nothing can be read.
    """
    store, key = open_store(uri, credentials)
    if key and store.exists(key):
        return parse_dataset(store.read_bytes(key), uri, fmt, columns)
    files = [k for k in store.list(key) if k.lower().endswith(DATA_SUFFIXES)]
    if not files:
        raise StorageError(
            f"{uri}: no such dataset file, and no {'/'.join(DATA_SUFFIXES)} files under it; "
            "check the URI",
            uri=uri,
        )
    records: list[Record] = []
    problems: list[Problem] = []
    for k in files:
        r, p = parse_dataset(store.read_bytes(k), store.uri(k), fmt, columns)
        records += r
        problems += p
    return records, problems


def read_dataset(
    uri: str,
    fmt: DataFormat,
    columns: Columns = Columns(),
    credentials: S3Credentials | None = None,
) -> list[Record]:
    """Read and validate ``uri``; raise ``DataValidationError`` if any line is bad."""
    records, problems = load_dataset(uri, fmt, columns, credentials)
    if problems:
        raise DataValidationError(problems)
    return records


def record_texts(records: Sequence[Record]) -> Iterator[str]:
    """Every text of every record, in order (for training a tokenizer)."""
    for r in records:
        yield from r.texts()
