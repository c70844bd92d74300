"""``builtin://tiny-llama`` and the loader of real models from a directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from tidetune_trainer.tiny import (
    ALLOW_HUB_ENV,
    SPECIAL_TOKENS,
    TINY_URI,
    ModelLoadError,
    build_tiny_llama,
    load_model,
    load_tokenizer,
    resolve_model_dir,
    train_tiny_tokenizer,
)

from .data.conftest import corpus

pytestmark = pytest.mark.trainer
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tok() -> Any:
    return load_tokenizer(TINY_URI, texts=corpus(), seed=0)


def test_tokenizer_is_deterministic_for_the_data(tok: Any) -> None:
    again = train_tiny_tokenizer(corpus(), seed=0)
    assert again.get_vocab() == tok.get_vocab()
    assert again.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()
    other = train_tiny_tokenizer(corpus(seed=5, n=500) + ["zebra quagga xylophone"] * 20, seed=0)
    assert other.get_vocab() != tok.get_vocab()


def test_tokenizer_special_tokens_and_byte_level(tok: Any) -> None:
    assert tok.is_fast
    assert len(tok) <= 1024
    for t in SPECIAL_TOKENS:
        assert len(tok(t, add_special_tokens=False)["input_ids"]) == 1, t
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<pad>", "<s>", "</s>")
    text = "unseen: 古诗续写 ✓ émoji 🙂"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_model_shape_and_seeded_init(tok: Any) -> None:
    state = torch.random.get_rng_state()
    a = build_tiny_llama(tok, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state), "global RNG left untouched"
    b = build_tiny_llama(tok, seed=1)
    c = build_tiny_llama(tok, seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    cfg = a.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (2, 64, 4)
    assert cfg.vocab_size >= len(tok) and cfg.vocab_size % 64 == 0
    assert cfg.use_cache is False
    out = a(input_ids=torch.tensor([[1, 20, 30, 40]]), labels=torch.tensor([[1, 20, 30, 40]]))
    assert torch.isfinite(out.loss) and 3.0 < out.loss.item() < 9.0  # ≈ ln(vocab) at init


def test_save_and_load_from_file_and_pvc(
    tok: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = build_tiny_llama(tok, seed=3)
    d = tmp_path / "claims" / "models" / "tiny"
    m.save_pretrained(d)
    tok.save_pretrained(d)
    ids = torch.tensor([[1, 50, 60, 70]])
    ref = m(input_ids=ids).logits
    for uri in (f"file://{d}", str(d)):
        m2 = load_model(uri)
        assert torch.allclose(m2(input_ids=ids).logits, ref)
    monkeypatch.setenv("TIDETUNE_PVC_ROOT", str(tmp_path / "claims"))
    t2 = load_tokenizer("pvc://models/tiny")
    assert t2.get_vocab() == tok.get_vocab()
    assert t2.chat_template == tok.chat_template
    assert resolve_model_dir("pvc://models/tiny") == str(d)


def test_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOW_HUB_ENV, raising=False)
    with pytest.raises(ModelLoadError, match="downloading from a model hub is disabled"):
        load_model("hf://org/name")
    monkeypatch.setenv(ALLOW_HUB_ENV, "1")
    assert resolve_model_dir("hf://org/name") == "org/name"
    with pytest.raises(ModelLoadError, match="unknown built-in model"):
        load_tokenizer("builtin://giant", texts=["x"])
    with pytest.raises(ModelLoadError, match="pass texts"):
        load_tokenizer(TINY_URI)
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        resolve_model_dir(str(tmp_path))
    with pytest.raises(ModelLoadError, match="unsupported storage scheme 'gs://'"):
        resolve_model_dir("gs://bucket/model")


def test_load_from_s3_through_the_cache(tok: Any, tmp_path: Path) -> None:
    from tests.support.s3 import start_s3
    from tidetune.storage import S3Credentials, open_store

    m = build_tiny_llama(tok, seed=4)
    src = tmp_path / "src"
    m.save_pretrained(src)
    tok.save_pretrained(src)
    with start_s3("models") as ep:
        creds = S3Credentials(
            endpoint=ep.endpoint, access_key=ep.access_key, secret_key=ep.secret_key
        )
        store, key = open_store("s3://models/tiny/v1", creds)
        store.upload_dir(src, key)
        cache = tmp_path / "cache"
        m2 = load_model("s3://models/tiny/v1/", cache_dir=cache, credentials=creds)
        t2 = load_tokenizer("s3://models/tiny/v1", cache_dir=cache, credentials=creds)
        assert t2.get_vocab() == tok.get_vocab()
        ids = torch.tensor([[1, 9, 99]])
        assert torch.allclose(m2(input_ids=ids).logits, m(input_ids=ids).logits)
        assert len(list(cache.iterdir())) == 1  # one download, reused
        with pytest.raises(ModelLoadError, match="no objects under this prefix"):
            resolve_model_dir("s3://models/absent", cache_dir=cache, credentials=creds)


def test_tokenizer_is_deterministic_across_processes(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "from tests.tidetune_trainer.data.conftest import corpus\n"
        "from tidetune_trainer.tiny import train_tiny_tokenizer\n"
        "import hashlib\n"
        "t = train_tiny_tokenizer(corpus(800, seed=3), seed=1)\n"
        "print(hashlib.sha256(t.backend_tokenizer.to_str().encode()).hexdigest())\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "random"}
    outs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
        ).stdout
        for _ in range(2)
    }
    assert len(outs) == 1
