"""Training throughput on CPU: TideTune's trainer vs a plain TRL ``SFTTrainer`` script.

Same tiny Llama (saved once to disk, loaded by both), same tokenizer, same chat data
(a long-tailed length distribution), same LoRA, steps, batch size, learning rate and
max length. Each side runs as its own subprocess, one process, ``OMP_NUM_THREADS`` equal.
Reported per side: real (non-padding) tokens per second over the training steps, and the
process's peak RSS (``wait4`` rusage). Goal: ours ≥ 1.2× tokens/s, ≤ 1.1× peak RSS.

    python bench/train_throughput.py [--steps 40] [--batch 8] [--max-len 256]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

TRL_SCRIPT = r"""
import json, sys, time
import torch
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import SFTConfig, SFTTrainer

model_dir, data, out, steps, batch, max_len, lr = sys.argv[1:8]
torch.manual_seed(0)
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir)
ds = load_dataset("json", data_files=data, split="train")
real = {"tokens": 0}

class Count(SFTTrainer):
    def compute_loss(self, model, inputs, *a, **k):
        real["tokens"] += int(inputs["attention_mask"].sum()) if "attention_mask" in inputs \
            else int(inputs["input_ids"].numel())
        return super().compute_loss(model, inputs, *a, **k)

class Clock(TrainerCallback):
    def on_train_begin(self, *a, **k): real["t0"] = time.perf_counter()
    def on_train_end(self, *a, **k): real["t1"] = time.perf_counter()

cfg = SFTConfig(output_dir=out, max_steps=int(steps), per_device_train_batch_size=int(batch),
                learning_rate=float(lr), max_length=int(max_len), logging_steps=10,
                save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0,
                assistant_only_loss=False, seed=0, lr_scheduler_type="cosine", warmup_steps=2)
peft = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                  task_type="CAUSAL_LM")
trainer = Count(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=peft,
                callbacks=[Clock()])
trainer.train()
with open(out + "/result.json", "w") as f:
    json.dump({"tokens": real["tokens"], "seconds": real["t1"] - real["t0"]}, f)
"""


def make_data(path: Path, n: int, seed: int = 0) -> None:
    """Multi-turn chats with log-normal turn lengths (a long tail)."""
    words = [
        "tide",
        "moon",
        "wave",
        "sand",
        "shell",
        "wind",
        "salt",
        "boat",
        "sail",
        "star",
        "night",
        "light",
        "deep",
        "blue",
        "calm",
        "storm",
        "harbour",
        "gull",
        "reef",
        "kelp",
        "foam",
        "dune",
    ]
    r = random.Random(seed)

    def text() -> str:
        return " ".join(r.choice(words) for _ in range(max(1, int(r.lognormvariate(2.3, 0.8)))))

    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            msgs = []
            for _ in range(r.choice([1, 1, 2, 3])):
                msgs += [
                    {"role": "user", "content": text()},
                    {"role": "assistant", "content": text()},
                ]
            f.write(json.dumps({"messages": msgs}) + "\n")


def build_model(data: Path, out: Path) -> None:
    """The tiny Llama + tokenizer (trained on the data), saved for both sides."""
    sys.path[:0] = [str(REPO / "operator"), str(REPO / "trainer-image")]
    from tidetune_trainer.tiny import build_tiny_llama, train_tiny_tokenizer

    texts = [
        m["content"] for line in data.read_text().splitlines() for m in json.loads(line)["messages"]
    ]
    tok = train_tiny_tokenizer(texts, seed=0)
    model = build_tiny_llama(tok, seed=0)
    model.save_pretrained(out)
    tok.save_pretrained(out)


def run_measured(cmd: list[str], env: dict[str, str]) -> tuple[int, float, float]:
    """(exit code, wall seconds, peak RSS MiB) of a child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        assert proc.stderr is not None
        sys.stderr.write(proc.stderr.read().decode()[-3000:])
    return proc.returncode, wall, usage.ru_maxrss / 1024


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--samples", type=int, default=1200)
    ap.add_argument("--lr", type=float, default=2e-3)
    args = ap.parse_args()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "operator"), str(REPO / "trainer-image"), env.get("PYTHONPATH", "")]
    )
    env.update(
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "2"),
        TOKENIZERS_PARALLELISM="false",
        WANDB_DISABLED="true",
    )
    with tempfile.TemporaryDirectory(prefix="tt-bench-") as tmp_s:
        tmp = Path(tmp_s)
        data = tmp / "chat.jsonl"
        make_data(data, args.samples)
        build_model(data, tmp / "model")
        job = {
            "apiVersion": "tidetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "bench", "namespace": "bench", "uid": "b"},
            "spec": {
                "method": "sft",
                "baseModel": {"uri": f"file://{tmp / 'model'}"},
                "tuning": {"type": "lora", "lora": {"rank": 8, "alpha": 16, "dropout": 0.0}},
                "data": {"train": {"uri": f"file://{data}", "format": "messages"}},
                "hyperparameters": {
                    "maxSteps": args.steps,
                    "batchSize": args.batch,
                    "learningRate": args.lr,
                    "warmupSteps": 2,
                    "maxSeqLength": args.max_len,
                    "seed": 0,
                },
                "resources": {"gpusPerNode": 0},
                "deepspeed": {"zeroStage": 0},
                "checkpointing": {"everySteps": 10**6, "keep": 1},
                "output": {"exportCheckpoints": 0},
            },
        }
        (tmp / "job.json").write_text(json.dumps(job))
        ours_cmd = [
            sys.executable,
            "-m",
            "tidetune_trainer",
            "--spec",
            str(tmp / "job.json"),
            "--run-uri",
            f"file://{tmp / 'run'}",
        ]
        rc, ours_wall, ours_rss = run_measured(ours_cmd, env)
        if rc != 0:
            print(f"our trainer failed (exit {rc})")
            return 1
        lines = [json.loads(x) for x in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
        ours_tokens, ours_secs = lines[-1]["tokens"], lines[-1]["elapsed"]
        (tmp / "trl_sft.py").write_text(TRL_SCRIPT)
        (tmp / "trl-out").mkdir()
        trl_cmd = [
            sys.executable,
            str(tmp / "trl_sft.py"),
            str(tmp / "model"),
            str(data),
            str(tmp / "trl-out"),
            str(args.steps),
            str(args.batch),
            str(args.max_len),
            str(args.lr),
        ]
        rc, trl_wall, trl_rss = run_measured(trl_cmd, env)
        if rc != 0:
            print(f"TRL script failed (exit {rc})")
            return 1
        res: dict[str, Any] = json.loads((tmp / "trl-out" / "result.json").read_text())
    ours_tps = ours_tokens / ours_secs
    trl_tps = res["tokens"] / res["seconds"]
    print(
        f"steps {args.steps}, batch {args.batch}, max length {args.max_len}, "
        f"OMP_NUM_THREADS {env['OMP_NUM_THREADS']}"
    )
    rows = [
        ("", "real tokens", "train s", "tokens/s", "peak RSS MiB", "wall s"),
        (
            "tidetune",
            ours_tokens,
            f"{ours_secs:.2f}",
            f"{ours_tps:.0f}",
            f"{ours_rss:.0f}",
            f"{ours_wall:.1f}",
        ),
        (
            "trl",
            res["tokens"],
            f"{res['seconds']:.2f}",
            f"{trl_tps:.0f}",
            f"{trl_rss:.0f}",
            f"{trl_wall:.1f}",
        ),
    ]
    for r in rows:
        print(f"{r[0]:10} {r[1]:>12} {r[2]:>8} {r[3]:>10} {r[4]:>13} {r[5]:>7}")
    ratio_tps, ratio_rss = ours_tps / trl_tps, ours_rss / trl_rss
    print(
        f"ratio tokens/s {ratio_tps:.2f}x (goal >= 1.2x), peak RSS {ratio_rss:.2f}x (goal <= 1.1x)"
    )
    return 0 if ratio_tps >= 1.2 and ratio_rss <= 1.1 else 2


if __name__ == "__main__":
    sys.exit(main())
