"""Reward rules for GRPO/PPO: built-in presets with parameters, and the weighted total.

A rule scores a batch: ``rule(prompts, completions, columns) -> list[float]`` where
``columns`` maps each dataset column to one value per completion (the dataset's extra
columns pass through, plus ``reference``: the completion column of a
``prompt-completion`` row or the last assistant message of a ``messages`` row). The
job's reward is ``Σ weight_i × rule_i`` (``spec.rl.rewards`` in order).

Presets (a registry, :data:`PRESETS`; each may appear more than once with other params):

``exact-match``
    1 when the extracted answer equals the extracted reference (whitespace-trimmed,
    case-insensitive unless ``caseSensitive``), else 0.
``numeric-match``
    1 when both extracted answers are numbers within ``tolerance`` (``1,234`` and
    ``1234`` and ``3/4`` and ``0.75`` read as numbers), else 0.
``contains-answer``
    1 when the completion contains the extracted reference, else 0.
``regex-match``
    1 when ``pattern`` matches (``re.search``; ``fullMatch`` for the whole text).
``contains-all`` / ``contains-any``
    the share of ``values`` found (all) / 1 if any is found (any).
``json-valid``
    1 when the completion (or the first fenced ```json block in it) parses as JSON and,
    with ``schema``, validates against that JSON Schema; else 0.
``think-format``
    1 for ``<think>…</think>`` followed by a non-empty answer, else 0.
``length-target``
    ``max(0, 1 - |len - target| / target)`` in ``unit`` (chars or words).
``length-penalty``
    0 up to ``target`` (default 200), then falling linearly to -1 at twice the target.

Answer extraction (``extract``): ``auto`` takes ``\\boxed{…}`` if present, else the text
after the last ``####``, else (numeric-match) the last number, else the whole text;
``last-number``, ``boxed``, ``after-hashes``, ``last-line``, ``none`` (the whole text).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from tidetune_trainer.errors import BadInputError

#: A rule's batch function: (prompts, completions, columns) -> one score per completion.
RuleFn = Callable[[Sequence[str], Sequence[str], Mapping[str, Sequence[Any]]], list[float]]

REFERENCE = "reference"

_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|[-+]?\.\d+")
_HASHES = "####"


class RewardError(BadInputError):
    """A reward rule failed; the message names the rule (``spec.rl.rewards[i]``)."""


# --------------------------------------------------------------------------- extraction


def boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{…}`` (nested braces balanced), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i = start + len("\\boxed{")
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


def after_hashes(text: str) -> str | None:
    """The text after the last ``####`` (GSM8K style), or None."""
    k = text.rfind(_HASHES)
    return None if k < 0 else text[k + len(_HASHES) :].strip()


def last_number(text: str) -> str | None:
    """The last number in the text (``-1,234.5``, ``3/4``), or None."""
    found = _NUMBER.findall(text)
    return found[-1] if found else None


def last_line(text: str) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return lines[-1].strip() if lines else ""


def extract(text: str, how: str, *, numeric: bool = False) -> str | None:
    """The answer in ``text`` by the ``extract`` setting (see the module doc)."""
    if how == "none":
        return text
    if how == "boxed":
        return boxed(text)
    if how == "after-hashes":
        return after_hashes(text)
    if how == "last-number":
        return last_number(text)
    if how == "last-line":
        return last_line(text)
    # auto
    for found in (boxed(text), after_hashes(text)):
        if found is not None:
            return last_number(found) if numeric and last_number(found) is not None else found
    return last_number(text) if numeric else text


def to_number(text: str | None) -> float | None:
    """A number from an extracted answer (``1,234``, ``-3.5``, ``3/4``, ``$12``), or None."""
    if text is None:
        return None
    t = text.strip().strip("$").replace(",", "").rstrip(".")
    try:
        if "/" in t:
            return float(Fraction(t))
        v = float(t)
    except (ValueError, ZeroDivisionError):
        n = last_number(text)
        if n is None or n == text:
            return None
        return to_number(n)
    return v if math.isfinite(v) else None


def _norm(s: str, case_sensitive: bool) -> str:
    s = " ".join(s.strip().split())
    return s if case_sensitive else s.casefold()


def _length(text: str, unit: str) -> int:
    return len(text.split()) if unit == "words" else len(text)


# --------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class Params:
    """A preset's parameters (``spec.rl.rewards[].params``), with the API's defaults."""

    column: str | None = None
    extract: str = "auto"
    pattern: str | None = None
    full_match: bool = False
    values: tuple[str, ...] = ()
    case_sensitive: bool = False
    tolerance: float = 1e-6
    schema: str | None = None
    target: int | None = None
    unit: str = "chars"

    @classmethod
    def from_spec(cls, p: Any) -> Params:
        if p is None:
            return cls()
        return cls(
            column=p.column,
            extract=str(getattr(p.extract, "value", p.extract)),
            pattern=p.pattern,
            full_match=p.full_match,
            values=tuple(p.values or ()),
            case_sensitive=p.case_sensitive,
            tolerance=p.tolerance,
            schema=p.json_schema,
            target=p.target,
            unit=p.unit,
        )


def _references(p: Params, columns: Mapping[str, Sequence[Any]], n: int, name: str) -> list[str]:
    col = p.column or REFERENCE
    if col not in columns:
        have = ", ".join(sorted(columns)) or "none"
        raise RewardError(
            f"{name}: the data has no column {col!r} to compare with (columns: {have}); "
            "set params.column to one of them"
        )
    vals = columns[col]
    if len(vals) != n:
        raise RewardError(f"{name}: column {col!r} has {len(vals)} values for {n} completions")
    return ["" if v is None else v if isinstance(v, str) else json.dumps(v) for v in vals]


def _each(fn: Callable[[str], float]) -> RuleFn:
    """A rule that scores each completion by itself with ``fn``."""

    def score(
        prompts: Sequence[str], comps: Sequence[str], cols: Mapping[str, Sequence[Any]]
    ) -> list[float]:
        return [fn(c) for c in comps]

    return score


def _against_reference(p: Params, name: str, match: Callable[[str, str], bool]) -> RuleFn:
    """A rule that scores 1.0 where ``match(completion, reference)``, else 0.0; the
    references are the data's ``params.column`` (see :func:`_references`)."""

    def score(
        prompts: Sequence[str], comps: Sequence[str], cols: Mapping[str, Sequence[Any]]
    ) -> list[float]:
        refs = _references(p, cols, len(comps), name)
        return [1.0 if match(c, r) else 0.0 for c, r in zip(comps, refs, strict=True)]

    return score


def _exact(p: Params, name: str) -> RuleFn:
    def match(c: str, r: str) -> bool:
        a, b = extract(c, p.extract), extract(r, p.extract)
        return (
            a is not None
            and b is not None
            and _norm(a, p.case_sensitive) == _norm(b, p.case_sensitive)
        )

    return _against_reference(p, name, match)


def _numeric(p: Params, name: str) -> RuleFn:
    def match(c: str, r: str) -> bool:
        a = to_number(extract(c, p.extract, numeric=True))
        b = to_number(extract(r, p.extract, numeric=True))
        return a is not None and b is not None and abs(a - b) <= p.tolerance

    return _against_reference(p, name, match)


def _contains_answer(p: Params, name: str) -> RuleFn:
    def match(c: str, r: str) -> bool:
        b = extract(r, p.extract)
        return bool(b and b.strip()) and _norm(b or "", p.case_sensitive) in _norm(
            c, p.case_sensitive
        )

    return _against_reference(p, name, match)


def _regex(p: Params, name: str) -> RuleFn:
    assert p.pattern is not None
    try:
        rx = re.compile(p.pattern, 0 if p.case_sensitive else re.IGNORECASE)
    except re.error as e:
        raise RewardError(
            f"{name}: params.pattern is not a valid regular expression: {e}"
        ) from None
    m = rx.fullmatch if p.full_match else rx.search
    return _each(lambda c: 1.0 if m(c.strip() if p.full_match else c) else 0.0)


def _contains(p: Params, name: str, *, every: bool) -> RuleFn:
    values = [_norm(v, p.case_sensitive) for v in p.values]

    def one(c: str) -> float:
        text = _norm(c, p.case_sensitive)
        hits = sum(1 for v in values if v in text)
        return hits / len(values) if every else (1.0 if hits else 0.0)

    return _each(one)


_FENCE = re.compile(r"```(?:json)?\s*\n(.*?)```", re.DOTALL)


def _json_valid(p: Params, name: str) -> RuleFn:
    validator: Any = None
    if p.schema is not None:
        try:
            schema = json.loads(p.schema)
        except json.JSONDecodeError as e:
            raise RewardError(f"{name}: params.schema is not JSON: {e}") from None
        import jsonschema

        try:
            cls = jsonschema.validators.validator_for(schema)
            cls.check_schema(schema)
        except jsonschema.SchemaError as e:
            raise RewardError(
                f"{name}: params.schema is not a valid JSON Schema: {e.message}"
            ) from None
        validator = cls(schema)

    def parse(text: str) -> tuple[bool, Any]:
        for candidate in (text.strip(), *(m.strip() for m in _FENCE.findall(text))):
            try:
                return True, json.loads(candidate)
            except (json.JSONDecodeError, RecursionError):
                continue
        return False, None

    def one(c: str) -> float:
        ok, value = parse(c)
        if ok and validator is not None:
            ok = validator.is_valid(value)
        return 1.0 if ok else 0.0

    return _each(one)


_THINK = re.compile(r"^\s*<think>(.+?)</think>\s*(\S.*)$", re.DOTALL)


def _think(p: Params, name: str) -> RuleFn:
    return _each(lambda c: 1.0 if _THINK.match(c) else 0.0)


def _length_target(p: Params, name: str) -> RuleFn:
    assert p.target is not None
    target = p.target
    return _each(lambda c: max(0.0, 1.0 - abs(_length(c, p.unit) - target) / target))


def _length_penalty(p: Params, name: str) -> RuleFn:
    free = p.target or 200
    return _each(lambda c: -min(1.0, max(0.0, _length(c, p.unit) - free) / free))


#: preset name → factory(params, rule name) -> RuleFn (the registry of built-in rules)
PRESETS: dict[str, Callable[[Params, str], RuleFn]] = {
    "exact-match": _exact,
    "numeric-match": _numeric,
    "contains-answer": _contains_answer,
    "regex-match": _regex,
    "contains-all": lambda p, n: _contains(p, n, every=True),
    "contains-any": lambda p, n: _contains(p, n, every=False),
    "json-valid": _json_valid,
    "think-format": _think,
    "length-target": _length_target,
    "length-penalty": _length_penalty,
}


def preset_rule(preset: str, params: Params, name: str) -> RuleFn:
    """The batch function of a preset; :class:`RewardError` for an unknown one or bad params."""
    factory = PRESETS.get(preset)
    if factory is None:
        raise RewardError(f"{name}: unknown preset {preset!r}; allowed: {', '.join(PRESETS)}")
    return factory(params, name)


# --------------------------------------------------------------------------- the total


def check_scores(name: str, scores: Any, n: int) -> list[float]:
    """``scores`` as ``n`` finite floats, or :class:`RewardError` saying what is wrong."""
    if not isinstance(scores, (list, tuple)):
        raise RewardError(
            f"{name}: returned {type(scores).__name__}; expected a list of {n} numbers "
            "(one per completion)"
        )
    if len(scores) != n:
        raise RewardError(f"{name}: returned {len(scores)} scores for {n} completions")
    out: list[float] = []
    for i, s in enumerate(scores):
        if isinstance(s, bool) or not isinstance(s, (int, float)):
            raise RewardError(
                f"{name}: score {i} is {type(s).__name__} ({s!r:.40}); expected a number"
            )
        v = float(s)
        if not math.isfinite(v):
            raise RewardError(f"{name}: score {i} is {v}; scores must be finite")
        out.append(v)
    return out


@dataclass
class Rule:
    """One weighted rule of the job (``name`` is ``spec.rl.rewards[i] (what)``)."""

    name: str
    weight: float
    fn: RuleFn
    kind: str = "preset"


@dataclass
class RewardSet:
    """The job's rules; :meth:`score` gives every rule's scores and the weighted totals."""

    rules: list[Rule] = field(default_factory=list)

    def score(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        columns: Mapping[str, Sequence[Any]],
    ) -> tuple[list[list[float]], list[float]]:
        """(per-rule scores ``[rule][completion]``, totals ``[completion]``)."""
        n = len(completions)
        per_rule: list[list[float]] = []
        for r in self.rules:
            try:
                raw = r.fn(prompts, completions, columns)
            except RewardError:
                raise
            except Exception as e:  # a preset's own bug or bad data: name the rule
                raise RewardError(f"{r.name}: {type(e).__name__}: {e}") from e
            per_rule.append(check_scores(r.name, raw, n))
        totals = [
            math.fsum(r.weight * s[i] for r, s in zip(self.rules, per_rule, strict=True))
            for i in range(n)
        ]
        return per_rule, totals

    def close(self) -> None:
        for r in self.rules:
            closer = getattr(r.fn, "close", None)
            if callable(closer):
                closer()


def rule_name(i: int, what: str) -> str:
    return f"spec.rl.rewards[{i}] ({what})"


def build_presets(rewards: Sequence[Any]) -> list[Rule | None]:
    """Rules for the presets of ``spec.rl.rewards`` (None where a rule is a function)."""
    out: list[Rule | None] = []
    for i, r in enumerate(rewards):
        if r.preset is None:
            out.append(None)
            continue
        preset = str(getattr(r.preset, "value", r.preset))
        name = rule_name(i, preset)
        out.append(
            Rule(name, float(r.weight), preset_rule(preset, Params.from_spec(r.params), name))
        )
    return out
