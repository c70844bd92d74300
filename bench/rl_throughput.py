"""GRPO on CPU: TideTune's trainer vs TRL's ``GRPOTrainer``, side by side.

One learnable exact-match task (reverse two words: ``"tide moon ->"`` → ``"moon tide"``)
and one SFT warm start of the tiny Llama (our trainer, full tuning, a few steps: the
model already answers right some of the time, so rewards differ within a group). Then,
from that same artifact, the same GRPO run on both sides: same prompts, group size,
completion length, temperature, learning rate (constant), optimizer (AdamW), clip,
``beta`` 0, one update per rollout, full tuning, one process, equal ``OMP_NUM_THREADS``
(default 1: the matrices are tiny and extra threads only contend on a shared machine).
Each side runs as its own subprocess; the clock runs over the training steps only.

Reported per side: generated (completion) tokens per second and optimizer steps per
second (median of ``--rounds`` short runs per side, the order alternating), the process's
peak RSS (``wait4`` rusage), and the learning curve of one ``--steps`` run per side
(mean exact-match reward per block of steps). Goal: ours ≥ 1.2× tokens/s and steps/s,
≤ 1.0× peak RSS; the reward rises clearly on both. Exit 0 when all hold.

    nice -n 10 python bench/rl_throughput.py [--steps 150] [--rounds 3] [--tp-steps 100] [--ppo]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WORDS = ["sea", "moon", "tide", "wave", "sand", "shell", "wind", "salt", "boat", "star"]

TRL_SCRIPT = r"""
import json, sys, time
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

model_dir, data, out, steps, prompts, group, max_new, lr, seed = sys.argv[1:10]
rows = [json.loads(x) for x in open(data)]
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir)
# the same prompt tokens as ours: BOS + the prompt text
ds = Dataset.from_list(
    [{"prompt": tok.bos_token + r["question"], "answer": r["answer"]} for r in rows]
)

def exact(prompts, completions, answer, **kw):
    norm = lambda s: " ".join(s.strip().split()).casefold()
    return [1.0 if norm(c) == norm(a) else 0.0 for c, a in zip(completions, answer)]

clock = {}
class Clock(TrainerCallback):
    def on_train_begin(self, *a, **k): clock["t0"] = time.perf_counter()
    def on_train_end(self, *a, **k): clock["t1"] = time.perf_counter()

cfg = GRPOConfig(
    output_dir=out, max_steps=int(steps), per_device_train_batch_size=int(prompts) * int(group),
    num_generations=int(group), max_completion_length=int(max_new), temperature=1.0,
    learning_rate=float(lr), lr_scheduler_type="constant", warmup_steps=0, beta=0.0,
    loss_type="grpo", epsilon=0.2, num_iterations=1, max_grad_norm=1.0, weight_decay=0.0,
    logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, bf16=False,
    seed=int(seed), dataloader_num_workers=0, shuffle_dataset=True,
)
trainer = GRPOTrainer(model=model, reward_funcs=[exact], args=cfg, train_dataset=ds,
                      processing_class=tok, callbacks=[Clock()])
trainer.train()
logs = [h for h in trainer.state.log_history if "reward" in h]
json.dump({
    "seconds": clock["t1"] - clock["t0"],
    "rewards": [h["reward"] for h in logs],
    "lengths": [h.get("completions/mean_length") for h in logs],
}, open(out + "/result.json", "w"))
"""


def make_data(path: Path, n: int, seed: int = 0) -> None:
    r = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            a, b = r.sample(WORDS, 2)
            f.write(json.dumps({"question": f"{a} {b} ->", "answer": f" {b} {a}"}) + "\n")


def run_measured(cmd: list[str], env: dict[str, str]) -> tuple[int, float, float]:
    """(exit code, wall seconds, peak RSS MiB) of a child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        assert proc.stderr is not None
        sys.stderr.write(proc.stderr.read().decode()[-3000:])
    return code, wall, usage.ru_maxrss / 1024


def job(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    base: dict[str, Any] = {
        "tuning": {"type": "full"},
        "resources": {"gpusPerNode": 0},
        "deepspeed": {"zeroStage": 0},
        "checkpointing": {"everySteps": 10**6, "keep": 1},
        "output": {"exportCheckpoints": 0},
    }
    return {
        "apiVersion": "tidetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": "bench", "uid": name},
        "spec": {**base, **spec},
    }


def trainer_cmd(spec: Path, run: Path, out: Path | None = None) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "tidetune_trainer",
        "--spec",
        str(spec),
        "--run-uri",
        f"file://{run}",
    ]
    return cmd + (["--output-uri", f"file://{out}"] if out else [])


def blocks(values: list[float], n: int) -> list[float]:
    size = max(1, len(values) // n)
    return [
        sum(values[i : i + size]) / len(values[i : i + size]) for i in range(0, len(values), size)
    ]


@dataclass
class Result:
    """One side's run: generated tokens, training seconds, steps, peak RSS, rewards."""

    tokens: float
    seconds: float
    steps: int
    rss: float
    wall: float
    rewards: list[float]

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds


def grpo_job(
    args: argparse.Namespace, model_dir: Path, data: Path, steps: int, method: str = "grpo"
) -> dict[str, Any]:
    return job(
        method,
        {
            "method": method,
            "baseModel": {"uri": f"file://{model_dir}"},
            "data": {
                "train": {
                    "uri": f"file://{data}",
                    "format": "prompt-completion",
                    "promptColumn": "question",
                    "responseColumn": "answer",
                }
            },
            "rl": {
                "numGenerations": args.group,
                "maxCompletionLength": args.max_new,
                "beta": 0.0 if method == "grpo" else 0.02,
                **({"epochsPerRollout": 2} if method == "ppo" else {}),
                "temperature": 1.0,
                "sampleEverySteps": 10**6,
                "rewards": [{"preset": "exact-match", "params": {"extract": "none"}}],
            },
            "hyperparameters": {
                "maxSteps": steps,
                "batchSize": args.prompts,
                "learningRate": args.lr,
                "lrScheduler": "constant",
                "warmupSteps": 0,
                "maxSeqLength": 32,
                "seed": 0,
            },
        },
    )


def run_ours(
    args: argparse.Namespace,
    env: dict[str, str],
    tmp: Path,
    model_dir: Path,
    data: Path,
    steps: int,
    tag: str,
    method: str = "grpo",
) -> Result:
    spec = tmp / f"{method}-{tag}.json"
    spec.write_text(json.dumps(grpo_job(args, model_dir, data, steps, method)))
    run = tmp / f"{method}-run-{tag}"
    rc, wall, rss = run_measured(trainer_cmd(spec, run), env)
    if rc != 0:
        raise SystemExit(f"our trainer failed (exit {rc})")
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    lines = [m for m in lines if "reward" in m]
    per_step = args.prompts * args.group
    return Result(
        tokens=sum(m["completionLength"] * per_step for m in lines),
        seconds=lines[-1]["elapsed"],
        steps=len(lines),
        rss=rss,
        wall=wall,
        rewards=[m["reward"] for m in lines],
    )


def run_trl(
    args: argparse.Namespace,
    env: dict[str, str],
    tmp: Path,
    model_dir: Path,
    data: Path,
    steps: int,
    tag: str,
) -> Result:
    script = tmp / "trl_grpo.py"
    script.write_text(TRL_SCRIPT)
    out = tmp / f"trl-out-{tag}"
    out.mkdir(exist_ok=True)
    cmd = [sys.executable, str(script), str(model_dir), str(data), str(out), str(steps)]
    cmd += [str(args.prompts), str(args.group), str(args.max_new), str(args.lr), "0"]
    rc, wall, rss = run_measured(cmd, env)
    if rc != 0:
        raise SystemExit(f"TRL script failed (exit {rc})")
    res: dict[str, Any] = json.loads((out / "result.json").read_text())
    per_step = args.prompts * args.group
    return Result(
        tokens=sum((x or 0.0) * per_step for x in res["lengths"]),
        seconds=res["seconds"],
        steps=len(res["rewards"]),
        rss=rss,
        wall=wall,
        rewards=res["rewards"],
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=150, help="GRPO steps of the learning curve")
    ap.add_argument("--prompts", type=int, default=4, help="prompts per step")
    ap.add_argument("--group", type=int, default=8, help="completions per prompt")
    ap.add_argument("--max-new", type=int, default=8, help="max completion tokens")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--sft-steps", type=int, default=60, help="SFT warm-start steps")
    ap.add_argument("--samples", type=int, default=400)
    ap.add_argument(
        "--rounds", type=int, default=3, help="throughput rounds (each side once, order alternates)"
    )
    ap.add_argument("--tp-steps", type=int, default=100, help="steps of a throughput round")
    ap.add_argument(
        "--ppo", action="store_true", help="also our PPO's learning curve (TRL has no PPO)"
    )
    ap.add_argument("--keep", metavar="DIR", help="keep the runs here instead of a temp dir")
    args = ap.parse_args()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "operator"), str(REPO / "trainer-image"), env.get("PYTHONPATH", "")]
    )
    env.update(
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),  # tiny matrices: threads only contend
        TOKENIZERS_PARALLELISM="false",
        WANDB_DISABLED="true",
    )
    with tempfile.TemporaryDirectory(prefix="tt-rl-bench-") as tmp_s:
        tmp = Path(args.keep or tmp_s)
        tmp.mkdir(parents=True, exist_ok=True)
        data = tmp / "reverse.jsonl"
        make_data(data, args.samples)
        # ---- the SFT warm start both sides start from
        sft = job(
            "sft",
            {
                "method": "sft",
                "baseModel": {"uri": "builtin://tiny-llama"},
                "data": {
                    "train": {
                        "uri": f"file://{data}",
                        "format": "prompt-completion",
                        "promptColumn": "question",
                        "responseColumn": "answer",
                    }
                },
                "hyperparameters": {
                    "maxSteps": args.sft_steps,
                    "batchSize": 16,
                    "learningRate": 3e-3,
                    "warmupSteps": 2,
                    "maxSeqLength": 32,
                    "seed": 0,
                },
            },
        )
        (tmp / "sft.json").write_text(json.dumps(sft))
        rc, _, _ = run_measured(
            trainer_cmd(tmp / "sft.json", tmp / "sft-run", tmp / "sft-out"), env
        )
        if rc != 0:
            print(f"SFT warm start failed (exit {rc})")
            return 1
        model_dir = next((tmp / "sft-out").rglob("final"))
        sides = {"tidetune": run_ours, "trl": run_trl}
        # throughput: short runs, each side once per round, the order alternating (the
        # machine may be shared: alternation spreads its load over both sides)
        tp: dict[str, list[Result]] = {"tidetune": [], "trl": []}
        for r in range(args.rounds):
            order = ["trl", "tidetune"] if r % 2 == 0 else ["tidetune", "trl"]
            for side in order:
                tp[side].append(
                    sides[side](args, env, tmp, model_dir, data, args.tp_steps, f"tp{r}")
                )
        # the learning curve: one long run each
        curve = {
            side: sides[side](args, env, tmp, model_dir, data, args.steps, "curve")
            for side in ("tidetune", "trl")
        }
        ppo = (
            run_ours(args, env, tmp, model_dir, data, args.steps, "curve", "ppo")
            if args.ppo
            else None
        )
    print(
        f"GRPO on the tiny Llama (full tuning, SFT warm start of {args.sft_steps} steps): "
        f"{args.prompts} prompts × {args.group} completions per step, ≤ {args.max_new} new "
        f"tokens, OMP_NUM_THREADS {env['OMP_NUM_THREADS']}"
    )
    print(f"throughput: median of {args.rounds} round(s) of {args.tp_steps} steps per side")
    print(
        f"{'':10} {'gen tok/s':>10} {'steps/s':>8} {'peak RSS MiB':>13} {'rounds (gen tok/s)':>20}"
    )
    med: dict[str, tuple[float, float, float]] = {}
    for side, runs in tp.items():
        tps = statistics.median(x.tokens_per_second for x in runs)
        sps = statistics.median(x.steps_per_second for x in runs)
        rss = max(x.rss for x in runs)
        med[side] = (tps, sps, rss)
        each = ", ".join(f"{x.tokens_per_second:.0f}" for x in runs)
        print(f"{side:10} {tps:>10.1f} {sps:>8.3f} {rss:>13.0f} {each:>20}")
    r_tps = med["tidetune"][0] / med["trl"][0]
    r_sps = med["tidetune"][1] / med["trl"][1]
    r_rss = med["tidetune"][2] / med["trl"][2]
    a, b = blocks(curve["tidetune"].rewards, 10), blocks(curve["trl"].rewards, 10)
    size = max(1, args.steps // 10)
    print(f"learning curve: mean exact-match reward per {size} steps ({args.steps} steps)")
    print(f"{'steps':>10} {'tidetune':>9} {'trl':>6}")
    for i in range(max(len(a), len(b))):
        lo, hi = i * size + 1, min((i + 1) * size, args.steps)
        x = f"{a[i]:.3f}" if i < len(a) else ""
        y = f"{b[i]:.3f}" if i < len(b) else ""
        print(f"{f'{lo}-{hi}':>10} {x:>9} {y:>6}")
    if ppo is not None:
        c = blocks(ppo.rewards, 10)
        print(
            "PPO (ours; 2 epochs per rollout, beta 0.02), same task and start: "
            + ", ".join(f"{x:.3f}" for x in c)
        )
    for side, res in curve.items():
        print(
            f"{side}: {res.tokens_per_second:.1f} gen tok/s, {res.steps_per_second:.3f} steps/s "
            f"over the curve run, peak RSS {res.rss:.0f} MiB"
        )
    print(
        f"ratio gen tokens/s {r_tps:.2f}x, steps/s {r_sps:.2f}x (goal >= 1.2x), "
        f"peak RSS {r_rss:.2f}x (goal <= 1.0x)"
    )
    rose = a[-1] - a[0]
    print(f"reward rose by {rose:+.3f} (tidetune), {b[-1] - b[0]:+.3f} (trl): first to last block")
    return 0 if r_tps >= 1.2 and r_sps >= 1.2 and r_rss <= 1.0 and rose > 0.1 else 2


if __name__ == "__main__":
    sys.exit(main())
