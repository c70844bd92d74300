"""Packing benchmark: TideTune's data pipeline vs TRL's, on a long-tailed dataset.

Data: several thousand multi-turn conversations whose message lengths are log-normal
(a long tail of very long answers), fixed seed, written as JSONL. Both sides use the
same tokenizer (the tiny byte-level BPE trained on the data) and the same chat
rendering: TRL gets our template with ``{% generation %}`` markers so that its
``assistant_only_loss`` masks exactly the tokens ours does.

Measured:

- packing efficiency = real tokens / (rows × max_seq_length) of
  * ours: best-fit-decreasing over the whole dataset;
  * TRL: ``SFTTrainer``'s own preparation with ``packing=True`` (``pack_dataset``,
    strategy ``bfd``: best-fit-decreasing per ``Dataset.map`` batch of 1000);
  * no packing: each batch of ``--batch-size`` samples padded to its longest;
- data preparation throughput (samples/s) from the JSONL file to packed rows:
  ours = read + validate + tokenize + pack; TRL = ``datasets`` JSON load +
  ``SFTTrainer._prepare_dataset`` (tokenize, labels, pack).

Run: ``python -m bench.packing [--samples N] [--max-seq-length L] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

WORDS = [
    "tide",
    "harbor",
    "lantern",
    "river",
    "moon",
    "poem",
    "quiet",
    "wind",
    "stone",
    "valley",
    "ancient",
    "garden",
    "silver",
    "cloud",
    "mountain",
    "whisper",
    "bridge",
    "autumn",
    "ember",
    "meadow",
    "orchard",
    "compass",
    "voyage",
    "fable",
    "thunder",
    "willow",
    "crystal",
    "feather",
    "horizon",
    "echo",
    "summit",
    "glacier",
    "canyon",
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "with",
    "as",
    "by",
    "at",
    "from",
    "that",
    "this",
    "it",
    "be",
    "are",
    "or",
    "an",
    "not",
    "but",
]

TRL_TEMPLATE = (
    "{{ bos_token if bos_token else '' }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\\n' }}"
    "{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}"
    "{{ '\\n' }}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def make_dataset(n: int, seed: int) -> list[dict[str, Any]]:
    """Multi-turn conversations with log-normal message lengths (in words)."""
    rng = random.Random(seed)

    def text(mu: float, sigma: float) -> str:
        k = max(1, min(3000, int(rng.lognormvariate(mu, sigma))))
        return " ".join(rng.choice(WORDS) for _ in range(k))

    out = []
    for _ in range(n):
        msgs: list[dict[str, Any]] = []
        if rng.random() < 0.3:
            msgs.append({"role": "system", "content": text(2.5, 0.5)})
        for _ in range(1 + min(7, int(rng.expovariate(0.7)))):
            msgs.append({"role": "user", "content": text(3.0, 0.9)})
            msgs.append({"role": "assistant", "content": text(3.8, 1.1)})
        out.append({"messages": msgs})
    return out


def ours(path: Path, tokenizer: Any, max_len: int, batch_size: int) -> dict[str, Any]:
    from tidetune_trainer.data import DataSettings, load_data, prepare_data

    t0 = time.perf_counter()
    settings = DataSettings(
        train_uri=str(path), format="messages", max_seq_length=max_len, batch_size=batch_size
    )
    loaded = load_data(settings)
    prepared = prepare_data(loaded, tokenizer, settings, method="sft")
    elapsed = time.perf_counter() - t0
    r = prepared.report
    return {
        "seconds": elapsed,
        "samples": r.samples,
        "samples_per_s": len(loaded.train) / elapsed,
        "tokens": r.tokens,
        "rows": r.packed_rows,
        "efficiency": r.packing_efficiency,
        "truncated": r.truncated,
        "padding_fraction_unpacked": r.padding_fraction_unpacked,
        "lengths": [len(s) for s in prepared.train_samples],
        "loss_tokens": r.loss_tokens,
    }


def trl_side(path: Path, tokenizer: Any, max_len: int, workdir: Path) -> dict[str, Any]:
    import datasets
    from trl import SFTConfig, SFTTrainer  # type: ignore[attr-defined]

    from tidetune_trainer.tiny import build_tiny_llama

    datasets.disable_progress_bars()
    tok = type(tokenizer).from_pretrained(_save(tokenizer, workdir / "tok"))
    tok.chat_template = TRL_TEMPLATE
    model = build_tiny_llama(tok, seed=0)
    args = SFTConfig(
        output_dir=str(workdir / "trl"),
        max_length=max_len,
        packing=True,
        packing_strategy="bfd",
        assistant_only_loss=True,
        report_to=[],
        use_cpu=True,
        dataset_num_proc=None,
        seed=42,
        shuffle_dataset=False,
    )
    tiny = datasets.Dataset.from_list(
        [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}]
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=tiny, processing_class=tok)
    t0 = time.perf_counter()
    ds = datasets.load_dataset(
        "json",
        data_files=str(path),
        split="train",
        cache_dir=str(workdir / "hfcache"),
        keep_in_memory=True,
    )
    n = len(ds)
    packed = trainer._prepare_dataset(ds, tok, args, True, None, "train")
    elapsed = time.perf_counter() - t0
    lengths = [sum(x) for x in packed["seq_lengths"]]
    labels = packed["labels"]
    tokens = sum(lengths)
    return {
        "seconds": elapsed,
        "samples": n,
        "samples_per_s": n / elapsed,
        "tokens": tokens,
        "rows": len(packed),
        "efficiency": tokens / (len(packed) * max_len),
        "loss_tokens": sum(sum(1 for t in row if t != -100) for row in labels),
    }


def _save(tokenizer: Any, d: Path) -> str:
    tokenizer.save_pretrained(d)
    return str(d)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=5000)
    p.add_argument("--max-seq-length", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)

    from tidetune_trainer.tiny import train_tiny_tokenizer

    # with --json, stdout carries only the JSON: libraries' chatter goes to stderr
    saved = None
    if a.json:
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(2, 1)
    try:
        result = _run(a, train_tiny_tokenizer)
    finally:
        if saved is not None:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
    if a.json:
        print(json.dumps(result, indent=2))
        return 0
    _print(a, result)
    return 0


def _run(a: argparse.Namespace, train_tiny_tokenizer: Any) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = make_dataset(a.samples, a.seed)
        path = work / "train.jsonl"
        path.write_text("\n".join(json.dumps(d) for d in data) + "\n")
        tokenizer = train_tiny_tokenizer(
            (m["content"] for d in data for m in d["messages"]), seed=a.seed
        )

        o = ours(path, tokenizer, a.max_seq_length, a.batch_size)
        t = trl_side(path, tokenizer, a.max_seq_length, work)

    no_pack_eff = 1.0 - o["padding_fraction_unpacked"]
    lengths = sorted(o.pop("lengths"))
    q = [lengths[max(0, math.ceil(f * len(lengths)) - 1)] for f in (0.5, 0.9, 0.99)] + [lengths[-1]]
    result = {
        "samples": a.samples,
        "max_seq_length": a.max_seq_length,
        "batch_size": a.batch_size,
        "length_p50_p90_p99_max": q,
        "ours": o,
        "trl": t,
        "no_packing": {"efficiency": no_pack_eff},
        "ratios": {
            "efficiency_ours_vs_trl": o["efficiency"] / t["efficiency"],
            "efficiency_ours_vs_no_packing": o["efficiency"] / no_pack_eff,
            "rows_trl_vs_ours": t["rows"] / o["rows"],
            "samples_per_s_ours_vs_trl": o["samples_per_s"] / t["samples_per_s"],
        },
    }
    return result


def _print(a: argparse.Namespace, result: dict[str, Any]) -> None:
    o, t = result["ours"], result["trl"]
    q = result["length_p50_p90_p99_max"]
    no_pack_eff = result["no_packing"]["efficiency"]
    w = sys.stdout.write
    w(f"packing bench: {a.samples} multi-turn samples, log-normal lengths, ")
    w(f"max_seq_length {a.max_seq_length}\n")
    w(f"token lengths p50/p90/p99/max: {q[0]}/{q[1]}/{q[2]}/{q[3]} ")
    w(f"(truncated: {o['truncated']})\n\n")
    w(f"{'':24}{'ours (BFD)':>14}{'TRL (bfd)':>14}{'no packing':>14}\n")
    eff = (o["efficiency"], t["efficiency"], no_pack_eff)
    w(f"{'packing efficiency':24}{eff[0]:>14.4f}{eff[1]:>14.4f}{eff[2]:>14.4f}\n")
    w(f"{'rows':24}{o['rows']:>14}{t['rows']:>14}{o['samples']:>14}\n")
    w(f"{'real tokens':24}{o['tokens']:>14}{t['tokens']:>14}{o['tokens']:>14}\n")
    w(f"{'loss tokens':24}{o['loss_tokens']:>14}{t['loss_tokens']:>14}{'':>14}\n")
    w(f"{'prep seconds':24}{o['seconds']:>14.2f}{t['seconds']:>14.2f}\n")
    w(f"{'prep samples/s':24}{o['samples_per_s']:>14.0f}{t['samples_per_s']:>14.0f}\n\n")
    r = result["ratios"]
    w(f"efficiency ours/TRL        {r['efficiency_ours_vs_trl']:.3f}x\n")
    w(f"efficiency ours/no packing {r['efficiency_ours_vs_no_packing']:.3f}x\n")
    w(f"prep samples/s ours/TRL    {r['samples_per_s_ours_vs_trl']:.2f}x\n")


if __name__ == "__main__":
    raise SystemExit(main())
