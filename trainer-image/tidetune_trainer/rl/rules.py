"""The job's reward rules from its spec: presets in the trainer, functions in the sandbox.

Where a function's source comes from:

- on a cluster, the operator mounts each referenced ConfigMap at
  ``/etc/tidetune-rewards/<configmap>/`` (``TIDETUNE_REWARD_SOURCES`` names the folder);
- ``tidetune run`` and ``tidetune rewards test`` read the ConfigMaps from the same
  multi-document YAML file as the job (``tidetune run`` copies them into the run folder
  and points ``TIDETUNE_REWARD_SOURCES`` there).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tidetune.layout import REWARD_SOURCES_ENV
from tidetune.layout import REWARD_SOURCES_MOUNT as DEFAULT_REWARD_SOURCES
from tidetune_trainer.rl.rewards import RewardError, RewardSet, Rule, build_presets, rule_name
from tidetune_trainer.rl.sandbox import Limits, Sandbox, UserFunction

#: (configmap name, key) -> the source text, or None when missing
SourceLookup = Callable[[str, str], str | None]


def configmaps_in_file(path: str | os.PathLike[str]) -> dict[tuple[str, str], str]:
    """Every ``ConfigMap`` data key of a multi-document YAML file."""
    out: dict[tuple[str, str], str] = {}
    with open(path, encoding="utf-8") as f:
        for doc in yaml.safe_load_all(f):
            if isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
                name = str((doc.get("metadata") or {}).get("name", ""))
                for k, v in (doc.get("data") or {}).items():
                    out[(name, str(k))] = str(v)
    return out


def write_sources(sources: Mapping[tuple[str, str], str], folder: Path) -> None:
    """Lay ConfigMap keys out as ``folder/<name>/<key>`` (what a cluster mount gives)."""
    for (name, key), text in sources.items():
        p = folder / name / key
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")


def sources_from_dir(folder: str | os.PathLike[str] | None = None) -> SourceLookup:
    """A lookup reading ``<folder>/<configmap>/<key>`` (default: the mount point)."""
    base = Path(folder or os.environ.get(REWARD_SOURCES_ENV) or DEFAULT_REWARD_SOURCES)

    def lookup(name: str, key: str) -> str | None:
        p = base / name / key
        try:
            return p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None

    return lookup


def function_name(i: int, fn: Any) -> str:
    ref = fn.config_map_ref
    return rule_name(i, f"{ref.name}/{ref.key}:{fn.entrypoint}")


def build_reward_set(
    rl: Any, lookup: SourceLookup, *, limits: Limits | None = None, python: str | None = None
) -> RewardSet:
    """The rules of ``spec.rl`` in order. Functions are loaded into one sandbox (started
    here; :meth:`RewardSet.close` stops it). Raises :class:`RewardError` for a missing
    ConfigMap key, a function that does not load or unmet requirements."""
    presets = build_presets(rl.rewards)
    functions: list[UserFunction] = []
    slots: list[int] = []
    for i, r in enumerate(rl.rewards):
        if r.function is None:
            continue
        fn = r.function
        name = function_name(i, fn)
        ref = fn.config_map_ref
        source = lookup(ref.name, ref.key)
        if source is None:
            raise RewardError(
                f"{name}: no source: ConfigMap {ref.name!r} key {ref.key!r} was not found "
                "(on a cluster it must exist in the job's namespace; with tidetune run, put "
                "the ConfigMap in the same file as the job)"
            )
        functions.append(UserFunction(name, ref.key, source, fn.entrypoint, tuple(fn.requirements)))
        slots.append(i)
    rules: list[Rule] = []
    sandbox: Sandbox | None = None
    if functions:
        sandbox = Sandbox.start(
            functions, limits or Limits.from_spec(getattr(rl, "reward_runtime", None)), python
        )
    k = 0
    for i, r in enumerate(rl.rewards):
        preset = presets[i]
        if preset is not None:
            rules.append(preset)
            continue
        assert sandbox is not None
        rules.append(Rule(functions[k].name, float(r.weight), sandbox.rule(k), kind="function"))
        k += 1
    return RewardSet(rules)


def columns_of(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Column-wise view of row dicts (keys missing in a row give None)."""
    keys: list[str] = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    return {k: [r.get(k) for r in rows] for k in keys}
