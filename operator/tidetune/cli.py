"""The ``tidetune`` command line.

``validate``, ``crds`` and the job commands (:mod:`tidetune.jobs.cli`: ``metrics``,
``logs``, ``compare``, ``copy``, ``cancel``, ``report``, ``publish``) need only this light
package (plus the kubernetes client for cluster jobs, matplotlib for PNGs). ``run``,
``data stats``, ``data preview``, ``chat``, ``generate`` and ``eval`` need the trainer
(torch, transformers): they are imported only when called, so the operator image ships
the same CLI without torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from tidetune import __version__


def _validate(args: argparse.Namespace) -> int:
    from tidetune.manifests import check_file

    bad = 0
    for name in args.files:
        problems, count = check_file(name)
        for problem in problems:
            print(problem, file=sys.stdout)
        if problems:
            bad += 1
        elif not args.quiet:
            print(f"{name}: ok ({count} document{'s' if count != 1 else ''})", file=sys.stderr)
    return 1 if bad else 0


def _crds(args: argparse.Namespace) -> int:
    from tidetune.crdgen import render_all

    rendered = render_all()
    if args.check is not None:
        drifted = []
        for name, text in rendered.items():
            target = Path(args.check) / name
            if not target.exists() or target.read_text(encoding="utf-8") != text:
                drifted.append(str(target))
        for path in drifted:
            print(f"{path}: differs from the models; run `tidetune crds --write {args.check}`")
        return 1 if drifted else 0
    if args.write is not None:
        out = Path(args.write)
        try:
            out.mkdir(parents=True, exist_ok=True)
            for name, text in rendered.items():
                (out / name).write_text(text, encoding="utf-8")
                print(f"wrote {out / name}", file=sys.stderr)
        except OSError as e:
            print(
                f"tidetune crds: cannot write {e.filename or out}: {e.strerror or e}",
                file=sys.stderr,
            )
            return 1
        return 0
    sys.stdout.write("---\n".join(rendered.values()))
    return 0


def _delegate(module: str, argv: list[str]) -> int:
    try:
        mod = importlib.import_module(module)
    except ImportError as err:
        print(
            f"tidetune: this command needs the trainer ({err.name} is not installed); "
            "install it with: pip install 'tidetune[trainer]'",
            file=sys.stderr,
        )
        return 2
    result: int = mod.main(argv)
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tidetune",
        description="Fine-tune LLMs on a Kubernetes cluster's idle GPUs.",
        epilog="""examples:
  tidetune run examples/quickstart.yaml --workdir runs
  tidetune metrics quickstart --workdir runs --png loss.png
  tidetune compare team-a/poetry-v1 team-a/poetry-v2

`tidetune COMMAND --help` shows each command's options and examples. Exit codes: 0 done,
1 the command could not do it (the line on stderr says why), 2 a wrong command line.""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tidetune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    validate = sub.add_parser(
        "validate",
        help="check FineTuneJob and IdlePool manifests",
        description=(
            "Check manifests against the schema and cross-field rules. Prints each problem "
            "as `FILE: field.path: what is wrong; what is allowed (line N)`. Exit 0 when all "
            "are valid, 1 when any is not."
        ),
        epilog="""examples:
  tidetune validate examples/*.yaml
  tidetune validate -q job.yaml && kubectl apply -f job.yaml""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.add_argument("-q", "--quiet", action="store_true", help="print only problems")
    validate.set_defaults(func=_validate)

    crds = sub.add_parser(
        "crds",
        help="print the generated CustomResourceDefinitions",
        description="The CRDs generated from the API models.",
        epilog="""examples:
  tidetune crds | kubectl apply -f -
  tidetune crds --write crds && tidetune crds --check helm/tidetune/crds""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    group = crds.add_mutually_exclusive_group()
    group.add_argument("--write", metavar="DIR", help="write one file per CRD into DIR")
    group.add_argument(
        "--check", metavar="DIR", help="exit 1 when the CRDs in DIR differ from the models"
    )
    crds.set_defaults(func=_crds)

    run = sub.add_parser(
        "run",
        help="run a FineTuneJob on this machine, with no cluster",
        add_help=False,
        description="Run a job locally (see `tidetune run --help`).",
    )
    run.set_defaults(delegate="tidetune_trainer.local_run")

    data = sub.add_parser(
        "data",
        help="inspect datasets",
        epilog="""examples:
  tidetune data stats examples/data/arithmetic-sft.jsonl --format messages""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data_sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    stats = data_sub.add_parser(
        "stats", help="samples, tokens, lengths and packing efficiency", add_help=False
    )
    stats.set_defaults(delegate="tidetune_trainer.data.stats")
    preview = data_sub.add_parser(
        "preview", help="each sample's tokens and which of them are trained", add_help=False
    )
    preview.set_defaults(delegate="tidetune_trainer.data.preview")

    rewards = sub.add_parser("rewards", help="try a job's reward rules")
    rewards_sub = rewards.add_subparsers(
        dest="rewards_command", metavar="SUBCOMMAND", required=True
    )
    rtest = rewards_sub.add_parser(
        "test", help="score sample rows with the job's rules, in the sandbox", add_help=False
    )
    rtest.set_defaults(delegate="tidetune_trainer.rl.rewards_cli")

    from tidetune.jobs.cli import register as register_job_commands

    register_job_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "tidetune") -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    parser.prog = prog
    # `run`, `data stats` and `data preview` parse their own arguments (they live in the
    # trainer package, imported only when called).
    if args_list[:1] == ["run"]:
        return _delegate("tidetune_trainer.local_run", args_list[1:])
    if args_list[:2] == ["data", "stats"]:
        return _delegate("tidetune_trainer.data.stats", args_list[2:])
    if args_list[:2] == ["data", "preview"]:
        return _delegate("tidetune_trainer.data.preview", args_list[2:])
    if args_list[:2] == ["rewards", "test"]:
        return _delegate("tidetune_trainer.rl.rewards_cli", args_list[2:])
    args = parser.parse_args(args_list)
    code: int = args.func(args)
    return code


def kubectl_plugin() -> int:
    """``kubectl tidetune …``: kubectl runs ``kubectl-tidetune`` from PATH."""
    return main(prog="kubectl tidetune")


if __name__ == "__main__":
    sys.exit(main())
