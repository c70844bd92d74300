"""``python -m tidetune_trainer.launch [TORCHRUN ARGS] -m tidetune_trainer …``: the
container entry point. Runs ``torchrun`` (which reads ``PET_NNODES``,
``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR``, ``PET_MASTER_PORT`` from
the environment, as the Kubeflow training operator sets them) and exits with the ranks'
combined exit code (:func:`tidetune.exitcodes.combine`).

Why: torchrun exits 1 whenever a worker fails, whatever the worker's code, so a
"preempted" (85) or "bad input" (65) would be lost. Each rank writes its code to
``$TIDETUNE_EXIT_DIR/rank-<R>.code`` (a private temporary directory set here); this
wrapper reads them after torchrun ends. SIGTERM/SIGINT/SIGHUP sent to this process are
forwarded to torchrun, which forwards them to the workers (they checkpoint and exit 85)
and waits for them.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tidetune import exitcodes

EXIT_DIR_ENV = "TIDETUNE_EXIT_DIR"


def read_codes(directory: Path) -> list[int]:
    """The exit codes the ranks wrote."""
    codes = []
    for f in sorted(directory.glob("rank-*.code")):
        try:
            codes.append(int(f.read_text().strip()))
        except (OSError, ValueError):
            codes.append(exitcodes.CRASHED)
    return codes


def final_code(torchrun_code: int, rank_codes: list[int]) -> int:
    """The wrapper's exit code from torchrun's and the ranks' codes."""
    if rank_codes:
        combined = exitcodes.combine(rank_codes)
        if combined != exitcodes.SUCCEEDED or torchrun_code == 0:
            return combined
    if torchrun_code == 0:
        return exitcodes.SUCCEEDED
    return exitcodes.CRASHED if torchrun_code > 0 else 128 - torchrun_code


def main(argv: list[str] | None = None) -> int:
    """Run torchrun with ``argv``; return the combined exit code."""
    import os

    args = list(sys.argv[1:] if argv is None else argv)
    exit_dir = Path(tempfile.mkdtemp(prefix="tidetune-exit-"))
    env = dict(os.environ)
    env[EXIT_DIR_ENV] = str(exit_dir)
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *args], env=env)

    def forward(signum: int, _frame: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    try:
        rc = proc.wait()
        return final_code(rc, read_codes(exit_dir))
    finally:
        shutil.rmtree(exit_dir, ignore_errors=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
