"""The training engine: Accelerate + DeepSpeed from the spec, LoRA or full tuning.

Supports:

- ``deepspeed.zeroStage`` 1–3 through ``accelerate``'s ``DeepSpeedPlugin`` with a
  generated DeepSpeed config (:func:`deepspeed_config`), ``offload: cpu`` for the
  optimizer (and the parameters at stage 3); stage 0 is plain DDP (or one process).
  On a machine without CUDA, DeepSpeed runs on its CPU accelerator: the trainer sets
  ``DS_ACCELERATOR=cpu`` before DeepSpeed is imported (gloo between processes; the first
  run JIT-compiles DeepSpeed's small shared-memory op, ~40 s, cached under
  ``TORCH_EXTENSIONS_DIR``).
- LoRA through peft (rank, alpha, dropout, target modules, ``all-linear``) or full
  tuning; ``loadIn4bit`` (QLoRA, bitsandbytes) only with CUDA, otherwise
  :class:`UnsupportedError` naming ``spec.tuning.loadIn4bit``.
- Trainable parameters are fp32 master weights (:func:`upcast_trainable`), whatever the
  checkpoint's dtype; DeepSpeed with bf16/fp16 keeps its own fp32 masters.
- A custom step: the caller computes each micro-batch's loss already normalised by the
  whole optimizer step's token count (see :mod:`tidetune_trainer.loop`);
  :meth:`Engine.backward` and :meth:`Engine.step` do the rest (no-sync micro-steps,
  clipping, optimizer, scheduler).
- Saving and loading the training state for exact resume (:meth:`save_state`,
  :meth:`load_state`), and gathering the full trainable weights for export even under
  ZeRO-3 (:meth:`trainable_state_dict`, :meth:`export_model`).

Raises :class:`UnsupportedError` for settings the hardware cannot run.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tidetune_trainer.config import TrainConfig
from tidetune_trainer.errors import CheckpointError, UnsupportedError

log = logging.getLogger(__name__)

#: Where DeepSpeed/torch JIT-compiled ops are cached unless TORCH_EXTENSIONS_DIR is set.
DEFAULT_EXTENSIONS_DIR = Path.home() / ".cache" / "tidetune" / "torch_extensions"


def setup_environment() -> None:
    """Process-wide settings that must precede importing DeepSpeed.

    - ``DS_ACCELERATOR=cpu`` when CUDA is not available (DeepSpeed's CPU accelerator);
    - ``TORCH_EXTENSIONS_DIR`` defaults to a persistent cache so the JIT-compiled ops are
      built once per machine, not once per run;
    - ``HF_HUB_OFFLINE=1`` unless set: nothing is downloaded implicitly.
    """
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(DEFAULT_EXTENSIONS_DIR))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def use_deepspeed(cfg: TrainConfig) -> bool:
    """DeepSpeed runs for ZeRO stages 1–3; stage 0 is plain DDP."""
    return cfg.zero_stage > 0


def mixed_precision() -> str:
    """bf16 on GPUs that support it, fp16 on older GPUs, fp32 ("no") on CPU."""
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def deepspeed_config(cfg: TrainConfig, *, world_size: int, precision: str) -> dict[str, Any]:
    """The DeepSpeed config for a spec: ZeRO stage, offload, batch sizes, clipping.

    The optimizer and scheduler are the trainer's own (AdamW, warm-up + decay), handed
    to DeepSpeed as client objects, so the config names neither.
    """
    zero: dict[str, Any] = {
        "stage": cfg.zero_stage,
        "overlap_comm": False,
        "contiguous_gradients": True,
        "reduce_bucket_size": 5e7,
    }
    if cfg.zero_stage >= 2:
        zero["allgather_bucket_size"] = 5e7
    if cfg.zero_stage == 3:
        # export gathers the 16-bit weights; LoRA adapters must not come out empty
        zero["stage3_gather_16bit_weights_on_model_save"] = True
        zero["stage3_prefetch_bucket_size"] = 5e7
        zero["stage3_param_persistence_threshold"] = 1e4
    if cfg.offload == "cpu":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
        if cfg.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "train_batch_size": cfg.batch_size * cfg.gradient_accumulation_steps * world_size,
        "gradient_clipping": cfg.max_grad_norm,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
    }
    # expert overrides (tests, tuning): TrainConfig.extra["zero_optimization"]
    zero.update(cfg.extra.get("zero_optimization", {}))
    return ds


def lr_lambda(cfg: TrainConfig, total_steps: int) -> Any:
    """The learning-rate multiplier per step: linear warm-up, then cosine/linear/constant."""
    if cfg.warmup_steps is not None:
        warmup = cfg.warmup_steps
    else:
        warmup = math.ceil(cfg.warmup_ratio * total_steps)
    warmup = min(warmup, max(total_steps - 1, 0))

    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / (warmup + 1)
        if cfg.lr_scheduler == "constant":
            return 1.0
        span = max(1, total_steps - warmup)
        progress = min(1.0, (step - warmup) / span)
        if cfg.lr_scheduler == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def apply_tuning(
    model: torch.nn.Module, cfg: TrainConfig, trainable_tokens: Sequence[int] = ()
) -> torch.nn.Module:
    """Wrap ``model`` with a LoRA adapter (peft) or unfreeze it for full tuning.

    ``all-linear`` adapts every linear layer but the LM head. ``trainable_tokens`` are
    token ids whose embedding rows (and output rows, tied or not) train alongside the
    adapter: the chat tokens added to a base model, which LoRA alone could never learn
    to emit. Raises
    :class:`UnsupportedError` naming ``spec.tuning.lora.targetModules`` when no module
    matches.
    """
    if cfg.tuning == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    targets: str | list[str]
    if "all-linear" in cfg.lora_target_modules:
        targets = "all-linear"
    else:
        targets = list(cfg.lora_target_modules)
    token_indices: dict[str, list[int]] | None = None
    if trainable_tokens:
        token_indices = {}
        for layer in (model.get_input_embeddings(), model.get_output_embeddings()):  # type: ignore[operator]
            name = next((n for n, m in model.named_modules() if m is layer), None)
            if name and isinstance(layer, (torch.nn.Embedding, torch.nn.Linear)):
                token_indices.setdefault(name.rsplit(".", 1)[-1], sorted(set(trainable_tokens)))
    lcfg = LoraConfig(
        trainable_token_indices=token_indices,
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,  # type: ignore[arg-type]  # peft takes floats
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
        bias="none",
    )
    try:
        peft_model = get_peft_model(model, lcfg)
    except ValueError as e:
        names = sorted(
            {
                n.rsplit(".", 1)[-1]
                for n, m in model.named_modules()
                if isinstance(m, torch.nn.Linear)
            }
        )
        raise UnsupportedError(
            f"spec.tuning.lora.targetModules: {list(cfg.lora_target_modules)} match no layer of "
            f"the model ({e}); linear layers are: {', '.join(names)} (or use all-linear)"
        ) from None
    return peft_model


def upcast_trainable(params: Sequence[torch.nn.Parameter]) -> int:
    """Hold trainable floating-point parameters in fp32 (the forward runs under autocast in
    the mixed precision, or in fp32 on CPU). Returns how many were converted."""
    n = 0
    for p in params:
        if p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()
            n += 1
    return n


def check_4bit(cfg: TrainConfig) -> None:
    """Raise :class:`UnsupportedError` when 4-bit loading is asked for but impossible."""
    if not cfg.load_in_4bit:
        return
    if cfg.tuning != "lora":
        raise UnsupportedError("spec.tuning.loadIn4bit: 4-bit loading needs tuning.type: lora")
    if not torch.cuda.is_available():
        raise UnsupportedError(
            "spec.tuning.loadIn4bit: 4-bit (QLoRA) loading needs a CUDA GPU and bitsandbytes; "
            "this trainer has no GPU (resources.gpusPerNode: 0?). Set loadIn4bit: false or "
            "run on GPUs"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UnsupportedError(
            "spec.tuning.loadIn4bit: the bitsandbytes package is not installed in the trainer "
            "image; set loadIn4bit: false or use an image with bitsandbytes"
        ) from None
    if cfg.zero_stage == 3:
        raise UnsupportedError(
            "spec.tuning.loadIn4bit: 4-bit weights cannot be sharded by ZeRO-3; use "
            "deepspeed.zeroStage 0–2 with loadIn4bit"
        )


def quantization_config() -> Any:
    """The bitsandbytes 4-bit (NF4, double quantisation, bf16 compute) config."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(  # type: ignore[no-untyped-call]
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def rng_state() -> dict[str, Any]:
    """This process's RNG states (python, numpy, torch, CUDA)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Engine:
    """One training process's model, optimizer and scheduler, on Accelerate.

    Build it with :meth:`create` after the distributed environment exists (torchrun's
    variables); every rank must build the same model in the same order.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        accelerator: Any,
        model: Any,
        optimizer: Any,
        scheduler: torch.optim.lr_scheduler.LambdaLR,
        total_steps: int,
    ) -> None:
        self.cfg = cfg
        self.accelerator = accelerator
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.total_steps = total_steps
        self.deepspeed = use_deepspeed(cfg)
        self._last_grad_norm: float | None = None
        self._unwrapped: Any = None
        #: state-dict prefixes of modules that are trained but not exported (PPO's v_head)
        self.extra_prefixes: tuple[str, ...] = ()

    # ------------------------------------------------------------------ creation

    @staticmethod
    def make_accelerator(cfg: TrainConfig) -> Any:
        """The ``accelerate.Accelerator`` for a config (DeepSpeed plugin for ZeRO ≥ 1).

        Call before loading the model; under ZeRO-3 that lets models be sharded as they
        are built. Reads torchrun's environment; a single process needs none.
        """
        setup_environment()
        from accelerate import Accelerator
        from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs

        precision = mixed_precision()
        if cfg.offload == "cpu" and not use_deepspeed(cfg):
            raise UnsupportedError("spec.deepspeed.offload: cpu needs zeroStage 1, 2 or 3")
        plugin = None
        if use_deepspeed(cfg):
            world = int(os.environ.get("WORLD_SIZE", "1"))
            ds = deepspeed_config(cfg, world_size=world, precision=precision)
            plugin = DeepSpeedPlugin(hf_ds_config=ds)
            _ensure_single_process_env()
            # accelerate only takes the DeepSpeed path when this is set and cpu=False;
            # on a CPU-only machine DeepSpeed then brings up gloo on its CPU accelerator
            os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        handlers = []
        if plugin is not None and not torch.cuda.is_available():
            # without CUDA, accelerate picks no backend for DeepSpeed and would run each
            # rank as a world of one; name gloo (DeepSpeed's CPU accelerator's backend)
            handlers.append(InitProcessGroupKwargs(backend="gloo"))
        acc = Accelerator(
            mixed_precision=precision,
            deepspeed_plugin=plugin,
            kwargs_handlers=handlers,
            gradient_accumulation_steps=cfg.gradient_accumulation_steps if plugin else 1,
            cpu=not torch.cuda.is_available() and plugin is None,
        )
        return acc

    @classmethod
    def create(
        cls,
        cfg: TrainConfig,
        accelerator: Any,
        model: torch.nn.Module,
        total_steps: int,
        *,
        extra_modules: dict[str, torch.nn.Module] | None = None,
        trainable_tokens: Sequence[int] = (),
    ) -> Engine:
        """Apply the tuning (LoRA/full), build AdamW and the LR schedule, and let
        Accelerate/DeepSpeed wrap them. ``model`` is the freshly loaded base model.

        ``extra_modules`` (e.g. PPO's ``v_head``) are attached to the tuned model as
        trainable submodules: trained, checkpointed and resumed with it, never exported.
        ``trainable_tokens``: see :func:`apply_tuning`."""
        if cfg.gradient_checkpointing:
            if not getattr(model, "supports_gradient_checkpointing", False):
                raise UnsupportedError(
                    f"spec.hyperparameters.gradientCheckpointing: {type(model).__name__} does "
                    "not support gradient checkpointing; set it to false"
                )
            model.gradient_checkpointing_enable(  # type: ignore[operator]
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        model = apply_tuning(model, cfg, trainable_tokens)
        for name, module in (extra_modules or {}).items():
            for p in module.parameters():
                p.requires_grad_(True)
            setattr(model, name, module)
        if cfg.tuning == "lora" and hasattr(model, "enable_input_require_grads"):
            # keeps gradient checkpointing and k-bit models trainable through the adapter
            model.enable_input_require_grads()  # type: ignore[operator]
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise UnsupportedError("the model has no trainable parameters; check spec.tuning")
        if not (use_deepspeed(cfg) and mixed_precision() in ("bf16", "fp16")):
            # fp32 master weights: an update of lr 1e-5 is below bf16's resolution for
            # most weights, so a bf16 checkpoint trained in place would barely move.
            # (DeepSpeed with bf16/fp16 keeps fp32 masters in its optimizer itself.)
            upcast_trainable(params)
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        optimizer = torch.optim.AdamW(
            groups, lr=cfg.learning_rate, betas=(0.9, 0.999), eps=1e-8, foreach=False
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))
        wrapped_model, wrapped_opt = accelerator.prepare(model, optimizer)
        engine = cls(cfg, accelerator, wrapped_model, wrapped_opt, scheduler, total_steps)
        engine.extra_prefixes = tuple(f"{n}." for n in (extra_modules or {}))
        return engine

    # ------------------------------------------------------------------ identity

    @property
    def rank(self) -> int:
        return int(self.accelerator.process_index)

    @property
    def world_size(self) -> int:
        return int(self.accelerator.num_processes)

    @property
    def is_main(self) -> bool:
        return bool(self.accelerator.is_main_process)

    @property
    def is_local_main(self) -> bool:
        return bool(self.accelerator.is_local_main_process)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device  # type: ignore[no-any-return]

    def unwrapped(self) -> Any:
        """The model without DDP/DeepSpeed wrappers (a peft model under LoRA). Looked up
        once: accelerate's unwrapping costs ~0.1 s a call, and the wrapping never changes."""
        if self._unwrapped is None:
            self._unwrapped = self.accelerator.unwrap_model(self.model)
        return self._unwrapped

    # ------------------------------------------------------------------ collectives

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum a few floats over all ranks (float64)."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world_size > 1:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return [float(x) for x in t.tolist()]

    def any_rank(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank."""
        if self.world_size == 1:
            return flag
        return self.all_reduce_sum([1.0 if flag else 0.0])[0] > 0

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world_size == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    # ------------------------------------------------------------------ training

    def forward_context(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast for mixed precision (DeepSpeed handles its own)."""
        if self.deepspeed:
            return contextlib.nullcontext()
        return self.accelerator.autocast()  # type: ignore[no-any-return]

    def backward(self, loss: torch.Tensor, *, last_micro_step: bool) -> None:
        """Backward of one micro-batch's loss (already scaled for the whole step).

        Gradients are synchronised only on the last micro-step of an optimizer step.
        """
        if self.deepspeed:
            engine = self.model
            engine.backward(loss, scale_wrt_gas=False)
            # DeepSpeed counts micro-steps itself and steps the optimizer at the boundary
            engine.step()
            return
        if last_micro_step or self.world_size == 1:
            self.accelerator.backward(loss)
        else:
            with self.accelerator.no_sync(self.model):
                self.accelerator.backward(loss)

    def step(self) -> float:
        """Finish an optimizer step: clip, step, schedule, zero. Returns the gradient
        norm before clipping."""
        if self.deepspeed:
            norm = self.model.get_global_grad_norm()
            grad_norm = float(norm) if norm is not None else float("nan")
        else:
            params = [p for p in self.model.parameters() if p.requires_grad]
            norm_t = self.accelerator.clip_grad_norm_(params, self.cfg.max_grad_norm)
            grad_norm = float(norm_t)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self._last_grad_norm = grad_norm
        return grad_norm

    @property
    def learning_rate(self) -> float:
        """The learning rate the next optimizer step will use."""
        return float(self.scheduler.get_last_lr()[0])

    def train_mode(self, on: bool = True) -> None:
        self.model.train(on)

    # ------------------------------------------------------------------ state

    def save_state(self, directory: Path) -> None:
        """Write this rank's part of the training state under ``directory`` (a directory
        every rank of the node shares). Collective: every rank must call it.

        DeepSpeed: the engine checkpoint (trainable weights, ZeRO-partitioned optimizer).
        Otherwise rank 0 writes the trainable weights and the optimizer. Every rank
        writes its RNG state; the scheduler is in the trainer state (see the loop).
        """
        directory.mkdir(parents=True, exist_ok=True)
        if self.deepspeed:
            self.model.save_checkpoint(
                str(directory),
                tag="deepspeed",
                save_latest=False,
                exclude_frozen_parameters=True,
            )
        elif self.is_main:
            torch.save(self._trainable_local(), directory / "trainable.pt")
            torch.save(self.optimizer.state_dict(), directory / "optimizer.pt")
        torch.save(rng_state(), directory / f"rng-rank{self.rank}.pt")
        torch.save(
            {"scheduler": self.scheduler.state_dict()}, directory / f"scheduler-rank{self.rank}.pt"
        )
        self.barrier()

    def load_state(self, directory: Path) -> None:
        """Restore what :meth:`save_state` wrote (same world size). Raises
        :class:`CheckpointError` when the files do not fit this run."""
        rng_file = directory / f"rng-rank{self.rank}.pt"
        if not rng_file.exists():
            raise CheckpointError(
                f"{directory}: no state for rank {self.rank}; the checkpoint was written by a "
                "different number of processes. Resume with the same resources.nodes × "
                "gpusPerNode, or delete the run's checkpoints to start over"
            )
        if self.deepspeed:
            path, _ = self.model.load_checkpoint(
                str(directory),
                tag="deepspeed",
                load_optimizer_states=True,
                load_lr_scheduler_states=False,
                custom_load_fn=lambda src, dst: _load_trainable_strict(src, dst, directory),
            )
            if path is None:
                raise CheckpointError(f"{directory}: not a DeepSpeed checkpoint of this run")
        else:
            trainable = torch.load(
                directory / "trainable.pt", map_location="cpu", weights_only=False
            )
            model = self.unwrapped()
            own = {n: p for n, p in model.named_parameters() if p.requires_grad}
            missing = sorted(set(own) - set(trainable))
            if missing:
                raise CheckpointError(
                    f"{directory}: checkpoint lacks trainable weights {missing[:3]}…; it was "
                    "written for another model or tuning; delete the run's checkpoints to "
                    "start over"
                )
            with torch.no_grad():
                for n, p in own.items():
                    p.copy_(trainable[n].to(p.device, p.dtype))
            opt_state = torch.load(
                directory / "optimizer.pt", map_location="cpu", weights_only=False
            )
            self.optimizer.load_state_dict(opt_state)
        sched = torch.load(directory / f"scheduler-rank{self.rank}.pt", weights_only=False)
        self.scheduler.load_state_dict(sched["scheduler"])
        set_rng_state(torch.load(rng_file, weights_only=False))
        self.barrier()

    def _trainable_local(self) -> dict[str, torch.Tensor]:
        model = self.unwrapped()
        return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}

    @contextlib.contextmanager
    def gathered_parameters(self, params: list[torch.nn.Parameter]) -> Iterator[None]:
        """Under ZeRO-3, the full ``params`` while the block runs (a collective); a no-op
        otherwise."""
        if self.deepspeed and self.cfg.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                yield
        else:
            yield

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The full trainable weights on every rank, gathered under ZeRO-3 so LoRA
        adapters are never saved empty. Collective."""
        model = self.unwrapped()
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        with self.gathered_parameters([p for _, p in named]):
            return {n: p.detach().cpu().clone() for n, p in named}

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Every weight (frozen too), gathered under ZeRO-3. Collective."""
        model = self.unwrapped()
        named = list(model.named_parameters())
        with self.gathered_parameters([p for _, p in named]):
            sd = {n: p.detach().cpu().clone() for n, p in named}
        for n, b in model.named_buffers():
            sd.setdefault(n, b.detach().cpu().clone())
        return sd

    def export_model(self, directory: Path, tokenizer: Any, *, merge: bool = False) -> None:
        """Write a loadable model: the LoRA adapter (``adapter_model.safetensors`` +
        ``adapter_config.json``), the full model, or with ``merge`` the base with the
        adapter merged in; plus the tokenizer. Collective; rank 0 writes."""
        model = self.unwrapped()
        is_peft = hasattr(model, "peft_config")
        if is_peft and not merge:
            from peft import get_peft_model_state_dict

            trainable = self.trainable_state_dict()
            if self.is_main:
                adapter = get_peft_model_state_dict(model, state_dict=trainable)
                empty = [k for k, v in adapter.items() if v.numel() == 0]
                if empty or not adapter:
                    raise RuntimeError(f"adapter tensors came out empty: {empty[:3]}")
                # save_pretrained selects the adapter's tensors from the trainable ones itself
                model.save_pretrained(str(directory), state_dict=trainable, safe_serialization=True)
        else:
            full = self.full_state_dict()
            if self.extra_prefixes:
                full = {k: v for k, v in full.items() if not k.startswith(self.extra_prefixes)}
            if self.is_main:
                _save_full_model(model, full, directory, merge=merge and is_peft)
        if self.is_main and tokenizer is not None:
            tokenizer.save_pretrained(str(directory))
        self.barrier()


def _load_trainable_strict(src: dict[str, Any], dst: torch.nn.Module, where: Path) -> None:
    """Load a DeepSpeed checkpoint's module weights, strictly for what trains: the
    checkpoint holds only the trainable weights (frozen ones are excluded when saving),
    and it must hold every one of them and nothing the model lacks."""
    trainable = {n for n, p in dst.named_parameters() if p.requires_grad}
    known = set(dst.state_dict())
    missing = sorted(trainable - set(src))
    unexpected = sorted(set(src) - known)
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: the checkpoint does not fit this model (missing trainable weights "
            f"{missing[:3]}, unknown weights {unexpected[:3]}); it was written for another "
            "model or tuning. Delete the run's checkpoints to start over"
        )
    dst.load_state_dict(src, strict=False)


def _save_full_model(
    model: Any, state: dict[str, torch.Tensor], directory: Path, *, merge: bool
) -> None:
    """Save a full HF model from a gathered state dict (merging LoRA when asked)."""
    import copy

    if merge:
        # rebuild a CPU copy of the peft model with the gathered weights, then merge
        base_cfg = model.get_base_model().config
        from transformers import AutoModelForCausalLM

        fresh = AutoModelForCausalLM.from_config(copy.deepcopy(base_cfg))  # type: ignore[no-untyped-call]
        from peft import get_peft_model

        peft_cfg = copy.deepcopy(model.peft_config["default"])
        peft_cfg.inference_mode = False
        clone = get_peft_model(fresh, peft_cfg)
        clone.load_state_dict(state, strict=False)
        merged = clone.merge_and_unload()
        merged.save_pretrained(str(directory), safe_serialization=True)
        return
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    prefix = "base_model.model." if hasattr(model, "get_base_model") else ""
    sd = {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}
    target.save_pretrained(str(directory), state_dict=sd, safe_serialization=True)


def _ensure_single_process_env() -> None:
    """DeepSpeed wants the distributed variables even for one process."""
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
