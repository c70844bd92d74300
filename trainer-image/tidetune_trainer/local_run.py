"""``tidetune run FILE [--workdir DIR] [--nproc N] [--json]``: run a FineTuneJob on this
machine with no cluster — the same validation, estimate, trainer and artifacts as on a
cluster.

- Object storage is ``<workdir>/store`` (``file://``); the run lives in
  ``<store>/runs/<namespace>/<name>/<uid>/`` and artifacts in ``spec.output.uri`` (an
  ``s3://`` one is used as is, with credentials from the environment) or
  ``<store>/artifacts``. ``uid`` is ``metadata.uid`` or derived from namespace/name, so
  running the same command again resumes from the newest complete checkpoint.
- Relative ``file://`` URIs in the manifest resolve against the manifest's folder.
- The trainer runs as ``--nproc`` local processes (``torchrun`` through
  :class:`tidetune.torchrun_nodes.TorchrunNodes`, with the environment a
  PyTorchJob pod gets); its logs go to ``<workdir>/logs/``.
- stderr shows the timeline and a progress bar; Ctrl-C asks the trainer to checkpoint
  and stop (SIGTERM), a second Ctrl-C kills it.
- ``--json`` prints the final FineTuneJob (spec and status) on stdout.
- GRPO/PPO: the ``ConfigMap`` documents of the same file hold the reward functions'
  sources; they are laid out in ``<run>/reward-sources/<name>/<key>`` as a cluster
  mounts them (``TIDETUNE_REWARD_SOURCES``).

Exit codes: 0 when the job Succeeded, 85 when it was stopped (Ctrl-C) after a
checkpoint, 1 otherwise (invalid manifest or data, trainer failure).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tidetune import exitcodes, layout
from tidetune.jobs.localstatus import final_job, price_local

DEFAULT_WORKDIR = "runs"


def _now() -> str:
    from tidetune_trainer.checkpoint import utcnow

    return utcnow()


@dataclass
class Timeline:
    """The job's timeline, persisted next to the run so reruns continue it."""

    path: Path
    entries: list[dict[str, Any]] = field(default_factory=list)
    out: TextIO = sys.stderr

    def load(self) -> None:
        if self.path.exists():
            try:
                self.entries = json.loads(self.path.read_text())
            except ValueError:
                self.entries = []

    def add(self, type_: str, reason: str, message: str = "") -> None:
        entry = {"time": _now(), "type": type_, "reason": reason, "message": message}
        self.entries.append(entry)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.entries, indent=1))
        clear = "\r\033[K" if self.out.isatty() else ""
        print(
            f"{clear}{entry['time']}  {type_:<12} {reason:<22} {message}", file=self.out, flush=True
        )


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: a whole number ≥ 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"got {value}; allowed: a whole number ≥ 1")
    return value


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="tidetune run",
        description="Run a FineTuneJob on this machine, no cluster.",
        epilog="""examples:
  tidetune run examples/quickstart.yaml                  # store, runs and logs in ./runs
  tidetune run job.yaml --workdir /tmp/wd --nproc 2 --json > final.json""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", help="the FineTuneJob manifest (YAML)")
    p.add_argument(
        "--workdir",
        default=DEFAULT_WORKDIR,
        help=f"where the store, runs and logs live (default ./{DEFAULT_WORKDIR})",
    )
    p.add_argument(
        "--nproc",
        type=_at_least_one,
        default=None,
        help="training processes (default: GPUs on this machine, else 1)",
    )
    p.add_argument("--json", action="store_true", help="print the final FineTuneJob as JSON")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve the trainer's Prometheus metrics on this port (0: off)",
    )
    return p.parse_args(list(argv))


def job_uid(job: Any) -> str:
    """``metadata.uid`` or a stable uid from namespace/name (reruns resume)."""
    if job.metadata.uid:
        return str(job.metadata.uid)
    return layout.local_uid(job.metadata.namespace or "default", job.metadata.name)


def _fmt_secs(s: float | None) -> str:
    if s is None:
        return "--"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def progress_line(p: dict[str, Any], width: int = 30) -> str:
    """One progress-bar line from progress.json."""
    pct = float(p.get("percent") or 0.0)
    filled = int(width * pct / 100)
    m = p.get("metrics") or {}
    loss = m.get("trainLoss")
    ev = m.get("evalLoss")
    tps = m.get("tokensPerSecond")
    parts = [
        f"[{'#' * filled}{'.' * (width - filled)}] {pct:5.1f}%",
        f"step {p.get('step', 0)}/{p.get('totalSteps', '?')}",
        f"loss {loss:.4f}" if isinstance(loss, int | float) else "loss --",
    ]
    if isinstance(ev, int | float):
        parts.append(f"eval {ev:.4f}")
    if isinstance(tps, int | float):
        parts.append(f"{tps:,.0f} tok/s")
    parts.append(f"eta {_fmt_secs(p.get('etaSeconds'))}")
    return "  ".join(parts)


def _pythonpath() -> str:
    """PYTHONPATH that lets the child processes import this checkout's packages."""
    import tidetune
    import tidetune_trainer

    dirs = [
        str(Path(tidetune.__file__).resolve().parent.parent),
        str(Path(tidetune_trainer.__file__).resolve().parent.parent),
    ]
    old = os.environ.get("PYTHONPATH")
    return os.pathsep.join(dict.fromkeys(dirs + ([old] if old else [])))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    except (OSError, ValueError):
        return None


def main(argv: Sequence[str] | None = None) -> int:
    """``tidetune run``; returns the exit code (0 iff the job Succeeded)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    err = sys.stderr
    from tidetune.storage import scheme_of
    from tidetune.torchrun_nodes import NodesSpec, TorchrunNodes
    from tidetune_trainer.errors import BadInputError
    from tidetune_trainer.session import load_job

    try:
        job = load_job(args.file)
    except BadInputError as e:
        print(str(e), file=err)
        return 1
    spec = job.spec
    ns = job.metadata.namespace or "default"
    name = job.metadata.name
    uid = job_uid(job)
    workdir = Path(args.workdir).resolve()
    store = workdir / layout.LOCAL_STORE_DIR
    run_dir = store / layout.LOCAL_RUNS_DIR / ns / name / uid
    run_uri = "file://" + str(run_dir)
    output_uri = spec.output.uri or "file://" + str(store / layout.LOCAL_ARTIFACTS_DIR)
    if scheme_of(output_uri) == "file" and not output_uri.startswith("file://"):
        output_uri = "file://" + str(Path(output_uri).resolve())
    run_dir.mkdir(parents=True, exist_ok=True)
    body = job.model_dump(mode="json", by_alias=True, exclude_none=True)
    body["metadata"]["uid"] = uid
    body["metadata"].setdefault("namespace", ns)
    body.pop("status", None)
    spec_file = run_dir / layout.LOCAL_JOB_FILE
    timeline = Timeline(run_dir / layout.LOCAL_TIMELINE_FILE, out=err)
    timeline.load()
    if any(e["type"] == "Cancelled" for e in timeline.entries):
        print(
            f"{args.file}: {ns}/{name} was cancelled; copy it under a new name to run it "
            f"again (tidetune copy {ns}/{name} NEW --workdir {args.workdir})",
            file=err,
        )
        return 1
    spec_file.write_text(json.dumps(body, indent=1))
    reward_sources = run_dir / "reward-sources"
    if spec.rl is not None:  # the ConfigMaps of the same file, laid out as a cluster mounts them
        from tidetune_trainer.rl.rules import configmaps_in_file, write_sources

        write_sources(configmaps_in_file(args.file), reward_sources)
    (run_dir / layout.LOCAL_CANCEL_FILE).unlink(missing_ok=True)
    resumed = any(e["type"] in ("Started", "Resumed") for e in timeline.entries)
    timeline.add(
        "Validated", "SpecValid", f"{args.file}: {spec.method.value} on {spec.base_model.uri}"
    )

    # ---- estimate (the trainer writes the exact one into estimate.json)
    estimate: dict[str, Any] | None = None
    try:
        from tidetune_trainer.estimating import count_document, count_tokens, model_params_for

        count = count_tokens(spec)
        params = model_params_for(spec.base_model.uri)
        estimate = price_local(
            spec,
            count_document(
                spec,
                count.tokens,
                params,
                rows_per_epoch=count.packed_rows or count.samples,
                sampled=count.sampled,
            ),
        )
        if estimate is not None:
            timeline.add(
                "Estimated",
                "Estimated",
                f"{estimate['trainTokens']:,} tokens, {estimate['gpuHours']:.4g} "
                f"{estimate['gpuType']}-hours, {estimate['cost']:.2f} {estimate['currency']}",
            )
    except Exception as e:  # bad data is reported here already, as on a cluster
        from tidetune_trainer.errors import exit_code_for

        if exit_code_for(e) == exitcodes.BAD_INPUT:
            timeline.add("Failed", "BadData", str(e).splitlines()[0])
            print(str(e), file=err)
            return _finish(args, job, body, "Failed", timeline, run_dir, estimate, str(e))
        raise

    # ---- launch
    import torch

    nproc = args.nproc or (
        torch.cuda.device_count()
        if spec.resources.gpus_per_node > 0 and torch.cuda.is_available()
        else 1
    )
    attempt = 1 + sum(1 for e in timeline.entries if e["type"] in ("Started", "Resumed"))
    term_log = run_dir / layout.LOCAL_TERMINATION_LOG
    term_log.unlink(missing_ok=True)
    env = {
        "PYTHONPATH": _pythonpath(),
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
        layout.TERMINATION_LOG_ENV: str(term_log),
        "PYTHONUNBUFFERED": "1",
        "TIDETUNE_REWARD_SOURCES": str(reward_sources),
        layout.ATTEMPT_ENV: str(attempt),
        "OMP_NUM_THREADS": os.environ.get(
            "OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc))
        ),
    }
    torchrun_args = [
        "--nproc-per-node",
        str(nproc),
        "-m",
        "tidetune_trainer",
        "--spec",
        str(spec_file),
        "--run-uri",
        run_uri,
        "--output-uri",
        output_uri,
    ]
    if args.metrics_port:
        torchrun_args += ["--metrics-port", str(args.metrics_port)]
    launcher = TorchrunNodes(log_dir=workdir / "logs")
    started = time.monotonic()
    handle = launcher.start(NodesSpec(name=f"{ns}-{name}", args=torchrun_args, env=env))
    progress_file = run_dir / layout.PROGRESS_FILE
    before = _read_json(progress_file) or {}
    timeline.add(
        "Resumed" if resumed else "Started",
        "TrainerStarted",
        f"{nproc} process(es); logs {handle.logs[0]}"
        + (f"; from step {before.get('step')}" if resumed and before.get("step") else ""),
    )

    interrupts = 0

    def on_sigint(_sig: int, _frame: Any) -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            print(
                "\nstopping: the trainer checkpoints, then exits (Ctrl-C again to kill)",
                file=err,
                flush=True,
            )
            handle.signal(signal.SIGTERM)
        else:
            for r in range(len(handle.procs)):
                handle.kill_node(r)

    old_handler = signal.signal(signal.SIGINT, on_sigint)
    process_file = run_dir / layout.LOCAL_PROCESS_FILE
    process_file.write_text(json.dumps({"pid": os.getpid(), "attempt": attempt}))
    cancel_file = run_dir / layout.LOCAL_CANCEL_FILE
    cancelled = False
    seen_ckpts = {c["step"] for c in before.get("checkpoints", [])}
    tty = err.isatty()
    last_print = 0.0
    last_line = ""
    try:
        while (code := handle.poll()) is None:
            time.sleep(0.3)
            if not cancelled and cancel_file.exists():
                cancelled = True  # `tidetune cancel`: checkpoint, stop, and stay stopped
                print("\ncancelled: the trainer checkpoints, then exits", file=err, flush=True)
                handle.signal(signal.SIGTERM)
            p = _read_json(progress_file)
            if not p:
                continue
            for c in p.get("checkpoints", []):
                if c["step"] not in seen_ckpts:
                    seen_ckpts.add(c["step"])
                    timeline.add("Checkpoint", "CheckpointSaved", f"step {c['step']}: {c['uri']}")
            line = progress_line(p)
            now = time.monotonic()
            if tty:
                print("\r\033[K" + line, end="", file=err, flush=True)
            elif line != last_line and now - last_print > 5:
                print(line, file=err, flush=True)
                last_print = now
            last_line = line
    finally:
        signal.signal(signal.SIGINT, old_handler)
        process_file.unlink(missing_ok=True)
    if tty:
        print(file=err)
    p = _read_json(progress_file) or {}
    for c in p.get("checkpoints", []):
        if c["step"] not in seen_ckpts:
            timeline.add("Checkpoint", "CheckpointSaved", f"step {c['step']}: {c['uri']}")
    elapsed = time.monotonic() - started
    message = term_log.read_text().strip() if term_log.exists() else ""
    outcome = exitcodes.classify(code)
    if cancelled and outcome is not exitcodes.Outcome.SUCCEEDED:
        timeline.add(
            "Cancelled",
            "Cancelled",
            f"cancelled at step {p.get('step')}; checkpoints and artifacts are kept",
        )
        phase = "Cancelled"
    elif outcome is exitcodes.Outcome.SUCCEEDED:
        timeline.add(
            "Exported",
            "ArtifactsExported",
            f"{len(p.get('artifacts', []))} artifact(s) in {output_uri}",
        )
        timeline.add(
            "Succeeded", "TrainingComplete", f"{p.get('step')} steps in {_fmt_secs(elapsed)}"
        )
        phase = "Succeeded"
    elif outcome is exitcodes.Outcome.PREEMPTED:
        timeline.add(
            "Suspended",
            "SuspendedByUser",
            f"checkpointed at step {p.get('step')}; run the same command to resume",
        )
        phase = "Suspended"
    else:
        reason = "BadData" if outcome is exitcodes.Outcome.BAD_INPUT else "TrainerFailed"
        first = (message or p.get("message") or exitcodes.describe(code)).splitlines()[0]
        timeline.add("Failed", reason, first)
        if message:
            print(message, file=err)
        print(f"trainer logs: {', '.join(str(x) for x in handle.logs)}", file=err)
        phase = "Failed"
    counted = _read_json(run_dir / layout.ESTIMATE_FILE)
    estimate = (price_local(spec, counted) if counted else None) or estimate
    _finish(args, job, body, phase, timeline, run_dir, estimate, message or p.get("message"), p)
    if phase == "Succeeded":
        return 0
    return exitcodes.PREEMPTED if phase == "Suspended" else 1


def _finish(
    args: argparse.Namespace,
    job: Any,
    body: dict[str, Any],
    phase: str,
    timeline: Timeline,
    run_dir: Path,
    estimate: dict[str, Any] | None,
    message: str | None,
    progress: dict[str, Any] | None = None,
) -> int:
    """Print the final FineTuneJob with --json; returns 1 (used for early failures)."""
    if args.json:
        print(
            json.dumps(
                final_job(body, phase, timeline.entries, estimate, message, progress), indent=1
            )
        )
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
