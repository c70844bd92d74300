"""The job commands of the ``tidetune`` CLI (also ``kubectl tidetune …``): ``metrics``,
``logs``, ``compare``, ``copy``, ``cancel``, ``report``, ``publish``, ``chat``,
``generate`` and ``eval``. :func:`register` adds them to the main parser.

Every command prints one clear line and exits 1 when something is missing (the job, access
to its Secret, an artifact, a metric), exits 2 on a wrong command line, and never shows a
traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tidetune.jobs.source import JobError, JobView, NotWrittenYet, UsageError, Where
from tidetune.storage import StorageError

Handler = Callable[[argparse.Namespace], int]


def _where(args: argparse.Namespace) -> Where:
    return Where(
        workdir=args.workdir,
        kubeconfig=getattr(args, "kubeconfig", None),
        context=getattr(args, "context", None),
    )


def _guarded(name: str, fn: Handler) -> Handler:
    """Run a command; its failures become one line on stderr and an exit code."""

    def run(args: argparse.Namespace) -> int:
        from tidetune.jobs.series import SeriesError

        try:
            return fn(args)
        except UsageError as e:
            print(f"tidetune {name}: {e}", file=sys.stderr)
            return 2
        except (JobError, SeriesError, StorageError) as e:
            print(f"tidetune {name}: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
        except BrokenPipeError:
            return 0

    return run


def _where_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where the job is (default: the cluster of your kubeconfig)")
    g.add_argument(
        "--workdir",
        metavar="DIR",
        help="a local run: the folder `tidetune run --workdir` used",
    )
    g.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig (default $KUBECONFIG)")
    g.add_argument("--context", metavar="NAME", help="kubeconfig context")


def _check_smoothing(args: argparse.Namespace) -> float:
    """``--smooth`` out of range is a wrong command line (exit 2)."""
    from tidetune.jobs.series import SeriesError, check_weight

    try:
        return check_weight(args.smooth)
    except SeriesError as e:
        raise UsageError(str(e)) from None


def _smooth_arg(p: argparse.ArgumentParser, default: float = 0.6) -> None:
    p.add_argument(
        "--smooth",
        type=float,
        default=default,
        metavar="W",
        help=f"TensorBoard-like EMA smoothing weight, 0 (none) to 0.99 (default {default})",
    )


# --------------------------------------------------------------------------- metrics


def cmd_metrics(args: argparse.Namespace) -> int:
    from tidetune.jobs import series as S

    _check_smoothing(args)
    job = _where(args).find(args.job)
    lines = S.parse_lines(job.metrics_text())
    chosen = S.series(lines, args.metric)
    wrote = False
    if args.csv:
        text = S.to_csv(chosen, args.smooth)
        if args.csv == "-":
            sys.stdout.write(text)
        else:
            _write(Path(args.csv), text)
            print(f"wrote {args.csv} ({len(text.splitlines()) - 1} steps)", file=sys.stderr)
        wrote = True
    if args.png:
        from tidetune.jobs.plot import plot

        plot([(job.ref, chosen)], args.png, args.smooth, f"{job.ref} ({job.phase})")
        print(f"wrote {args.png}", file=sys.stderr)
        wrote = True
    if not wrote:
        print(f"{job.ref}  {job.phase}")
        sys.stdout.write(S.terminal_chart(chosen, args.smooth))
    return 0


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise JobError(f"cannot write {path}: {e.strerror or e}") from None


# --------------------------------------------------------------------------- logs


def cmd_logs(args: argparse.Namespace) -> int:
    from tidetune.jobs import logs

    where = _where(args)
    job = where.find(args.job)
    return logs.show(
        job, args.attempt, args.rank, args.follow, refresh=lambda: where.find(args.job)
    )


# --------------------------------------------------------------------------- compare


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: json.dumps(node) if isinstance(node, list) else node}


def spec_differences(jobs: Sequence[JobView]) -> list[tuple[str, list[Any]]]:
    flat = [_flatten(j.spec) for j in jobs]
    keys = sorted(set().union(*flat))
    return [
        (k, [f.get(k) for f in flat]) for k in keys if len({json.dumps(f.get(k)) for f in flat}) > 1
    ]


def compare_table(jobs: Sequence[JobView]) -> str:
    from tidetune.jobs.summary import fmt_num, fmt_seconds, summarize

    sums = [summarize(j) for j in jobs]
    rows: list[tuple[str, list[str]]] = [("phase", [s.phase for s in sums])]
    diffs = spec_differences(jobs)
    for key, values in diffs:
        rows.append((f"spec.{key}", [fmt_num(v) for v in values]))
    if not diffs:
        rows.append(("spec", ["(same spec)" for _ in sums]))
    rows.append(("duration", [fmt_seconds(s.seconds) for s in sums]))
    rows.append(("steps", [fmt_num(s.steps) for s in sums]))
    rows.append(("preemptions", [str(s.preemptions) for s in sums]))
    rows.append(
        (
            "GPU-hours est → actual",
            [f"{fmt_num(s.estimate.get('gpuHours'))} → {fmt_num(s.gpu_hours)}" for s in sums],
        )
    )
    rows.append(
        (
            "cost est → actual",
            [
                f"{fmt_num(s.estimate.get('cost'))} → {fmt_num(s.cost)} "
                f"{s.estimate.get('currency', '')}".rstrip()
                for s in sums
            ],
        )
    )
    names: list[str] = []
    for s in sums:
        names.extend(n for n in s.finals if n not in names)
    for name in names:
        rows.append((f"{name} final", [fmt_num(s.finals.get(name)) for s in sums]))
        if not any(name in s.bests for s in sums):
            continue  # tokens, learning rate, throughput: no "best"
        rows.append(
            (
                f"{name} best",
                [
                    f"{fmt_num(s.bests[name][1])} @{s.bests[name][0]}" if name in s.bests else "—"
                    for s in sums
                ],
            )
        )
    eval_keys: list[str] = []
    for s in sums:
        if s.evals:
            latest = s.evals[-1]
            for k in ("loss", "perplexity", *(latest.get("scores") or {})):
                if k not in eval_keys:
                    eval_keys.append(k)
    for k in eval_keys:
        values = []
        for s in sums:
            latest = s.evals[-1] if s.evals else {}
            v = latest.get(k, (latest.get("scores") or {}).get(k))
            values.append(fmt_num(v))
        rows.append((f"eval {k}", values))
    head = ["", *[s.ref for s in sums]]
    widths = [max(len(head[0]), *(len(r[0]) for r in rows))]
    for i in range(len(sums)):
        widths.append(max(len(head[i + 1]), *(len(r[1][i]) for r in rows)))
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip()]
    for label, values in rows:
        cells = [label, *values]
        out.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
    return "\n".join(out) + "\n"


def cmd_compare(args: argparse.Namespace) -> int:
    if args.png:
        _check_smoothing(args)
    where = _where(args)
    jobs: list[JobView] = [where.find(name) for name in args.jobs]
    if args.selector:
        seen = {j.ref for j in jobs}
        jobs += [j for j in where.select(args.selector, args.namespace) if j.ref not in seen]
    if len(jobs) < 2:
        raise UsageError("compare needs at least two jobs (names, or -l SELECTOR)")
    sys.stdout.write(compare_table(jobs))
    if args.png:
        from tidetune.jobs import series as S
        from tidetune.jobs.plot import plot

        groups = []
        for job in jobs:
            try:
                lines = S.parse_lines(job.metrics_text())
            except NotWrittenYet:
                continue
            names = [n for n in (args.metric or S.DEFAULT_METRICS) if n in S.available(lines)]
            if args.metric and len(names) < len(args.metric):
                S.series(lines, args.metric)  # raises: names the missing metric
            groups.append((job.ref, S.series(lines, names or None)))
        plot(groups, args.png, args.smooth, "compare")
        print(f"wrote {args.png}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- copy


def cmd_copy(args: argparse.Namespace) -> int:
    from tidetune.jobs.copy import copy_manifest, to_yaml
    from tidetune.jobs.source import JobRef
    from tidetune.manifests import check_text

    where = _where(args)
    job = where.find(args.job)
    new_ref = JobRef.parse(args.new)
    manifest = copy_manifest(
        job.body, new_ref.name, args.set or [], new_ref.namespace or job.namespace
    )
    text = to_yaml(manifest)
    problems, _ = check_text(text, args.new)
    if problems:
        for p in problems:
            print(p, file=sys.stderr)
        what = "applied" if args.apply else "printed"
        print(f"tidetune copy: the copy is not valid; nothing was {what}", file=sys.stderr)
        return 1
    if not args.apply:
        sys.stdout.write(text)
        return 0
    if args.workdir is not None:
        return _run_local_copy(args, manifest, text)
    from tidetune.api.constants import FINETUNEJOB_PLURAL, GROUP, VERSION
    from tidetune.jobs.source import _call

    ns = manifest["metadata"]["namespace"]
    _call(
        lambda: where.api.custom.create_namespaced_custom_object(
            GROUP, VERSION, ns, FINETUNEJOB_PLURAL, manifest
        ),
        f"cannot create {ns}/{new_ref.name}",
    )
    print(f"finetunejob.tidetune.io/{new_ref.name} created in {ns}")
    return 0


def _run_local_copy(args: argparse.Namespace, manifest: dict[str, Any], text: str) -> int:
    """Applying a copy of a local run means running it in the same folder."""
    path = Path(args.workdir) / f"{manifest['metadata']['name']}.yaml"
    _write(path, text)
    print(
        f"wrote {path}; running it: tidetune run {path} --workdir {args.workdir}", file=sys.stderr
    )
    from tidetune.cli import main

    return main(["run", str(path), "--workdir", args.workdir])


# --------------------------------------------------------------------------- cancel


def cmd_cancel(args: argparse.Namespace) -> int:
    job = _where(args).find(args.job)
    print(f"{job.ref}: {job.cancel()}")
    return 0


# --------------------------------------------------------------------------- report


def cmd_report(args: argparse.Namespace) -> int:
    from tidetune.jobs.report import render

    _check_smoothing(args)
    job = _where(args).find(args.job)
    _write(Path(args.output), render(job, args.smooth))
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- publish


def cmd_publish(args: argparse.Namespace) -> int:
    from tidetune.jobs.publish import publish_job

    job = _where(args).find(args.job)
    result = publish_job(
        job,
        registry=args.registry,
        model=args.model,
        artifact=args.artifact,
        copy_files=not args.reference_only,
    )
    print(
        f"{job.ref}: {result['artifact']} registered as {result['model']} version "
        f"{result['version']} in {result['registry']} (source {result['source']})"
    )
    return 0


# --------------------------------------------------------------------------- chat / generate / eval


def _delegate_model(name: str) -> Handler:
    def run(args: argparse.Namespace) -> int:
        try:
            from tidetune_trainer import playground
        except ImportError as err:
            raise JobError(
                f"{name} loads the model with torch and transformers ({err.name} is not "
                "installed); pip install 'tidetune[trainer]'"
            ) from None
        fn: Handler = getattr(playground, f"cmd_{name}")
        return fn(args)

    return run


# --------------------------------------------------------------------------- registration

EXAMPLES = {
    "metrics": """examples:
  tidetune metrics team-a/poetry-sft                       # terminal chart of loss and evalLoss
  tidetune metrics quickstart --workdir runs --smooth 0.9 --png loss.png
  tidetune metrics poetry-sft --metric learningRate --csv lr.csv""",
    "logs": """examples:
  tidetune logs team-a/poetry-sft -f                       # follow the running attempt
  tidetune logs poetry-sft --attempt 1 --rank 0            # an earlier attempt, one rank
  tidetune logs quickstart --workdir runs""",
    "compare": """examples:
  tidetune compare team-a/poetry-v1 team-a/poetry-v2
  tidetune compare -l group=poetry -n team-a --png curves.png""",
    "copy": """examples:
  tidetune copy team-a/poetry-sft poetry-lr3 --set hyperparameters.learningRate=3e-4
  tidetune copy poetry-sft poetry-b --set metadata.labels.group=poetry --apply
  tidetune copy quickstart quick-2 --workdir runs --set hyperparameters.maxSteps=20 --apply""",
    "cancel": """examples:
  tidetune cancel team-a/poetry-sft          # phase Cancelled; `kubectl delete` removes it
  tidetune cancel quickstart --workdir runs""",
    "report": """examples:
  tidetune report team-a/poetry-sft -o report.html
  tidetune report quickstart --workdir runs -o quickstart.html --smooth 0.8""",
    "publish": """examples:
  tidetune publish team-a/poetry-sft                        # as spec.output.publish says
  tidetune publish poetry-sft --registry http://mlflow:5000 --model poetry --artifact merged""",
    "chat": """examples:
  tidetune chat team-a/poetry-sft                           # its merged (or final) artifact
  tidetune chat quickstart --workdir runs --artifact checkpoint-40
  tidetune chat s3://artifacts/team-a/poetry-sft/UID/final/ --base s3://models/qwen2.5-1.5b/""",
    "generate": """examples:
  tidetune generate quickstart --workdir runs --data prompts.jsonl -o answers.jsonl""",
    "eval": """examples:
  tidetune eval quickstart --workdir runs --data heldout.jsonl --job quickstart
  tidetune eval team-a/poetry-sft --data s3://datasets/team-a/test.jsonl --job team-a/poetry-sft""",
}


def _parser(
    sub: Any, name: str, help_: str, description: str, fn: Handler
) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_,
        description=description,
        epilog=EXAMPLES[name],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=_guarded(name, fn))
    return p


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        metavar="MODEL",
        help="[NAMESPACE/]NAME of a job (its exported artifact), or the URI/path of an "
        "exported artifact folder",
    )
    p.add_argument(
        "--artifact",
        metavar="NAME",
        help="which artifact of the job: merged, final, checkpoint-N (default: merged if "
        "exported, else final)",
    )
    p.add_argument(
        "--base",
        metavar="URI",
        help="the base model for an adapter (default: the job's spec.baseModel.uri)",
    )
    p.add_argument("--max-new-tokens", type=int, default=128, metavar="N")
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default) decodes greedily")
    p.add_argument("--seed", type=int, default=0)
    _where_args(p)


def register(sub: Any) -> None:
    """Add the job commands to the main parser's subparsers."""
    p = _parser(
        sub,
        "metrics",
        "a job's metric curves: terminal chart, CSV, PNG",
        "The series from the job's metrics.jsonl (loss, evalLoss, learningRate, gradNorm, "
        "tokensPerSecond, rewards, …), smoothed like TensorBoard. Without --csv/--png a "
        "chart is drawn in the terminal.",
        cmd_metrics,
    )
    p.add_argument("job", metavar="[NAMESPACE/]NAME")
    p.add_argument(
        "--metric", action="append", metavar="NAME", help="a metric to show (repeatable)"
    )
    _smooth_arg(p)
    p.add_argument("--csv", metavar="FILE", help="write the series as CSV ('-': stdout)")
    p.add_argument("--png", metavar="FILE", help="plot the series to a PNG file (matplotlib)")
    _where_args(p)

    p = _parser(
        sub,
        "logs",
        "a job's logs, with its lifecycle",
        "Each rank's log interleaved with the job's timeline. The running attempt of a cluster "
        "job is read live from its pods; earlier attempts (and local runs) from the run "
        "location, where the trainer keeps each rank's log.",
        cmd_logs,
    )
    p.add_argument("job", metavar="[NAMESPACE/]NAME")
    p.add_argument("--attempt", type=int, metavar="N", help="which attempt (default: the latest)")
    p.add_argument("--rank", type=int, metavar="R", help="only this rank (default: all)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    _where_args(p)

    p = _parser(
        sub,
        "compare",
        "jobs side by side: spec differences, metrics, cost, duration",
        "The spec differences, final and best metrics, estimate vs actual GPU-hours and cost, "
        "duration, preemptions and the latest evaluation of two or more jobs.",
        cmd_compare,
    )
    p.add_argument("jobs", nargs="*", metavar="[NAMESPACE/]NAME")
    p.add_argument("-l", "--selector", metavar="SELECTOR", help="add the jobs with these labels")
    p.add_argument("-n", "--namespace", metavar="NS", help="namespace for -l (default: context's)")
    p.add_argument("--png", metavar="FILE", help="overlay their curves in a PNG")
    p.add_argument("--metric", action="append", metavar="NAME", help="curves for --png")
    _smooth_arg(p)
    _where_args(p)

    p = _parser(
        sub,
        "copy",
        "a new job from an old one, with changes",
        "Prints a new manifest made from JOB (no status, no server fields, the name NEW, "
        "spec.suspend and spec.cancelled reset), with each --set applied, after validating "
        "it. --apply creates it in the cluster (or, for a local run, runs it).",
        cmd_copy,
    )
    p.add_argument("job", metavar="[NAMESPACE/]NAME")
    p.add_argument("new", metavar="[NAMESPACE/]NEW")
    p.add_argument(
        "--set",
        action="append",
        metavar="PATH=VALUE",
        help="change a field (PATH under spec, or metadata.labels.KEY; VALUE is YAML; "
        "null removes it); repeatable",
    )
    p.add_argument("--apply", action="store_true", help="create (or run) the copy")
    _where_args(p)

    p = _parser(
        sub,
        "cancel",
        "stop a job for good, keeping its record and artifacts",
        "Sets spec.cancelled: the operator deletes the launched job (the trainer "
        "checkpoints on SIGTERM) and the phase becomes Cancelled; status, checkpoints and "
        "artifacts are kept. `kubectl delete ftj` remains the way to remove a job.",
        cmd_cancel,
    )
    p.add_argument("job", metavar="[NAMESPACE/]NAME")
    _where_args(p)

    p = _parser(
        sub,
        "report",
        "one self-contained HTML page about a job",
        "Overview, estimate vs actual, smoothed curves, timeline, checkpoints, artifacts and "
        "evaluations on one HTML page with no external files.",
        cmd_report,
    )
    p.add_argument("job", metavar="[NAMESPACE/]NAME")
    p.add_argument("-o", "--output", required=True, metavar="FILE")
    _smooth_arg(p)
    _where_args(p)

    p = _parser(
        sub,
        "publish",
        "register a job's exported model in a model registry (MLflow)",
        "Registers the job's exported artifact as a new version of a registered model "
        "(created when missing) in an MLflow model registry, with the base model, data URIs, "
        "method, hyperparameters, metrics and sha256. Defaults come from "
        "spec.output.publish.",
        cmd_publish,
    )
    p.add_argument("job", metavar="[NAMESPACE/]NAME")
    p.add_argument("--registry", metavar="URL", help="MLflow tracking server URL")
    p.add_argument("--model", metavar="NAME", help="registered model name")
    p.add_argument("--artifact", metavar="NAME", help="merged, final or checkpoint-N")
    p.add_argument(
        "--reference-only",
        action="store_true",
        help="register the artifact where it is instead of copying it to MLflow's store",
    )
    _where_args(p)

    p = _parser(
        sub,
        "chat",
        "talk to an exported model (streaming, with its chat template)",
        "Loads an exported artifact (merged, or base model plus adapter), applies its chat "
        "template and answers each line you type, streaming. Empty line or Ctrl-D ends.",
        _delegate_model("chat"),
    )
    _model_args(p)
    p.add_argument("--system", metavar="TEXT", help="a system message")

    p = _parser(
        sub,
        "generate",
        "answer a file of prompts with an exported model, to JSONL",
        "For each line of FILE (messages, or prompt-completion with a prompt column), the "
        "model's answer as one JSON line: the input plus `completion`.",
        _delegate_model("generate"),
    )
    _model_args(p)
    p.add_argument("--data", required=True, metavar="FILE", help="JSONL prompts")
    p.add_argument("-o", "--output", metavar="FILE", help="JSONL output (default: stdout)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N")

    p = _parser(
        sub,
        "eval",
        "loss, perplexity and scored generations on held-out data",
        "Loss and perplexity of the model on FILE (the job's data format), and its greedy "
        "answers scored against the reference answers with the reward presets "
        "(exact-match, numeric-match, contains-answer) and, with --job, the job's own "
        "preset rules. With --job the report is kept with the job (compare and report "
        "show it).",
        _delegate_model("eval"),
    )
    _model_args(p)
    p.add_argument("--data", required=True, metavar="FILE", help="held-out JSONL")
    p.add_argument(
        "--job", dest="eval_job", metavar="[NAMESPACE/]NAME", help="keep the report with this job"
    )
    p.add_argument("--limit", type=int, default=200, metavar="N", help="rows to score (200)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
