"""Base models: ``builtin://tiny-llama`` and real models from a directory.

``builtin://tiny-llama`` is a **smoke-test model for checking the platform, not for
quality**: a 2-layer ``LlamaForCausalLM`` (hidden size 64, 4 heads, 2 KV heads) built
from config with a deterministic initialisation for the seed, and a byte-level BPE
tokenizer (vocabulary ≤ 1024) trained on the fly with ``tokenizers`` on the job's own
texts, deterministic for the seed and the data. Its tokenizer carries the TideTune chat
template (``tidetune_trainer.data.chat``) and the special tokens ``<pad>``, ``<s>``,
``</s>``, ``<|system|>``, ``<|user|>``, ``<|assistant|>``, ``<|end|>``.

Real models load with ``AutoModelForCausalLM``/``AutoTokenizer.from_pretrained`` from a
local directory: ``file://`` or plain paths, ``pvc://claim/path`` (the mounted claim),
or ``s3://bucket/prefix`` (downloaded to a cache directory first). Nothing is ever
downloaded from a model hub: ``hf://org/name`` is refused with a clear error unless
``TIDETUNE_ALLOW_HUB=1`` is set (for clusters that can reach a hub). A tokenizer without
a chat template (a base model's) gets the TideTune template and its special tokens, and
the model's embeddings grow to match (:func:`add_chat_template`, :func:`fit_embeddings`).
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tidetune.storage import LocalStore, S3Credentials, StorageError, open_store, scheme_of

from .data.chat import CHAT_SPECIAL_TOKENS, TIDETUNE_CHAT_TEMPLATE

TINY_URI = "builtin://tiny-llama"
ALLOW_HUB_ENV = "TIDETUNE_ALLOW_HUB"
MODEL_CACHE_ENV = "TIDETUNE_MODEL_CACHE"

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, *CHAT_SPECIAL_TOKENS)

TINY_VOCAB_SIZE = 1024
TINY_HIDDEN = 64
TINY_INTERMEDIATE = 176
TINY_LAYERS = 2
TINY_HEADS = 4
TINY_KV_HEADS = 2
#: Characters of text the tiny tokenizer is trained on at most (a seeded sample beyond).
TOKENIZER_TRAIN_CHARS = 4_000_000
_COMPLETE_MARKER = ".tidetune-complete"


class ModelLoadError(Exception):
    """The base model cannot be loaded; the message names the URI and what to do."""


def is_builtin(uri: str) -> bool:
    """Whether ``uri`` names a built-in model."""
    return scheme_of(uri) == "builtin"


def _check_builtin(uri: str) -> None:
    if uri.rstrip("/") != TINY_URI:
        raise ModelLoadError(f"{uri}: unknown built-in model; the only one is {TINY_URI}")


# --------------------------------------------------------------------------- tiny


def _sample_texts(texts: Iterable[str], seed: int, max_chars: int) -> list[str]:
    pool = [t for t in texts if t]
    total = sum(len(t) for t in pool)
    if total <= max_chars:
        return pool
    order = list(range(len(pool)))
    random.Random(f"tidetune-tokenizer-{seed}").shuffle(order)
    out: list[str] = []
    n = 0
    for i in order:
        if n >= max_chars:
            break
        out.append(pool[i])
        n += len(pool[i])
    return out


def train_tiny_tokenizer(
    texts: Iterable[str], *, vocab_size: int = TINY_VOCAB_SIZE, seed: int = 42
) -> Any:
    """Train a byte-level BPE tokenizer on ``texts``; a ``PreTrainedTokenizerFast``.

    Deterministic for the same texts (in the same order) and seed: the seed only picks
    the sample when the texts exceed ``TOKENIZER_TRAIN_CHARS``. Byte-level, so any text
    can be encoded. Raises ``ModelLoadError`` when ``vocab_size`` is too small.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    smallest = len(alphabet) + len(SPECIAL_TOKENS)
    if vocab_size < smallest:
        raise ModelLoadError(f"tiny tokenizer vocab_size must be ≥ {smallest}, got {vocab_size}")
    sample = _sample_texts(texts, seed, TOKENIZER_TRAIN_CHARS)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(sample, trainer=trainer, length=len(sample))
    # like Llama's tokenizer, it adds BOS itself (add_special_tokens=True)
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A",
                pair=f"{BOS} $A {BOS} $B",
                special_tokens=[(BOS, tok.token_to_id(BOS))],
            ),
        ]
    )
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=list(CHAT_SPECIAL_TOKENS),
        model_max_length=1_048_576,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = TIDETUNE_CHAT_TEMPLATE
    return fast


def build_tiny_llama(tokenizer: Any, *, seed: int = 42, max_position_embeddings: int = 4096) -> Any:
    """A tiny ``LlamaForCausalLM`` for ``tokenizer``, initialised deterministically for ``seed``.

    The global torch RNG is left as it was. ``use_cache`` is off (training, packing).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = -(-len(tokenizer) // 64) * 64
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=TINY_HIDDEN,
        intermediate_size=TINY_INTERMEDIATE,
        num_hidden_layers=TINY_LAYERS,
        num_attention_heads=TINY_HEADS,
        num_key_value_heads=TINY_KV_HEADS,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=False,
    )
    config._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = [
        tokenizer.eos_token_id,
        tokenizer.convert_tokens_to_ids("<|end|>"),
    ]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


# --------------------------------------------------------------------------- real models


def default_cache_dir() -> Path:
    """``$TIDETUNE_MODEL_CACHE`` or ``~/.cache/tidetune/models``."""
    env = os.environ.get(MODEL_CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "tidetune" / "models"


def resolve_model_dir(
    uri: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    credentials: S3Credentials | None = None,
) -> str:
    """A local directory (or, with ``TIDETUNE_ALLOW_HUB=1``, a hub id) holding the model.

    ``s3://`` models are downloaded once into ``cache_dir`` (a marker file records a
    complete download). Raises ``ModelLoadError`` for ``builtin://``, ``hf://`` without
    the opt-in, unknown schemes and directories without ``config.json``;
    ``StorageError`` when the store cannot be read.
    """
    scheme = scheme_of(uri)
    if scheme == "builtin":
        raise ModelLoadError(f"{uri}: a built-in model has no directory; use load_model")
    if scheme == "hf":
        if os.environ.get(ALLOW_HUB_ENV) != "1":
            raise ModelLoadError(
                f"{uri}: downloading from a model hub is disabled; copy the model to s3:// or a "
                f"pvc:// and point baseModel.uri there, or set {ALLOW_HUB_ENV}=1 where the "
                "cluster may reach the hub"
            )
        return uri.split("://", 1)[1].strip("/")
    try:
        store, key = open_store(uri, credentials)
    except StorageError as e:
        raise ModelLoadError(f"{uri}: not a model location: {e}") from None
    if isinstance(store, LocalStore):
        local = store.path(key)
    else:
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        digest = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
        local = root / digest
        if not (local / _COMPLETE_MARKER).exists():
            keys = store.list(key)
            if not keys:
                raise ModelLoadError(f"{uri}: no objects under this prefix; check the model URI")
            store.download_dir(key, local)
            (local / _COMPLETE_MARKER).write_text(uri)
    if not (local / "config.json").is_file():
        raise ModelLoadError(
            f"{uri}: no config.json in {local}; point baseModel.uri at a directory saved with "
            "save_pretrained()"
        )
    return str(local)


def load_tokenizer(
    uri: str,
    *,
    texts: Iterable[str] | None = None,
    seed: int = 42,
    cache_dir: str | os.PathLike[str] | None = None,
    credentials: S3Credentials | None = None,
) -> Any:
    """The tokenizer of the model at ``uri``.

    For ``builtin://tiny-llama`` it is trained on ``texts`` (required). A tokenizer
    without a pad token gets its EOS as pad. Raises ``ModelLoadError``.
    """
    if is_builtin(uri):
        _check_builtin(uri)
        if texts is None:
            raise ModelLoadError(
                f"{uri}: the tiny tokenizer is trained on the job's texts; pass texts"
            )
        return train_tiny_tokenizer(texts, seed=seed)
    from transformers import AutoTokenizer

    local = resolve_model_dir(uri, cache_dir=cache_dir, credentials=credentials)
    try:
        tok = AutoTokenizer.from_pretrained(local, local_files_only=not _hub(uri))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{uri}: cannot load the tokenizer: {e}") from None
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    add_chat_template(tok)
    return tok


def add_chat_template(tokenizer: Any) -> list[int]:
    """Give a tokenizer without a chat template (a base model's) the TideTune template and
    its special tokens, so ``<|end|>`` is one token the model learns to stop on and the
    exported tokenizer renders conversations as in training.

    Returns the ids of the chat tokens (``[]`` when the tokenizer has a template). The
    model's embeddings must then cover ``len(tokenizer)`` (:func:`fit_embeddings`).
    """
    if getattr(tokenizer, "chat_template", None):
        return []
    tokenizer.add_tokens(list(CHAT_SPECIAL_TOKENS), special_tokens=True)
    tokenizer.chat_template = TIDETUNE_CHAT_TEMPLATE
    return chat_token_ids(tokenizer)


def chat_token_ids(tokenizer: Any) -> list[int]:
    """The ids of the TideTune chat tokens in ``tokenizer``."""
    return [int(tokenizer.convert_tokens_to_ids(t)) for t in CHAT_SPECIAL_TOKENS]


def fit_embeddings(model: Any, tokenizer: Any) -> bool:
    """Grow the model's embeddings (and output layer) to ``len(tokenizer)`` rows, rounded up
    to 64, when tokens were added; new rows start at the mean of the old ones. When the
    tokenizer carries the TideTune template, ``<|end|>`` also ends generation. Returns
    whether the embeddings grew."""
    rows = model.get_input_embeddings().weight.shape[0]
    grew = bool(len(tokenizer) > rows)
    if grew:
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)
    if getattr(tokenizer, "chat_template", None) == TIDETUNE_CHAT_TEMPLATE:
        gen = getattr(model, "generation_config", None)
        end = int(tokenizer.convert_tokens_to_ids("<|end|>"))
        if gen is not None:
            eos = gen.eos_token_id
            ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
            if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
                ids.append(int(tokenizer.eos_token_id))
            if end not in ids:
                ids.append(end)
            gen.eos_token_id = ids
    return grew


def _hub(uri: str) -> bool:
    return scheme_of(uri) == "hf"


def load_model(
    uri: str,
    *,
    tokenizer: Any = None,
    seed: int = 42,
    cache_dir: str | os.PathLike[str] | None = None,
    credentials: S3Credentials | None = None,
    max_position_embeddings: int = 4096,
    **from_pretrained: Any,
) -> Any:
    """The causal LM at ``uri`` (``builtin://tiny-llama`` needs its ``tokenizer``).

    Extra keyword arguments go to ``AutoModelForCausalLM.from_pretrained`` (``dtype``,
    ``attn_implementation``, ``quantization_config``, …). Raises ``ModelLoadError``.
    """
    if is_builtin(uri):
        _check_builtin(uri)
        if tokenizer is None:
            raise ModelLoadError(
                f"{uri}: pass the tokenizer (load_tokenizer) to build the tiny model"
            )
        return build_tiny_llama(
            tokenizer, seed=seed, max_position_embeddings=max_position_embeddings
        )
    from transformers import AutoModelForCausalLM

    local = resolve_model_dir(uri, cache_dir=cache_dir, credentials=credentials)
    given = {k: v for k, v in from_pretrained.items() if v is not None}  # None: the default
    try:
        model = AutoModelForCausalLM.from_pretrained(local, local_files_only=not _hub(uri), **given)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{uri}: cannot load the model: {e}") from None
    if tokenizer is not None:
        fit_embeddings(model, tokenizer)
    return model
