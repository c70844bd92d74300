"""``tidetune rewards test JOB.yaml --data FILE [--completions FILE] [--json]``.

Runs the job's reward rules — presets here, users' functions in the same sandbox as
training (:mod:`tidetune_trainer.rl.sandbox`) — on sample rows and prints each rule's
score and the weighted total per completion. The functions' sources are the ConfigMaps
in the job's file.

``--data`` is a dataset in the job's format (its columns reach the rules);
``--completions`` is JSON Lines with one completion per data row, each line a JSON
string or ``{"completion": "…"}`` (or ``{"completions": ["…", …]}`` for several per
row). Without it, each row's reference answer is scored (a correct answer should get
the full reward). Exit 0 when every rule ran, 1 with the rule's error otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="tidetune rewards test",
        description="Run a job's reward rules on sample rows, in the training sandbox.",
    )
    p.add_argument("job", metavar="JOB.yaml", help="the job (and its reward ConfigMaps)")
    p.add_argument("--data", required=True, metavar="FILE", help="sample rows (the job's format)")
    p.add_argument("--completions", metavar="FILE", help="completions to score (JSON Lines)")
    p.add_argument("--limit", type=int, default=20, help="rows to score (default 20)")
    p.add_argument("--json", action="store_true", help="print the scores as JSON")
    return p.parse_args(list(argv))


def read_completions(path: Path, rows: int) -> list[list[str]]:
    """Completions per row from a JSON Lines file (see the module doc)."""
    out: list[list[str]] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            v = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: malformed JSON: {e.msg}") from None
        if isinstance(v, str):
            out.append([v])
        elif isinstance(v, dict) and isinstance(v.get("completion"), str):
            out.append([v["completion"]])
        elif (
            isinstance(v, dict)
            and isinstance(v.get("completions"), list)
            and all(isinstance(c, str) for c in v["completions"])
        ):
            out.append(list(v["completions"]))
        else:
            raise ValueError(
                f'{path}:{n}: expected a JSON string, {{"completion": "…"}} or '
                '{"completions": ["…", …]}'
            )
    if len(out) < rows:
        raise ValueError(f"{path}: {len(out)} line(s) of completions for {rows} data row(s)")
    return out[:rows]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    err = sys.stderr
    from tidetune.storage import StorageError
    from tidetune_trainer.data.errors import DataError
    from tidetune_trainer.data.prepare import DataSettings
    from tidetune_trainer.data.records import read_dataset
    from tidetune_trainer.errors import BadInputError
    from tidetune_trainer.rl.data import rule_inputs
    from tidetune_trainer.rl.rewards import RewardError
    from tidetune_trainer.rl.rules import build_reward_set, configmaps_in_file
    from tidetune_trainer.session import load_job

    try:
        job = load_job(args.job)
    except BadInputError as e:
        print(str(e), file=err)
        return 1
    spec = job.spec
    if spec.rl is None:
        print(f"{args.job}: spec.rl: the job has no reward rules (method {spec.method})", file=err)
        return 1
    settings = DataSettings.from_spec(spec)
    data = Path(args.data).resolve()
    try:
        records = read_dataset(f"file://{data}", settings.format, settings.columns)[: args.limit]
        rows = [rule_inputs(r, settings.columns.completion) for r in records]
        if args.completions:
            comps = read_completions(Path(args.completions), len(rows))
        else:
            comps = [[str(cols.get("reference", ""))] for _, cols in rows]
    except (DataError, StorageError, ValueError) as e:
        print(str(e), file=err)
        return 1
    prompts: list[str] = []
    completions: list[str] = []
    columns: dict[str, list[Any]] = {}
    keys = sorted({k for _, cols in rows for k in cols})
    for (prompt, cols), cs in zip(rows, comps, strict=True):
        for c in cs:
            prompts.append(prompt)
            completions.append(c)
            for k in keys:
                columns.setdefault(k, []).append(cols.get(k))
    rewards = None
    try:
        rewards = build_reward_set(spec.rl, lambda n, k: configmaps_in_file(args.job).get((n, k)))
        per_rule, totals = rewards.score(prompts, completions, columns)
        printed = []
        for r in rewards.rules:
            box = getattr(r.fn, "sandbox", None)
            if box is not None:
                printed.append((r.name, box.last_logs.get(getattr(r.fn, "index", -1), "")))
        printed = [(n, t) for n, t in printed if t.strip()]
    except RewardError as e:
        print(str(e), file=err)
        return 1
    finally:
        if rewards is not None:
            rewards.close()
    names = [r.name for r in rewards.rules]
    weights = [r.weight for r in rewards.rules]
    if args.json:
        print(
            json.dumps(
                {
                    "rules": [
                        {"name": n, "weight": w} for n, w in zip(names, weights, strict=True)
                    ],
                    "scores": [
                        {
                            "prompt": p,
                            "completion": c,
                            "rewards": [s[i] for s in per_rule],
                            "reward": totals[i],
                        }
                        for i, (p, c) in enumerate(zip(prompts, completions, strict=True))
                    ],
                    "output": dict(printed),
                },
                indent=1,
            )
        )
        return 0
    for i, (n, w) in enumerate(zip(names, weights, strict=True)):
        print(f"rule {i}: {n} × {w:g}")
    header = "  ".join(f"{'r' + str(i):>7}" for i in range(len(names)))
    print(f"{'#':>3}  {header}  {'reward':>8}  completion")
    for j, c in enumerate(completions):
        cells = "  ".join(f"{s[j]:7.3f}" for s in per_rule)
        short = c.replace("\n", "⏎")
        short = short if len(short) <= 60 else short[:57] + "…"
        print(f"{j:>3}  {cells}  {totals[j]:8.3f}  {short}")
    mean = sum(totals) / len(totals) if totals else float("nan")
    print(f"mean reward {mean:.4f} over {len(totals)} completion(s)")
    for name, logs in printed:
        print(f"output of {name}:\n{logs.rstrip()}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
