"""Training throughput on CPU: TideTune's trainer vs TRL's ``SFTTrainer`` at its best.

Both sides train the same tiny Llama (saved once to disk and loaded by both), with the
same tokenizer, chat data (long-tailed lengths, multi-turn), LoRA (r 8, alpha 16, no
dropout, all linear layers), learning rate and schedule, batch size, max length and
steps, and both train on the assistant answers only (TRL: ``assistant_only_loss`` with
the TideTune template marked with ``{% generation %}``, which renders the same text).
TRL runs packed (``packing=True``: best-fit-decreasing, which turns on ``padding_free``;
correct on CPU, where sdpa sees the packed position ids of a single row).

Each side runs as its own subprocess (``OMP_NUM_THREADS`` equal), ``--runs`` times,
alternating. Reported per side, median over runs: real (non-padding) tokens per second
between the end of warm-up step ``--warmup`` and the last step, and peak RSS (``wait4``).
The loss curves of the first run are printed side by side. A separate parity run trains
one step on a subset whose packed rows all fit in one batch on both sides (our batch is
exactly our row count), so both step-1 losses average the very same tokens: they must
agree within 1e-4.

Goal: ≥ 1.2× TRL's tokens/s, peak RSS ≤ 1.0×, same first-step loss within 1e-4.

    nice -n 10 python bench/train_throughput.py [--steps 30] [--warmup 5] [--runs 3]
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
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

#: the TideTune template with the answers marked, for TRL's assistant_only_loss
MARKED_TEMPLATE = (
    "{{ bos_token if bos_token else '' }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}{{ message['content'] + '<|end|>\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

TRL_SCRIPT = r"""
import json, sys, time
import torch
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import SFTConfig, SFTTrainer

model_dir, data, out, steps, batch, max_len, lr, template = sys.argv[1:9]
tok = AutoTokenizer.from_pretrained(model_dir)
tok.chat_template = open(template).read()
model = AutoModelForCausalLM.from_pretrained(model_dir)
ds = load_dataset("json", data_files=data, split="train")
seen = {"tokens": 0}
marks = []

class Count(SFTTrainer):
    def compute_loss(self, model, inputs, *a, **k):
        if "attention_mask" in inputs:
            seen["tokens"] += int(inputs["attention_mask"].sum())
        else:  # padding-free: one row of real tokens
            seen["tokens"] += int(inputs["input_ids"].numel())
        return super().compute_loss(model, inputs, *a, **k)

class Clock(TrainerCallback):
    def on_step_end(self, args, state, control, **k):
        marks.append((state.global_step, time.perf_counter(), seen["tokens"]))

cfg = SFTConfig(output_dir=out, max_steps=int(steps), per_device_train_batch_size=int(batch),
                learning_rate=float(lr), max_length=int(max_len), logging_steps=1,
                save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0,
                assistant_only_loss=True, packing=True, seed=0, lr_scheduler_type="cosine",
                warmup_steps=2, bf16=False)
peft = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                  task_type="CAUSAL_LM")
trainer = Count(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=peft,
                callbacks=[Clock()])
trainer.train()
losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
with open(out + "/result.json", "w") as f:
    json.dump({"marks": marks, "losses": losses, "padding_free": trainer.padding_free}, f)
"""


def make_data(path: Path, n: int, seed: int = 0) -> None:
    """Multi-turn chats with log-normal turn lengths (a long tail)."""
    words = [
        *("tide", "moon", "wave", "sand", "shell", "wind", "salt", "boat", "sail", "star"),
        *("night", "light", "deep", "blue", "calm", "storm", "harbour", "gull", "reef"),
        *("kelp", "foam", "dune"),
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
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.stderr.write(err.decode()[-3000:])
    return code, wall, usage.ru_maxrss / 1024


def job_body(model: Path, data: Path, steps: int, batch: int, max_len: int, lr: float) -> Any:
    return {
        "apiVersion": "tidetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "bench", "namespace": "bench", "uid": "b"},
        "spec": {
            "method": "sft",
            "baseModel": {"uri": f"file://{model}"},
            "tuning": {"type": "lora", "lora": {"rank": 8, "alpha": 16, "dropout": 0.0}},
            "data": {"train": {"uri": f"file://{data}", "format": "messages"}},
            "hyperparameters": {
                "maxSteps": steps,
                "batchSize": batch,
                "learningRate": lr,
                "warmupSteps": 2,
                "maxSeqLength": max_len,
                "seed": 0,
            },
            "resources": {"gpusPerNode": 0},
            "deepspeed": {"zeroStage": 0},
            "checkpointing": {"everySteps": 10**6, "keep": 1},
            "output": {"exportCheckpoints": 0},
        },
    }


def ours(tmp: Path, name: str, body: Any, env: dict[str, str]) -> dict[str, Any]:
    (tmp / f"{name}.json").write_text(json.dumps(body))
    run = tmp / f"run-{name}"
    cmd = [sys.executable, "-m", "tidetune_trainer", "--spec", str(tmp / f"{name}.json")]
    code, wall, rss = run_measured([*cmd, "--run-uri", f"file://{run}"], env)
    if code != 0:
        raise SystemExit(f"our trainer failed (exit {code})")
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    marks = [(m["step"], m["elapsed"], m["tokens"]) for m in lines]
    return {"marks": marks, "losses": [m["loss"] for m in lines], "rss": rss, "wall": wall}


def trl(tmp: Path, name: str, args: list[str], env: dict[str, str]) -> dict[str, Any]:
    out = tmp / f"trl-{name}"
    out.mkdir()
    script = tmp / "trl_sft.py"
    code, wall, rss = run_measured(
        [sys.executable, str(script), args[0], args[1], str(out), *args[2:]], env
    )
    if code != 0:
        raise SystemExit(f"the TRL script failed (exit {code})")
    res: dict[str, Any] = json.loads((out / "result.json").read_text())
    return {**res, "rss": rss, "wall": wall}


def packed_rows(model: Path, data: Path, max_len: int) -> int:
    """How many packed rows our trainer makes of ``data`` (the parity batch holds them all
    exactly once; a larger batch would wrap around and count some rows twice)."""
    from tidetune_trainer.data.prepare import DataSettings, load_data, prepare_data
    from tidetune_trainer.tiny import load_tokenizer

    settings = DataSettings(train_uri=f"file://{data}", max_seq_length=max_len, seed=0)
    loaded = load_data(settings)
    tok = load_tokenizer(f"file://{model}")
    return len(prepare_data(loaded, tok, settings).train_rows)


def tokens_per_second(marks: list[Any], warmup: int) -> float:
    """Real tokens / second between the end of step ``warmup`` and the last step."""
    by_step = {int(s): (float(t), float(n)) for s, t, n in marks}
    last = max(by_step)
    t0, n0 = by_step[warmup]
    t1, n1 = by_step[last]
    return (n1 - n0) / (t1 - t0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3)
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
        HF_DATASETS_OFFLINE="1",
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "2"),
        TOKENIZERS_PARALLELISM="false",
        WANDB_DISABLED="true",
    )
    with tempfile.TemporaryDirectory(prefix="tt-bench-") as tmp_s:
        tmp = Path(tmp_s)
        data = tmp / "chat.jsonl"
        make_data(data, args.samples)
        build_model(data, tmp / "model")
        (tmp / "marked.jinja").write_text(MARKED_TEMPLATE)
        (tmp / "trl_sft.py").write_text(TRL_SCRIPT)
        common = [str(args.batch), str(args.max_len), str(args.lr), str(tmp / "marked.jinja")]
        body = job_body(tmp / "model", data, args.steps, args.batch, args.max_len, args.lr)
        ours_runs, trl_runs = [], []
        for i in range(args.runs):
            ours_runs.append(ours(tmp, f"o{i}", body, env))
            trl_runs.append(
                trl(tmp, f"t{i}", [str(tmp / "model"), str(data), str(args.steps), *common], env)
            )
        # parity: one step over a subset that fits one batch on both sides
        subset = tmp / "subset.jsonl"
        subset.write_text("".join(data.read_text().splitlines(keepends=True)[:40]))
        rows = packed_rows(tmp / "model", subset, args.max_len)
        pbody = job_body(tmp / "model", subset, 1, rows, args.max_len, args.lr)
        p_ours = ours(tmp, "parity", pbody, env)
        pcommon = ["64", *common[1:]]
        p_trl = trl(tmp, "parity", [str(tmp / "model"), str(subset), "1", *pcommon], env)

    def med(runs: list[dict[str, Any]], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    for r in ours_runs + trl_runs:
        r["tps"] = tokens_per_second(r["marks"], args.warmup)
    o_tps, t_tps = med(ours_runs, "tps"), med(trl_runs, "tps")
    o_rss, t_rss = med(ours_runs, "rss"), med(trl_runs, "rss")
    print(
        f"steps {args.steps} (tokens/s after warm-up step {args.warmup}), batch {args.batch}, "
        f"max length {args.max_len}, {args.runs} runs each, OMP_NUM_THREADS "
        f"{env['OMP_NUM_THREADS']}; TRL packing=True (bfd), padding_free="
        f"{trl_runs[0]['padding_free']}"
    )
    print(f"{'':10} {'tokens/s (median)':>18} {'runs':>28} {'peak RSS MiB':>13} {'wall s':>7}")
    for name, runs, tps, rss in (
        ("tidetune", ours_runs, o_tps, o_rss),
        ("trl", trl_runs, t_tps, t_rss),
    ):
        each = " ".join(f"{r['tps']:.0f}" for r in runs)
        print(f"{name:10} {tps:>18.0f} {each:>28} {rss:>13.0f} {med(runs, 'wall'):>7.1f}")
    print("loss curves (first run): step  tidetune  trl")
    for s, (a, b) in enumerate(zip(ours_runs[0]["losses"], trl_runs[0]["losses"], strict=False)):
        print(f"  {s + 1:4d}  {a:8.4f}  {b:8.4f}")
    pa, pb = p_ours["losses"][0], p_trl["losses"][0]
    print(
        f"first-step loss on one shared batch: tidetune {pa:.6f}, trl {pb:.6f}, "
        f"difference {abs(pa - pb):.2e} (goal <= 1e-4)"
    )
    ratio_tps, ratio_rss = o_tps / t_tps, o_rss / t_rss
    print(
        f"ratio tokens/s {ratio_tps:.2f}x (goal >= 1.2x), peak RSS {ratio_rss:.2f}x (goal <= 1.0x)"
    )
    ok = ratio_tps >= 1.2 and ratio_rss <= 1.0 and abs(pa - pb) <= 1e-4
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
