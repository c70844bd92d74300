"""Real tokenizers, real chat templates and real architectures for the trainer tests.

- **Vocabularies**: the vocabulary-only GGUF files that ``.ci/setup-vocabs.sh`` extracts
  from the llama-cpp-python source distribution into ``.tools/vocabs``
  (``ggml-vocab-qwen2.gguf``, ``-llama-bpe``, ``-phi-3``, ``-gemma-4``, ``-gpt-2``, …),
  turned into fast tokenizers by transformers' own GGUF tokenizer converter
  (``transformers.integrations.gguf``).
- **Chat templates**: the ones TRL ships (``trl/chat_templates/<name>.jinja``), the
  original (not the training) variants, as a model's tokenizer would carry them. Special
  tokens a template uses that the vocabulary lacks are added as special tokens, as the
  real model's tokenizer has them (e.g. Qwen3's ``<think>``).
- **Architectures**: small random models built from config (Llama, Qwen2, Qwen3, Gemma 3,
  Phi-3, Mistral, OPT, Bloom, MPT, GPT-2, GPT-NeoX) with the embedding sized to the real
  vocabulary and tiny hidden sizes.

Built tokenizer directories are cached under ``.tools/tokenizers`` (a few seconds each to
build, milliseconds to load). ``python -m tests.tidetune_trainer.realvocab`` builds them all.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
VOCABS = REPO / ".tools" / "vocabs"
CACHE = REPO / ".tools" / "tokenizers"
_BUILD_VERSION = "1"


def trl_template(name: str) -> str:
    """A chat template TRL ships (``trl/chat_templates/<name>.jinja``)."""
    import trl

    path = Path(trl.__file__).parent / "chat_templates" / f"{name}.jinja"
    return path.read_text(encoding="utf-8")


def have_vocab(vocab: str) -> bool:
    return (VOCABS / f"ggml-vocab-{vocab}.gguf").is_file()


def require_vocabs() -> None:
    """Fail (not skip) when the vocabularies are missing: ``.ci/setup`` installs them."""
    if not VOCABS.is_dir() or not any(VOCABS.glob("ggml-vocab-*.gguf")):
        pytest.fail(f"no vocabularies in {VOCABS}; run `bash .ci/setup-vocabs.sh`")


#: tokens shaped like chat control tokens in a template's literal text
_CONTROL = re.compile(
    r"<\|[^<>|\s]{1,40}\|>|<｜[^<>｜]{1,40}｜>|<start_of_turn>|<end_of_turn>|</?think>"
)


def template_tokens(template: str) -> list[str]:
    """The control tokens a template writes (``<|im_start|>``, ``<end_of_turn>``, …)."""
    return sorted(set(_CONTROL.findall(template)))


@dataclass(frozen=True)
class TemplateCase:
    """A real chat template on a real vocabulary."""

    name: str  #: TRL's template file name (without ``.jinja``)
    vocab: str  #: ``ggml-vocab-<vocab>.gguf``
    #: the token that ends an assistant turn
    end_of_turn: str


#: TRL's templates with a training variant, each on the vocabulary its model family uses
#: (or, where that vocabulary is not shipped, a real one of the same kind plus the
#: template's control tokens).
TEMPLATE_CASES: dict[str, TemplateCase] = {
    c.name: c
    for c in (
        TemplateCase("qwen2_5", "qwen2", "<|im_end|>"),
        TemplateCase("qwen3", "qwen35", "<|im_end|>"),
        TemplateCase("llama3", "llama-bpe", "<|eot_id|>"),
        TemplateCase("gemma3", "gemma-4", "<end_of_turn>"),
        TemplateCase("phi3", "phi-3", "<|end|>"),
        TemplateCase("phi3_5", "phi-3", "<|end|>"),
        TemplateCase("deepseek_r1_distill", "deepseek-llm", "<｜end▁of▁sentence｜>"),
        TemplateCase("gptoss", "qwen2", "<|return|>"),
        TemplateCase("cohere", "command-r", "<|END_OF_TURN_TOKEN|>"),
    )
}


def _build(vocab: str, template: str | None, dest: Path) -> None:
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf import convert_gguf_tokenizer, get_gguf_tokenizer

    arch, tokenizer_dict, config = get_gguf_tokenizer(str(VOCABS / f"ggml-vocab-{vocab}.gguf"))
    backend, _ = convert_gguf_tokenizer(arch, tokenizer_dict)
    kwargs = {k: v for k, v in config.items() if k != "chat_template" and v is not None}
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)  # type: ignore[no-untyped-call]
    if template is not None:
        vocab_now = tok.get_vocab()
        added_vocab = tok.get_added_vocab()
        missing = [
            t for t in template_tokens(template) if t not in vocab_now or t not in added_vocab
        ]
        if missing:
            tok.add_special_tokens({"additional_special_tokens": missing})  # type: ignore[dict-item]
        tok.chat_template = template
    else:
        tok.chat_template = None
    tok.save_pretrained(str(dest))


def tokenizer_dir(vocab: str, template: str | None = None) -> Path:
    """A saved tokenizer directory for ``vocab`` with ``template`` (a TRL template name,
    or None for no chat template: a base model). Built once, cached."""
    require_vocabs()
    if not have_vocab(vocab):
        pytest.fail(f"no {VOCABS}/ggml-vocab-{vocab}.gguf; run `bash .ci/setup-vocabs.sh`")
    text = trl_template(template) if template else None
    key = hashlib.sha256(
        f"{_BUILD_VERSION}\0{vocab}\0{text or ''}".encode()
        + (VOCABS / f"ggml-vocab-{vocab}.gguf").read_bytes()[:4096]
    ).hexdigest()[:12]
    dest = CACHE / f"{vocab}--{template or 'none'}--{key}"
    if (dest / "tokenizer.json").is_file():
        return dest
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=CACHE))
    try:
        _build(vocab, text, tmp)
        try:
            os.replace(tmp, dest)
        except OSError:  # built meanwhile by another process
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def load_tokenizer(vocab: str, template: str | None = None) -> Any:
    """The fast tokenizer of :func:`tokenizer_dir`."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir(vocab, template)))


def template_tokenizer(name: str) -> Any:
    """The tokenizer of a :data:`TEMPLATE_CASES` entry."""
    case = TEMPLATE_CASES[name]
    return load_tokenizer(case.vocab, case.name)


# --------------------------------------------------------------------------- models

#: architecture → the vocabulary its models use (or the closest real one shipped)
ARCH_VOCAB: dict[str, str] = {
    "llama": "llama-bpe",
    "qwen2": "qwen2",
    "qwen3": "qwen35",
    "gemma3": "gemma-4",
    "phi3": "phi-3",
    "mistral": "llama-spm",
    "opt": "gpt-2",
    "bloom": "falcon",
    "mpt": "mpt",
    "gpt2": "gpt-2",
    "gpt_neox": "gpt-neox",
}
ARCHITECTURES = tuple(ARCH_VOCAB)

H, LAYERS, HEADS = 32, 2, 4


def tiny_config(arch: str, vocab_size: int, **overrides: Any) -> Any:
    """A tiny config of ``arch`` with a ``vocab_size`` embedding (hidden 32, 2 layers)."""
    import transformers as tf

    common: dict[str, Any] = {"vocab_size": vocab_size}
    cfg: Any
    if arch in ("llama", "qwen2", "qwen3", "mistral", "phi3"):
        cls = {
            "llama": tf.LlamaConfig,
            "qwen2": tf.Qwen2Config,
            "qwen3": tf.Qwen3Config,
            "mistral": tf.MistralConfig,
            "phi3": tf.Phi3Config,
        }[arch]
        cfg = cls(
            hidden_size=H,
            intermediate_size=2 * H,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            tie_word_embeddings=True,
            **common,
        )
        if arch == "qwen3":
            cfg.head_dim = H // HEADS
    elif arch == "gemma3":
        cfg = tf.Gemma3TextConfig(
            hidden_size=H,
            intermediate_size=2 * H,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            num_key_value_heads=2,
            head_dim=H // HEADS,
            query_pre_attn_scalar=H // HEADS,
            sliding_window=64,
            max_position_embeddings=4096,
            **common,
        )
    elif arch == "opt":
        cfg = tf.OPTConfig(
            hidden_size=H,
            ffn_dim=2 * H,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            word_embed_proj_dim=H,
            max_position_embeddings=2048,
            **common,
        )
    elif arch == "bloom":
        cfg = tf.BloomConfig(hidden_size=H, n_layer=LAYERS, n_head=HEADS, **common)
    elif arch == "mpt":
        cfg = tf.MptConfig(d_model=H, n_heads=HEADS, n_layers=LAYERS, max_seq_len=2048, **common)
    elif arch == "gpt2":
        cfg = tf.GPT2Config(n_embd=H, n_layer=LAYERS, n_head=HEADS, n_positions=2048, **common)
    elif arch == "gpt_neox":
        cfg = tf.GPTNeoXConfig(
            hidden_size=H,
            intermediate_size=2 * H,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            max_position_embeddings=2048,
            **common,
        )
    else:
        raise KeyError(arch)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def tiny_model(
    arch: str, tokenizer: Any, *, seed: int = 0, dtype: Any = None, **overrides: Any
) -> Any:
    """A random ``arch`` causal LM for ``tokenizer`` (vocab rounded up to 64), fp32 unless
    ``dtype``, built from config with ``seed`` (the global RNG is left as it was)."""
    import torch
    from transformers import AutoModelForCausalLM

    vocab = -(-len(tokenizer) // 64) * 64
    cfg = tiny_config(arch, vocab, **overrides)
    for name in ("bos", "eos", "pad"):
        tid = getattr(tokenizer, f"{name}_token_id", None)
        if tid is not None:
            setattr(cfg, f"{name}_token_id", tid)
    cfg.use_cache = False
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(
            cfg, attn_implementation="sdpa" if arch not in ("mpt", "bloom", "opt") else "eager"
        )
    if dtype is not None:
        model = model.to(dtype)
    return model


def model_dir(
    dest: Path,
    arch: str,
    *,
    vocab: str | None = None,
    template: str | None = None,
    seed: int = 0,
    dtype: Any = None,
    **overrides: Any,
) -> Path:
    """Save a tiny ``arch`` model with a real tokenizer into ``dest`` (a ``file://`` base
    model for jobs)."""
    tok = load_tokenizer(vocab or ARCH_VOCAB[arch], template)
    model = tiny_model(arch, tok, seed=seed, dtype=dtype, **overrides)
    model.save_pretrained(str(dest))
    tok.save_pretrained(str(dest))
    return dest


def main() -> int:
    """Build every tokenizer directory the tests use (``.ci/setup`` may call this)."""
    built = set()
    for case in TEMPLATE_CASES.values():
        print(tokenizer_dir(case.vocab, case.name), file=sys.stderr)
        built.add((case.vocab, case.name))
    for vocab in ARCH_VOCAB.values():
        if (vocab, None) not in built:
            print(tokenizer_dir(vocab, None), file=sys.stderr)
            built.add((vocab, None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
