"""Try and evaluate an exported model: ``tidetune chat``, ``generate`` and ``eval``.

The model is a job's exported artifact (``merged`` when it was exported, else ``final``, or
``--artifact NAME``) or the URI of an artifact folder. A LoRA adapter is loaded on its base
model (``--base``, else the job's ``spec.baseModel.uri``, else the adapter's own
``base_model_name_or_path``); ``builtin://tiny-llama`` is rebuilt from the artifact's
tokenizer and the job's seed, exactly as in training. Prompts are rendered with the same
chat template as in training (:func:`tidetune_trainer.data.chat.render_chat`).

``eval`` computes the loss and perplexity on held-out data the way training weighs tokens
(assistant turns of ``messages``, the completion of ``prompt-completion``, all of ``text``),
then scores greedy answers against the reference answer (the last assistant turn, or the
completion) with the :data:`SCORERS` and, given a job with ``rl.rewards``, the job's own
preset rules weighted as in its spec. The report goes to stdout and, with ``--job``, into
the job's run location (``eval/<time>.json``) where ``compare`` and ``report`` find it.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tidetune.jobs.source import JobError, JobRef, JobView, UsageError, Where
from tidetune.storage import LocalStore, ObjectStore, S3Credentials, StorageError, open_store

# --------------------------------------------------------------------------- scoring


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def extract_number(text: str) -> float | None:
    """The answer number of a text: inside ``\\boxed{}``, else after ``####``, else the
    last number in it."""
    boxed = re.findall(r"\\boxed\{([^}]*)\}", text)
    if boxed:
        text = boxed[-1]
    elif "####" in text:
        text = text.rsplit("####", 1)[1]
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def exact_match(completion: str, reference: str) -> float:
    return float(_norm(completion) == _norm(reference))


def numeric_match(completion: str, reference: str) -> float:
    a, b = extract_number(completion), extract_number(reference)
    if a is None or b is None:
        return 0.0
    return float(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9))


def contains_answer(completion: str, reference: str) -> float:
    ref = _norm(reference)
    return float(bool(ref) and ref in _norm(completion))


#: reward presets scored against a reference answer (1 = right, 0 = wrong)
SCORERS: dict[str, Callable[[str, str], float]] = {
    "exact-match": exact_match,
    "numeric-match": numeric_match,
    "contains-answer": contains_answer,
}


# --------------------------------------------------------------------------- loading


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    source: str
    job: JobView | None
    artifact: str | None


def _job_for(args: argparse.Namespace, text: str) -> JobView | None:
    """The job MODEL names, or None when MODEL is a URI or a path."""
    if "://" in text or text.startswith((".", "/")) or Path(text).exists():
        return None
    try:
        JobRef.parse(text)
    except UsageError:
        return None
    return Where(args.workdir, args.kubeconfig, args.context).find(text)


def _artifact_uri(job: JobView, wanted: str | None) -> tuple[str, str]:
    from tidetune.jobs.publish import choose_artifact

    manifest = job.require_manifest()
    try:
        chosen = choose_artifact(manifest, wanted)
    except JobError as e:
        raise JobError(f"{job.ref}: {e}") from None
    return str(chosen["name"]), str(chosen["uri"])


def _local_dir(uri: str, credentials: S3Credentials | None, tmp: Path) -> Path:
    store, key = open_store(uri, credentials)
    if isinstance(store, LocalStore):
        path = store.path(key)
        if not path.is_dir():
            raise JobError(f"{uri}: not a folder with an exported model")
        return path
    keys = store.list(key)
    if not keys:
        raise JobError(f"{uri}: nothing there; is the artifact exported?")
    store.download_dir(key, tmp)
    return tmp


def load(args: argparse.Namespace, tmp: Path) -> Loaded:
    """The model and tokenizer MODEL names (see the module doc)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    transformers.logging.disable_progress_bar()  # type: ignore[no-untyped-call]

    from tidetune_trainer.tiny import ModelLoadError, load_model

    job = _job_for(args, args.model)
    artifact = None
    if job is not None:
        artifact, uri = _artifact_uri(job, args.artifact)
        credentials = job.credentials
    else:
        uri = args.model if "://" in args.model else "file://" + str(Path(args.model).resolve())
        credentials = S3Credentials.from_env()
    try:
        local = _local_dir(uri, credentials, tmp)
    except StorageError as e:
        raise JobError(str(e)) from None
    if not (local / "tokenizer_config.json").exists():
        raise JobError(f"{uri}: no tokenizer in the artifact (tokenizer_config.json missing)")
    tokenizer = AutoTokenizer.from_pretrained(local)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(args.seed)
    spec = job.spec if job is not None else {}
    adapter = local / "adapter_config.json"
    try:
        if adapter.exists():
            from peft import PeftModel

            own = json.loads(adapter.read_text()).get("base_model_name_or_path")
            base_uri = args.base or (spec.get("baseModel") or {}).get("uri") or own
            if not base_uri:
                raise JobError(f"{uri}: an adapter needs its base model; give --base URI")
            hp = spec.get("hyperparameters") or {}
            base = load_model(
                base_uri,
                tokenizer=tokenizer,
                seed=int(hp.get("seed", 42)),
                credentials=credentials,
                max_position_embeddings=max(4096, int(hp.get("maxSeqLength", 2048))),
            )
            model: Any = PeftModel.from_pretrained(base, str(local))
        else:
            model = AutoModelForCausalLM.from_pretrained(local)
    except ModelLoadError as e:
        raise JobError(str(e)) from None
    model.eval()
    return Loaded(model, tokenizer, uri, job, artifact)


# --------------------------------------------------------------------------- prompts


def _prompt_ids(tokenizer: Any, messages: Sequence[Any] | None, raw: str | None) -> list[int]:
    """Token ids of a prompt: chat messages rendered with the training template and a
    generation prompt, or raw text after BOS (as prompt-completion trains)."""
    from tidetune_trainer.data.chat import render_chat

    if messages is not None:
        text, _ = render_chat(messages, tokenizer, add_generation_prompt=True)
        ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids
    bos = tokenizer.bos_token_id
    body: list[int] = tokenizer(raw or "", add_special_tokens=False)["input_ids"]
    return ([bos] if bos is not None else []) + body


def generate_batch(
    loaded: Loaded, prompts: Sequence[list[int]], max_new_tokens: int, temperature: float
) -> list[str]:
    """Answers to prompts of token ids, left-padded into one batch."""
    import torch

    tok = loaded.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    kwargs: dict[str, Any] = {"do_sample": temperature > 0}
    if temperature > 0:
        kwargs["temperature"] = temperature
    with torch.no_grad():
        out = loaded.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad,
            eos_token_id=tok.eos_token_id,
            **kwargs,
        )
    return [tok.decode(row[width:], skip_special_tokens=True).strip() for row in out]


def _rows(path: str, credentials: S3Credentials | None) -> list[dict[str, Any]]:
    uri = path if "://" in path else "file://" + str(Path(path).resolve())
    try:
        store, key = open_store(uri, credentials)
        text = store.read_text(key)
    except StorageError as e:
        raise JobError(str(e)) from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise JobError(f"{path}: line {n}: not JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise JobError(f"{path}: line {n}: a JSON object is needed")
        rows.append(obj)
    if not rows:
        raise JobError(f"{path}: no rows")
    return rows


def _split(
    row: dict[str, Any], columns: tuple[str, str], path: str, n: int
) -> tuple[list[Any] | None, str | None, str | None]:
    """(prompt messages, raw prompt, reference answer) of one row."""
    from tidetune_trainer.data.records import Message

    if isinstance(row.get("messages"), list):
        msgs = [
            Message(str(m.get("role")), str(m.get("content", "")))
            for m in row["messages"]
            if isinstance(m, dict)
        ]
        reference = None
        if msgs and msgs[-1].role == "assistant":
            reference = msgs[-1].content
            msgs = msgs[:-1]
        if not msgs:
            raise JobError(f"{path}: line {n}: no prompt messages before the answer")
        return msgs, None, reference
    prompt_col, answer_col = columns
    if isinstance(row.get(prompt_col), str):
        ref = row.get(answer_col)
        return None, row[prompt_col], ref if isinstance(ref, str) else None
    raise JobError(
        f"{path}: line {n}: needs `messages` or a `{prompt_col}` column (prompt-completion)"
    )


def _columns(job: JobView | None) -> tuple[str, str]:
    train = ((job.spec.get("data") or {}).get("train") or {}) if job else {}
    return train.get("promptColumn") or "prompt", train.get("responseColumn") or "completion"


# --------------------------------------------------------------------------- commands


def _with_model(args: argparse.Namespace, body: Callable[[Loaded], int]) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="tidetune-model-"))
    try:
        return body(load(args, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cmd_chat(args: argparse.Namespace) -> int:
    from tidetune_trainer.data.records import Message

    def run(loaded: Loaded) -> int:
        import torch
        from transformers import TextStreamer

        history: list[Any] = [Message("system", args.system)] if args.system else []
        interactive = sys.stdin.isatty()
        print(f"chatting with {loaded.source}; an empty line or Ctrl-D ends", file=sys.stderr)
        while True:
            if interactive:
                print("you> ", end="", file=sys.stderr, flush=True)
            line = sys.stdin.readline()
            if not line or not line.strip():
                return 0
            history.append(Message("user", line.strip()))
            ids = torch.tensor([_prompt_ids(loaded.tokenizer, history, None)])
            streamer = TextStreamer(loaded.tokenizer, skip_prompt=True, skip_special_tokens=True)
            kwargs: dict[str, Any] = {"do_sample": args.temperature > 0}
            if args.temperature > 0:
                kwargs["temperature"] = args.temperature
            if interactive:
                print("model> ", end="", file=sys.stderr, flush=True)
            with torch.no_grad():
                out = loaded.model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=args.max_new_tokens,
                    pad_token_id=loaded.tokenizer.pad_token_id,
                    eos_token_id=loaded.tokenizer.eos_token_id,
                    streamer=streamer,
                    **kwargs,
                )
            answer = loaded.tokenizer.decode(out[0][ids.shape[1] :], skip_special_tokens=True)
            if not answer.endswith("\n"):
                print(flush=True)
            history.append(Message("assistant", answer.strip()))

    return _with_model(args, run)


def cmd_generate(args: argparse.Namespace) -> int:
    def run(loaded: Loaded) -> int:
        rows = _rows(args.data, loaded.job.credentials if loaded.job else None)
        columns = _columns(loaded.job)
        prompts = [
            _prompt_ids(loaded.tokenizer, *_split(r, columns, args.data, n)[:2])
            for n, r in enumerate(rows, 1)
        ]
        out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115
        try:
            for i in range(0, len(rows), max(1, args.batch_size)):
                batch = prompts[i : i + args.batch_size]
                answers = generate_batch(loaded, batch, args.max_new_tokens, args.temperature)
                for row, answer in zip(rows[i : i + args.batch_size], answers, strict=True):
                    out.write(json.dumps({**row, "completion": answer}, ensure_ascii=False) + "\n")
                out.flush()
        finally:
            if out is not sys.stdout:
                out.close()
        if args.output:
            print(f"wrote {len(rows)} answers to {args.output}", file=sys.stderr)
        return 0

    return _with_model(args, run)


def _loss(
    loaded: Loaded,
    rows: list[dict[str, Any]],
    fmt: str,
    columns: tuple[str, str],
    max_len: int,
    source: str,
) -> tuple[float, int]:
    """(mean token loss, tokens) over the rows, weighted as training weighs them."""
    import torch

    from tidetune.api.constants import DataFormat
    from tidetune_trainer.data.collate import token_losses
    from tidetune_trainer.data.records import Columns, parse_dataset
    from tidetune_trainer.data.tokenize import tokenize_sft

    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    cols = Columns(prompt=columns[0], completion=columns[1])
    records, problems = parse_dataset(data, source, DataFormat(fmt).value, cols)
    if problems:
        raise JobError(f"{source}: {problems[0]}")
    samples, _ = tokenize_sft(records, loaded.tokenizer, max_len)
    total, count = 0.0, 0
    with torch.no_grad():
        for s in samples:
            ids = torch.tensor([s.input_ids])
            logits = loaded.model(input_ids=ids).logits
            labels = ids.clone()
            losses = token_losses(logits, labels)[0]
            weights = torch.tensor(s.loss_weights, dtype=torch.float32)
            weights[0] = 0.0
            mask = weights > 0
            total += float((losses * weights)[mask].sum())
            count += int(mask.sum())
    if count == 0:
        raise JobError(f"{source}: no tokens to score (nothing the model is trained to predict)")
    return total / count, count


def cmd_eval(args: argparse.Namespace) -> int:
    def run(loaded: Loaded) -> int:
        where = Where(args.workdir, args.kubeconfig, args.context)
        target = where.find(args.eval_job) if args.eval_job else None
        spec_job = target or loaded.job
        rows = _rows(args.data, spec_job.credentials if spec_job else None)[: args.limit]
        columns = _columns(spec_job)
        train = ((spec_job.spec.get("data") or {}).get("train") or {}) if spec_job else {}
        fmt = train.get("format") or ("messages" if "messages" in rows[0] else "prompt-completion")
        hp = (spec_job.spec.get("hyperparameters") or {}) if spec_job else {}
        loss, tokens = _loss(
            loaded, rows, fmt, columns, int(hp.get("maxSeqLength", 2048)), args.data
        )
        report: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "model": loaded.source,
            "artifact": loaded.artifact,
            "data": args.data,
            "rows": len(rows),
            "tokens": tokens,
            "loss": loss,
            "perplexity": math.exp(min(loss, 700.0)),
        }
        if fmt != "text":
            scored = _score(loaded, rows, columns, args, spec_job)
            report.update(scored)
        text = json.dumps(report, indent=1, ensure_ascii=False)
        if args.json:
            print(text)
        else:
            print(
                f"{report['rows']} rows, {tokens} tokens: loss {loss:.4f}, "
                f"perplexity {report['perplexity']:.4g}"
            )
            for k, v in (report.get("scores") or {}).items():
                print(f"  {k}: {v:.3f}")
            if "reward" in report:
                print(f"  reward (the job's rules): {report['reward']:.3f}")
            for note in report.get("notes", []):
                print(f"  note: {note}")
        if target is not None:
            _keep(target, report, text)
        return 0

    return _with_model(args, run)


def _score(
    loaded: Loaded,
    rows: list[dict[str, Any]],
    columns: tuple[str, str],
    args: argparse.Namespace,
    job: JobView | None,
) -> dict[str, Any]:
    split = [_split(r, columns, args.data, n) for n, r in enumerate(rows, 1)]
    pairs = [(s, r) for s, r in zip(split, rows, strict=True) if s[2] is not None]
    if not pairs:
        return {"notes": ["no reference answers: generations not scored"]}
    answers: list[str] = []
    for i in range(0, len(pairs), 8):
        batch = [_prompt_ids(loaded.tokenizer, s[0], s[1]) for s, _ in pairs[i : i + 8]]
        answers += generate_batch(loaded, batch, args.max_new_tokens, 0.0)
    refs = [str(s[2]) for s, _ in pairs]
    scores = {
        name: sum(fn(a, r) for a, r in zip(answers, refs, strict=True)) / len(refs)
        for name, fn in SCORERS.items()
    }
    out: dict[str, Any] = {"scores": scores, "scored": len(refs), "notes": []}
    rules = ((job.spec.get("rl") or {}).get("rewards") or []) if job else []
    if rules:
        total, skipped = 0.0, 0
        for rule in rules:
            preset = rule.get("preset")
            if preset in SCORERS:
                total += float(rule.get("weight", 1.0)) * scores[preset]
            else:
                skipped += 1
        out["reward"] = total
        if skipped:
            out["notes"].append(
                f"{skipped} of the job's rules are not scored here (user functions run in the "
                "trainer's reward sandbox; presets other than " + ", ".join(SCORERS) + ")"
            )
    out["samples"] = [
        {"prompt": s[1] if s[0] is None else s[0][-1].content, "reference": r, "answer": a}
        for (s, _), r, a in list(zip(pairs, refs, answers, strict=True))[:5]
    ]
    return out


def _keep(job: JobView, report: dict[str, Any], text: str) -> None:
    from tidetune.jobs.summary import EVAL_DIR

    if job.run_uri is None:
        raise JobError(f"{job.ref}: no run location to keep the report in")
    store, key = open_store(job.run_uri, job.credentials)
    name = report["time"].replace(":", "") + ".json"
    dest = ObjectStore.join(key, EVAL_DIR, name)
    try:
        store.write_text(dest, text)
    except StorageError as e:
        raise JobError(f"{job.ref}: cannot keep the report: {e}") from None
    print(f"kept with {job.ref}: {store.uri(dest)}", file=sys.stderr)
