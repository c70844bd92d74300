"""Checkpoint save time, resume time and resume exactness of TideTune's trainer.

For each setup (one process with DDP-less plain training; two torchrun processes with
DeepSpeed ZeRO-2 on CPU) it runs the same tiny job three ways: uninterrupted; stopped
after step K (``TIDETUNE_STOP_AT_STEP``, the same path as SIGTERM); resumed. It reports
the mean checkpoint save time, the resume (load) time, and max |Δloss| between the
uninterrupted and the resumed loss sequences (0 means bit-identical). The peer is the
uninterrupted run itself: exact resume means no difference at all.

    python bench/checkpoint_resume.py [--steps 20] [--stop-at 9]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(job: Path, run_dir: Path, nproc: int, env: dict[str, str]) -> tuple[int, str]:
    args = ["-m", "tidetune_trainer", "--spec", str(job), "--run-uri", f"file://{run_dir}"]
    cmd = (
        [sys.executable, *args]
        if nproc == 1
        else [
            sys.executable,
            "-m",
            "tidetune_trainer.launch",
            "--nproc-per-node",
            str(nproc),
            *args,
        ]
    )
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    return p.returncode, p.stderr


def losses(run_dir: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--stop-at", type=int, default=9)
    args = ap.parse_args()
    sys.path[:0] = [str(REPO / "tests" / "tidetune_trainer"), str(REPO)]
    from tests.tidetune_trainer.conftest import trainer_env, write_chat, write_job

    ok = True
    print(f"{'setup':24} {'save s (mean)':>13} {'resume s':>9} {'max |Δloss|':>12} {'steps':>6}")
    with tempfile.TemporaryDirectory(prefix="tt-ckpt-") as tmp_s:
        tmp = Path(tmp_s)
        data = write_chat(tmp / "chat.jsonl", n=96)
        for name, nproc, stage in (("1 process, plain", 1, 0), ("2 processes, ZeRO-2", 2, 2)):
            job = write_job(
                tmp / f"job-{stage}.yaml",
                data,
                hyperparameters={"maxSteps": args.steps, "batchSize": 4},
                deepspeed={"zeroStage": stage},
                checkpointing={"everySteps": 4, "keep": 2},
            )
            env = trainer_env()
            full, part = tmp / f"full-{stage}", tmp / f"part-{stage}"
            rc1, err1 = run(job, full, nproc, env)
            rc2, _ = run(job, part, nproc, {**env, "TIDETUNE_STOP_AT_STEP": str(args.stop_at)})
            rc3, err3 = run(job, part, nproc, env)
            if (rc1, rc2, rc3) != (0, 85, 0):
                print(f"{name}: unexpected exit codes {(rc1, rc2, rc3)}\n{err3[-2000:]}")
                return 1
            saves = [
                float(s) for s in re.findall(r"\[rank 0\].*checkpoint .* \(([\d.]+) s\)", err1)
            ]
            resume = re.search(r"\[rank 0\].*resumed from .* \(([\d.]+) s\)", err3)
            a, b = losses(full), losses(part)
            delta = max(abs(x - y) for x, y in zip(a, b, strict=True))
            ok &= delta == 0.0
            print(
                f"{name:24} {sum(saves) / max(len(saves), 1):>13.3f} "
                f"{float(resume.group(1)) if resume else float('nan'):>9.3f} {delta:>12.3g} "
                f"{len(a):>6}"
            )
    print("exact resume:", "yes" if ok else "NO")
    return 0 if ok else 2


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
