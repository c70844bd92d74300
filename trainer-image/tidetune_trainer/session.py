"""A training session: the job, its run and output locations, and the steps every recipe
composes (data, model, estimate, engine, loop, export).

Recipes (``tidetune_trainer.recipes.*``) call these steps in order; see
``recipes/sft.py`` for the shape. Only rank 0 writes to the run and output locations
(metrics, progress, estimate, artifacts); checkpoints are written by every rank.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tidetune import layout
from tidetune.contract import (
    FINAL_ARTIFACT,
    MERGED_ARTIFACT,
    METRICS_ARTIFACT,
    EstimateDocument,
)
from tidetune.storage import ObjectStore, S3Credentials, open_store
from tidetune_trainer.config import TrainConfig
from tidetune_trainer.errors import BadInputError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from accelerate import Accelerator
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from tidetune.api import FineTuneJob, FineTuneJobSpec
    from tidetune_trainer.data.prepare import PreparedData
    from tidetune_trainer.engine import Engine
    from tidetune_trainer.loop import Objective, StopFlag, TrainingLoop
    from tidetune_trainer.progress import ProgressReporter

log = logging.getLogger(__name__)

#: a JSON object (a manifest body, an artifact status)
JSONObject = dict[str, object]


#: spec fields that hold URIs (dotted snake_case paths inside ``spec``)
URI_FIELDS = (
    ("base_model", "uri"),
    ("data", "train", "uri"),
    ("data", "validation", "uri"),
    ("data", "mix_in", "uri"),
    ("output", "uri"),
)
_CAMEL = {"base_model": "baseModel", "mix_in": "mixIn"}


def resolve_relative_uris(body: JSONObject, base: Path) -> JSONObject:
    """Rewrite relative ``file://`` URIs in a manifest body (``file://data/x.jsonl``) to
    absolute ones against ``base`` (the manifest's folder). Returns the body."""
    spec = body.get("spec")
    if not isinstance(spec, dict):
        return body
    for path in URI_FIELDS:
        node: object = spec
        for part in path[:-1]:
            node = node.get(_CAMEL.get(part, part)) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        uri = node.get(path[-1])
        if isinstance(uri, str) and uri.startswith("file://") and not uri.startswith("file:///"):
            node[path[-1]] = "file://" + str((base / uri[len("file://") :]).resolve())
    return body


def load_job(path: str | os.PathLike[str]) -> FineTuneJob:
    """Read and validate a FineTuneJob manifest (YAML or JSON); relative ``file://`` URIs
    are resolved against the manifest's folder.

    Raises :class:`BadInputError` listing every problem as ``FILE: spec.path: message``.
    """
    from tidetune.api import FineTuneJob
    from tidetune.manifests import ManifestError, load_finetunejob

    p = Path(path)
    try:
        job = load_finetunejob(p)
    except ManifestError as e:
        raise BadInputError(str(e)) from None
    body = resolve_relative_uris(
        job.model_dump(mode="json", by_alias=True, exclude_none=True), p.resolve().parent
    )
    return FineTuneJob.model_validate(body)


@dataclass
class Session:
    """Everything a recipe needs; build with :meth:`create`."""

    job: FineTuneJob
    cfg: TrainConfig
    run_uri: str
    output_uri: str
    metrics_port: int | None = None
    credentials: S3Credentials = field(default_factory=S3Credentials.from_env)
    stop: StopFlag | None = None
    accelerator: Accelerator | None = None
    run_store: ObjectStore = field(init=False)
    run_key: str = field(init=False)
    reporter: ProgressReporter | None = None
    estimate: EstimateDocument | None = None
    #: token ids added to the base model's tokenizer (the chat tokens), trained under LoRA
    added_tokens: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.run_store, self.run_key = open_store(self.run_uri, self.credentials)

    @classmethod
    def create(
        cls,
        spec_path: str,
        run_uri: str,
        *,
        output_uri: str | None = None,
        metrics_port: int | None = None,
        stop: StopFlag | None = None,
    ) -> Session:
        job = load_job(spec_path)
        cfg = TrainConfig.from_spec(job.spec)
        out = output_uri or job.spec.output.uri or run_uri.rstrip("/") + "/output"
        return cls(
            job=job, cfg=cfg, run_uri=run_uri, output_uri=out, metrics_port=metrics_port, stop=stop
        )

    # ------------------------------------------------------------------ identity

    @property
    def namespace(self) -> str:
        return str(self.job.metadata.namespace or "default")

    @property
    def name(self) -> str:
        return str(self.job.metadata.name)

    @property
    def uid(self) -> str:
        return str(self.job.metadata.uid or "local")

    @property
    def spec(self) -> FineTuneJobSpec:
        return self.job.spec

    @property
    def is_main(self) -> bool:
        return self.accelerator is None or bool(self.accelerator.is_main_process)

    @property
    def world_size(self) -> int:
        return 1 if self.accelerator is None else int(self.accelerator.num_processes)

    # ------------------------------------------------------------------ setup steps

    def setup_distributed(self) -> None:
        """Create the accelerator (the process group) and seed every RNG."""
        from tidetune_trainer.engine import Engine, check_4bit, seed_everything

        check_4bit(self.cfg)
        self.accelerator = Engine.make_accelerator(self.cfg)
        seed_everything(self.cfg.seed)

    def prepare_data(self, method: str) -> tuple[PreparedData, PreTrainedTokenizerBase]:
        """Read, validate, split, tokenize and pack the data; train the tiny tokenizer
        when the model is ``builtin://tiny-llama``. Returns (PreparedData, tokenizer)."""
        from tidetune_trainer.data.chat import uses_builtin_template
        from tidetune_trainer.data.prepare import DataSettings, load_data, prepare_data
        from tidetune_trainer.tiny import ModelLoadError, chat_token_ids, is_builtin, load_tokenizer

        settings = DataSettings.from_spec(self.spec)
        loaded = load_data(settings, self.credentials)
        try:
            tokenizer = load_tokenizer(
                self.spec.base_model.uri,
                texts=loaded.texts(),
                seed=self.cfg.seed,
                credentials=self.credentials,
            )
        except ModelLoadError as e:
            raise BadInputError(f"spec.baseModel.uri: {e}") from None
        if not is_builtin(self.spec.base_model.uri) and uses_builtin_template(tokenizer):
            # a base model given the TideTune chat tokens: their rows must train
            self.added_tokens = chat_token_ids(tokenizer)
        prepared = prepare_data(loaded, tokenizer, settings, method=method)
        if self.is_main:
            self.run_store.write_text(
                ObjectStore.join(self.run_key, layout.DATA_REPORT_FILE),
                json.dumps(prepared.report.to_dict(), indent=1, default=str),
            )
        return prepared, tokenizer

    def load_model(self, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
        """The base model (4-bit with ``loadIn4bit``), with the KV cache off for packing."""
        import torch

        from tidetune_trainer.data.collate import prepare_model_for_packing
        from tidetune_trainer.engine import quantization_config
        from tidetune_trainer.tiny import ModelLoadError, load_model

        four_bit = self.cfg.load_in_4bit
        try:
            model: PreTrainedModel = load_model(
                self.spec.base_model.uri,
                tokenizer=tokenizer,
                seed=self.cfg.seed,
                credentials=self.credentials,
                max_position_embeddings=max(4096, self.cfg.max_seq_length),
                quantization_config=quantization_config() if four_bit else None,
                dtype=torch.bfloat16 if four_bit else None,
            )
        except ModelLoadError as e:
            raise BadInputError(f"spec.baseModel.uri: {e}") from None
        if self.cfg.load_in_4bit:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
                model, use_gradient_checkpointing=False
            )
        if self.cfg.packing:
            prepare_model_for_packing(model)
        if getattr(model, "config", None) is not None:
            model.config.use_cache = False
        return model

    def check_packing(
        self, model: PreTrainedModel, data: PreparedData, tokenizer: PreTrainedTokenizerBase
    ) -> tuple[bool, bool]:
        """Whether this model may train on packed rows, checked on the model itself
        (:func:`~tidetune_trainer.data.collate.packing_probe`). Returns ``(packed,
        flatten)`` for the collator. A model whose packed samples see each other trains
        unpacked: ``data``'s rows are rebuilt one sample each, and the data report (and
        log) says why. Flash-attention models get flattened packed batches."""
        import torch

        from tidetune_trainer.data.collate import packing_ok, packing_probe
        from tidetune_trainer.data.packing import unpacked_rows

        if not self.cfg.packing:
            return False, False
        arch = type(model).__name__
        attn = str(getattr(getattr(model, "config", None), "_attn_implementation", "") or "")
        flatten = attn.startswith("flash")
        if any(hasattr(p, "ds_id") for p in model.parameters()):
            note = (
                f"packing probe skipped for {arch}: its parameters are sharded by ZeRO-3 as "
                "they load; packing stays on"
            )
            log.warning("%s", note)
            data.report.notes.append(note)
            self._write_data_report(data)
            return True, flatten
        leak, drift = packing_probe(model, len(tokenizer))
        dtype = next(model.parameters()).dtype
        if packing_ok(leak, drift, dtype if dtype.is_floating_point else torch.float32):
            return True, flatten
        note = (
            f"packing turned off: {arch} ({attn or 'default'} attention) lets samples packed "
            f"in one row see each other (largest logit change {max(leak, drift):.3g}); it "
            "trains one sample per row (set hyperparameters.packing: false to skip this check)"
        )
        log.warning("%s", note)
        data.train_rows = unpacked_rows(data.train_samples)
        data.validation_rows = unpacked_rows(data.validation_samples)
        data.report.packing = False
        data.report.notes.append(note)
        self._write_data_report(data)
        return False, False

    def _write_data_report(self, data: PreparedData) -> None:
        if self.is_main:
            self.run_store.write_text(
                ObjectStore.join(self.run_key, "data-report.json"),
                json.dumps(data.report.to_dict(), indent=1, default=str),
            )

    def steps(self, rows: int) -> tuple[int, int]:
        """(steps per epoch, total steps) for ``rows`` training rows."""
        from tidetune_trainer.loop import DataOrder, total_steps

        order = DataOrder(
            rows,
            self.cfg.seed,
            self.world_size,
            self.cfg.batch_size,
            self.cfg.gradient_accumulation_steps,
        )
        return order.steps_per_epoch, total_steps(self.cfg, order.steps_per_epoch)

    def write_estimate(self, tokens_per_epoch: int, model: PreTrainedModel, rows: int) -> None:
        """The counted tokens, parameters and devices: ``<run>/estimate.json`` (the
        operator prices them)."""
        from tidetune_trainer.estimating import count_document, write_estimate

        params = sum(p.numel() for p in model.parameters())
        doc = count_document(
            self.spec,
            tokens_per_epoch,
            params,
            rows_per_epoch=rows,
            world=self.world_size if self.cfg.gpus_per_node == 0 else None,
        )
        if self.is_main:
            self.estimate = write_estimate(self.run_store, self.run_key, doc)

    def create_engine(self, model: PreTrainedModel, rows: int) -> Engine:
        """Wrap the model for training (LoRA/full, optimizer, scheduler, DeepSpeed)."""
        from tidetune_trainer.engine import Engine

        _, total = self.steps(rows)
        return Engine.create(
            self.cfg, self.accelerator, model, total, trainable_tokens=self.added_tokens
        )

    def make_loop(
        self,
        engine: Engine,
        objective: Objective,
        train_rows: Sequence[object],
        validation_rows: Sequence[object],
        tokenizer: PreTrainedTokenizerBase,
    ) -> TrainingLoop:
        """The training loop with its checkpoint manager and progress reporter."""
        from tidetune_trainer.checkpoint import CheckpointManager
        from tidetune_trainer.loop import StopFlag, TrainingLoop
        from tidetune_trainer.progress import ProgressReporter

        ckpt = CheckpointManager(
            self.run_store,
            self.run_key,
            rank=engine.rank,
            local_rank=(
                0 if self.accelerator is None else int(self.accelerator.local_process_index)
            ),
            barrier=engine.barrier,
        )
        per_epoch, total = self.steps(len(train_rows))
        self.reporter = ProgressReporter(
            self.run_store,
            self.run_key,
            enabled=engine.is_main,
            total_steps=total,
            steps_per_epoch=per_epoch,
            metrics_port=self.metrics_port if engine.is_main else None,
            job_namespace=self.namespace,
            job_name=self.name,
        )
        return TrainingLoop(
            self.cfg,
            engine,
            objective,
            train_rows,
            validation_rows=validation_rows,
            checkpoints=ckpt,
            reporter=self.reporter,
            stop=self.stop or StopFlag(),
            export_model=lambda d: engine.export_model(d, tokenizer),
        )

    # ------------------------------------------------------------------ save step

    def export(
        self, engine: Engine, tokenizer: PreTrainedTokenizerBase, loop: TrainingLoop
    ) -> list[JSONObject]:
        """Export the final model (and merged model, and the latest checkpoints) to the
        output location and write the manifest last. Collective; returns the
        artifacts (status form)."""
        import shutil
        import tempfile

        from tidetune_trainer.artifacts import ArtifactWriter
        from tidetune_trainer.progress import METRICS_FILE

        if self.reporter is not None:
            self.reporter.set_state("exporting")
        tmp = Path(tempfile.mkdtemp(prefix="tidetune-final-"))
        is_lora = self.cfg.tuning == "lora"
        kind = "lora-adapter" if is_lora else "model"
        statuses: list[JSONObject] = []
        try:
            engine.export_model(tmp / FINAL_ARTIFACT, tokenizer)
            if self.cfg.merge_lora and is_lora:
                engine.export_model(tmp / MERGED_ARTIFACT, tokenizer, merge=True)
            if engine.is_main:
                writer = ArtifactWriter(
                    self.output_uri, self.namespace, self.name, self.uid, self.credentials
                )
                writer.add_dir(FINAL_ARTIFACT, kind, tmp / FINAL_ARTIFACT, step=loop.state.step)
                if self.cfg.merge_lora and is_lora:
                    writer.add_dir(
                        MERGED_ARTIFACT, "model", tmp / MERGED_ARTIFACT, step=loop.state.step
                    )
                writer.add_checkpoints(loop.ckpt, self.cfg.export_checkpoints, kind)
                metrics_key = ObjectStore.join(self.run_key, METRICS_FILE)
                if self.run_store.exists(metrics_key):
                    local_metrics = tmp / METRICS_FILE
                    self.run_store.download_file(metrics_key, local_metrics)
                    writer.add_file(METRICS_ARTIFACT, "metrics", local_metrics)
                manifest = writer.write_manifest(
                    {
                        "baseModel": self.spec.base_model.uri,
                        "method": self.cfg.method,
                        "tuning": self.cfg.tuning,
                        "steps": loop.state.step,
                        "trainedTokens": loop.state.trained_tokens,
                        "evalLoss": loop.state.last_eval_loss,
                    }
                )
                statuses = [e.to_status() for e in writer.entries] + [manifest.to_status()]
                if self.spec.output.publish is not None:
                    self.publish(writer.prefix_uri)
        finally:
            engine.barrier()
            shutil.rmtree(tmp, ignore_errors=True)
        if self.reporter is not None and engine.is_main:
            self.reporter.artifacts = statuses
            self.reporter.set_state("succeeded")
        return statuses

    def publish(self, root_uri: str) -> JSONObject:
        """``spec.output.publish``: register the exported model (rank 0, after the manifest).

        A registry that fails does not fail the job: the error is logged and kept in
        ``<root>/published.json``, and ``tidetune publish`` tries again.
        """
        from tidetune.jobs.publish import keep_record, publish
        from tidetune_trainer.artifacts import read_manifest
        from tidetune_trainer.progress import iso

        cfg = self.spec.output.publish
        assert cfg is not None
        lines = list(self.reporter.lines) if self.reporter is not None else []
        try:
            record = publish(
                cfg.registry,
                cfg.model or self.name,
                self.job.model_dump(mode="json", by_alias=True, exclude_none=True),
                read_manifest(root_uri, self.credentials),
                lines,
                artifact=cfg.artifact,
                copy=cfg.copy_files,
                storage=self.credentials,
            )
            log.info(
                "published %s as %s version %s in %s",
                record["artifact"],
                record["model"],
                record["version"],
                cfg.registry,
            )
        except Exception as e:  # the model is exported: report, never fail the job here
            log.error("publishing to %s failed: %s", cfg.registry, e)
            record = {"registry": cfg.registry, "error": str(e), "time": iso()}
        try:
            keep_record(root_uri, record, self.credentials)
        except Exception as e:
            log.warning("cannot keep the publication record: %s", e)
        return record
