"""The trainer's entry point, one process per rank under ``torchrun``::

    torchrun … -m tidetune_trainer --spec job.yaml --run-uri s3://runs/ns/name/uid \\
        [--output-uri s3://artifacts/] [--metrics-port 9400]

(in pods and under ``tidetune run``, ``python -m tidetune_trainer.launch`` wraps
torchrun so that the container's exit code is the ranks' combined one).

- ``--spec``: the FineTuneJob manifest (YAML or JSON), validated with the API model.
- ``--run-uri``: the run location (checkpoints, metrics.jsonl, progress.json,
  estimate.json); any ``tidetune.storage`` URI.
- ``--output-uri``: where artifacts go (default: ``spec.output.uri``, else
  ``<run>/output``); artifacts land under ``<output>/<namespace>/<name>/<uid>/``.
- ``--metrics-port``: Prometheus port on rank 0 (0 or unset: off); also
  ``TIDETUNE_METRICS_PORT``.

Exit codes (:mod:`tidetune.exitcodes`): 0 succeeded, 65 bad input (spec, data, model),
74 storage error, 85 preempted (checkpoint written), 1 crash. On failure the error's
message is written to the termination log: ``$TIDETUNE_TERMINATION_LOG`` or
``/dev/termination-log`` when it exists (Kubernetes shows it in the pod status), and
to ``progress.json`` (``state: failed``).

Each rank keeps its log in the run location (:mod:`tidetune_trainer.runlog`):
``<run>/logs/attempt-<TIDETUNE_ATTEMPT>/rank-<RANK>.log``.

Environment: ``TIDETUNE_STOP_AT_STEP=N`` behaves as if SIGTERM arrived after step N
(tests); ``TIDETUNE_EXIT_DIR`` (set by the launch wrapper) receives ``rank-<R>.code``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tidetune import exitcodes, layout

if TYPE_CHECKING:
    from tidetune_trainer.session import Session

log = logging.getLogger("tidetune_trainer")

TERMINATION_LOG_ENV = layout.TERMINATION_LOG_ENV
DEFAULT_TERMINATION_LOG = layout.TERMINATION_LOG_PATH
EXIT_DIR_ENV = "TIDETUNE_EXIT_DIR"
METRICS_PORT_ENV = "TIDETUNE_METRICS_PORT"
#: Kubernetes keeps at most 4096 bytes of a termination message.
MAX_TERMINATION_MESSAGE = 4000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tidetune_trainer", description="TideTune trainer (run under torchrun)."
    )
    p.add_argument("--spec", required=True, help="FineTuneJob manifest (YAML or JSON)")
    p.add_argument("--run-uri", required=True, help="run location (file://, pvc://, s3://)")
    p.add_argument("--output-uri", default=None, help="artifact location (default spec.output.uri)")
    p.add_argument(
        "--metrics-port", type=int, default=None, help="Prometheus port on rank 0; 0 disables"
    )
    return p.parse_args(argv)


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def termination_log_path() -> Path | None:
    """Where the termination message goes, or None."""
    env = os.environ.get(TERMINATION_LOG_ENV)
    if env:
        return Path(env)
    default = Path(DEFAULT_TERMINATION_LOG)
    return default if default.exists() else None


def write_termination_message(message: str) -> None:
    """Local rank 0 writes; other ranks only into an empty log (never a traceback)."""
    path = termination_log_path()
    if path is None:
        return
    try:
        if _local_rank() != 0 and path.exists() and path.stat().st_size > 0:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        data = message.encode("utf-8")[:MAX_TERMINATION_MESSAGE]
        path.write_bytes(data)
    except OSError:
        log.warning("cannot write the termination message to %s", path)


def write_exit_code(code: int) -> None:
    d = os.environ.get(EXIT_DIR_ENV)
    if not d:
        return
    try:
        Path(d).mkdir(parents=True, exist_ok=True)
        (Path(d) / f"rank-{_rank()}.code").write_text(str(code))
    except OSError:
        pass


def _record_failure(session: Session | None, run_uri: str | None, code: int, message: str) -> None:
    """Rank 0: mark progress.json failed (also when the reporter never started)."""
    if _rank() != 0 or not run_uri:
        return
    try:
        from tidetune.storage import ObjectStore, open_store
        from tidetune_trainer.progress import PROGRESS_FILE, iso

        reporter = getattr(session, "reporter", None) if session is not None else None
        if reporter is not None:
            reporter.set_state("failed", message, exit_code=code)
            return
        store, key = open_store(run_uri)
        k = ObjectStore.join(key, PROGRESS_FILE)
        body: dict[str, Any] = {}
        if store.exists(k):
            try:
                body = json.loads(store.read_text(k))
            except ValueError:
                body = {}
        body.update({"state": "failed", "message": message, "exitCode": code, "updatedAt": iso()})
        store.write_text(k, json.dumps(body, indent=1))
    except Exception:  # never hide the original error behind a reporting error
        log.warning("cannot record the failure in progress.json", exc_info=True)


def main(argv: list[str] | None = None) -> int:
    """Run one rank of a training job; returns the exit code."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s [rank {_rank()}] %(levelname)s %(name)s: %(message)s",
    )
    from tidetune_trainer import runlog
    from tidetune_trainer.loop import StopFlag

    rank_log = runlog.install(args.run_uri, _rank())

    stop = StopFlag()
    stop.install()
    port = args.metrics_port
    if port is None and os.environ.get(METRICS_PORT_ENV):
        port = int(os.environ[METRICS_PORT_ENV])
    session: Session | None = None
    code = exitcodes.SUCCEEDED
    message = ""
    try:
        from tidetune_trainer.recipes import get_recipe
        from tidetune_trainer.session import Session

        session = Session.create(
            args.spec,
            args.run_uri,
            output_uri=args.output_uri,
            metrics_port=port or None,
            stop=stop,
        )
        recipe = get_recipe(session.cfg.method)
        session.setup_distributed()
        recipe(session)
    except BaseException as e:
        from tidetune_trainer.errors import Preempted, exit_code_for

        code = exit_code_for(e) if not isinstance(e, KeyboardInterrupt) else exitcodes.CRASHED
        message = str(e) or type(e).__name__
        if isinstance(e, Preempted):
            log.warning("%s", message)
        elif code == exitcodes.CRASHED:
            log.error("the trainer crashed", exc_info=True)
            message = f"{type(e).__name__}: {message}"
        else:
            log.error("%s", message)
    finally:
        if code not in (exitcodes.SUCCEEDED, exitcodes.PREEMPTED):
            _record_failure(session, args.run_uri, code, message)
        if code != exitcodes.SUCCEEDED:
            write_termination_message(message)
        reporter = getattr(session, "reporter", None)
        if reporter is not None:
            reporter.close()
        write_exit_code(code)
        _shutdown_distributed(code)
        if rank_log is not None:
            log.info("exit code %d", code)
            rank_log.close()
    return code


def _shutdown_distributed(code: int) -> None:
    if code != exitcodes.SUCCEEDED and code != exitcodes.PREEMPTED:
        return  # peers may be gone; a collective here could hang
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
