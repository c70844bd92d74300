"""Pure parts of the training side: data order, LR schedule, DeepSpeed config, checkpoint
bookkeeping, exit-code plumbing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tidetune import exitcodes
from tidetune.storage import open_store
from tidetune_trainer.checkpoint import CheckpointManager, TrainerState
from tidetune_trainer.config import TrainConfig
from tidetune_trainer.engine import deepspeed_config, lr_lambda
from tidetune_trainer.launch import final_code
from tidetune_trainer.loop import DataOrder, total_steps

pytestmark = pytest.mark.trainer


def test_data_order_is_deterministic_disjoint_and_complete() -> None:
    order = DataOrder(rows=10, seed=7, world_size=2, batch_size=2, grad_accum=2)
    assert order.steps_per_epoch == 2  # 10 rows / (2·2·2) per step, rounded up
    e0 = order.epoch_order(0)
    assert e0 == order.epoch_order(0) and e0 != order.epoch_order(1)
    seen = []
    for m in range(order.micro_per_epoch):
        r0, r1 = order.micro_batch(e0, m, 0), order.micro_batch(e0, m, 1)
        assert len(r0) == len(r1) == 2
        seen += r0 + r1
    assert set(seen) == set(range(10))  # every row, the last step filled by wrapping
    cfg = TrainConfig(epochs=3)
    assert total_steps(cfg, order.steps_per_epoch) == 6
    assert total_steps(cfg.with_(max_steps=5), order.steps_per_epoch) == 5


def test_lr_schedule_warmup_then_cosine_to_zero() -> None:
    f = lr_lambda(TrainConfig(warmup_steps=4, lr_scheduler="cosine"), total_steps=20)
    assert [round(f(s), 3) for s in range(4)] == [0.2, 0.4, 0.6, 0.8]
    assert f(4) == pytest.approx(1.0) and f(20) == pytest.approx(0.0)
    lin = lr_lambda(TrainConfig(warmup_steps=None, warmup_ratio=0.0, lr_scheduler="linear"), 10)
    assert lin(5) == pytest.approx(0.5)
    assert lr_lambda(TrainConfig(warmup_steps=0, lr_scheduler="constant"), 10)(9) == 1.0


@pytest.mark.parametrize("stage,offload", [(1, "none"), (2, "cpu"), (3, "cpu"), (3, "none")])
def test_deepspeed_config_follows_the_spec(stage: int, offload: str) -> None:
    cfg = TrainConfig(
        zero_stage=stage,
        offload=offload,  # type: ignore[arg-type]
        batch_size=4,
        gradient_accumulation_steps=3,
        max_grad_norm=0.7,
    )
    ds = deepspeed_config(cfg, world_size=8, precision="bf16")
    assert ds["train_batch_size"] == 4 * 3 * 8
    assert ds["gradient_clipping"] == 0.7 and ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    zero = ds["zero_optimization"]
    assert zero["stage"] == stage
    assert ("offload_optimizer" in zero) == (offload == "cpu")
    assert ("offload_param" in zero) == (offload == "cpu" and stage == 3)
    assert zero.get("stage3_gather_16bit_weights_on_model_save", False) == (stage == 3)


def _fake_checkpoint(ckpt: CheckpointManager, step: int, *, complete: bool = True) -> None:
    d = ckpt.begin(step)
    (d / "state").mkdir(exist_ok=True)
    (d / "state" / "rng-rank0.pt").write_bytes(b"x" * step)
    if complete:
        ckpt.commit(step, TrainerState(step=step, epoch=0, micro_index=step), keep=2)


def test_checkpoints_complete_marker_and_retention(tmp_path: Path) -> None:
    store, key = open_store(f"file://{tmp_path}/run")
    ckpt = CheckpointManager(store, key)
    assert ckpt.latest() is None
    for s in (2, 4, 6):
        _fake_checkpoint(ckpt, s)
    _fake_checkpoint(ckpt, 8, complete=False)  # a kill mid-write
    assert [c.step for c in ckpt.complete()] == [4, 6]  # keep 2
    latest = ckpt.latest()
    assert latest is not None and latest.step == 6
    marker = json.loads((tmp_path / "run/checkpoints/step-00000006/COMPLETE").read_text())
    assert marker["files"]["state/rng-rank0.pt"] == 6 and "trainer_state.json" in marker["files"]
    local, state = ckpt.fetch(latest)
    assert state.step == 6 and state.micro_index == 6
    assert (local / "state" / "rng-rank0.pt").read_bytes() == b"x" * 6


def test_checkpoints_on_s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.s3 import start_s3

    with start_s3("runs") as s3:
        monkeypatch.setenv("TIDETUNE_S3_ENDPOINT", s3.endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_key)
        store, key = open_store("s3://runs/ns/job/uid")
        ckpt = CheckpointManager(store, key, scratch=tmp_path / "scratch")
        _fake_checkpoint(ckpt, 3)
        _fake_checkpoint(ckpt, 5, complete=False)
        assert [c.step for c in ckpt.complete()] == [3]
        assert store.exists("ns/job/uid/checkpoints/step-00000003/COMPLETE")
        assert not store.exists("ns/job/uid/checkpoints/step-00000005/COMPLETE")
        info = ckpt.latest()
        assert info is not None and info.uri == "s3://runs/ns/job/uid/checkpoints/step-00000003"
        local, state = ckpt.fetch(info)
        assert state.step == 3 and (local / "state" / "rng-rank0.pt").read_bytes() == b"xxx"


def test_exit_codes_combine_and_wrapper() -> None:
    assert exitcodes.combine([0, 0]) == 0
    assert exitcodes.combine([85, 85]) == 85
    assert exitcodes.combine([85, 1]) == 1  # a crash explains a peer's stop
    assert exitcodes.combine([1, 65]) == 65
    assert exitcodes.combine([0, -9]) == 1
    assert exitcodes.classify(-15) is exitcodes.Outcome.KILLED
    assert exitcodes.classify(137) is exitcodes.Outcome.KILLED
    assert exitcodes.classify(85).retryable and not exitcodes.classify(65).retryable
    assert "preempted" in exitcodes.describe(85)
    # torchrun says 1 whenever a worker fails; the ranks' own codes win
    assert final_code(1, [85, 85]) == 85
    assert final_code(1, [65, 1]) == 65
    assert final_code(0, [0, 0]) == 0
    assert final_code(1, []) == 1
    assert final_code(-9, []) == 137


def test_fingerprint_ignores_checkpoint_settings() -> None:
    a = TrainConfig()
    assert a.fingerprint() == a.with_(checkpoint_every_steps=5, checkpoint_keep=9).fingerprint()
    assert a.fingerprint() != a.with_(learning_rate=0.5).fingerprint()
