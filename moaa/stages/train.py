"""SFT and DPO training: TRL's ``SFTTrainer`` / ``DPOTrainer`` run inside each Ray Train worker.

The driver reads and checks the data before any worker starts (schema, error rows), sizes the worker group
from the config (fixed or elastic, GPU with NCCL or CPU with gloo) and runs a ``TorchTrainer``. Each worker
runs one TRL trainer; every TRL save is reported to Ray Train as a checkpoint, so a worker that dies is
replaced and the group resumes from the last checkpoint, and a re-run of a crashed job (same run_id) finds
that checkpoint in ``storage_path`` and resumes too. Rank 0 saves the final model and tokenizer in Hugging
Face format (what vLLM and transformers load) and the driver writes ``summary.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, ClassVar, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from moaa.core import console, layout, schemas, storage
from moaa.core.config import Config, InputPath, ModelSource, OutputPath, UserError
from moaa.core.stage import Outcome, Stage, StageConfig, StageMetrics, Summary, Work, num
from moaa.embedded import models, smollm
from moaa.engine.settings import check_sources, check_uri_model

# Ray Train's print patch sends every print to its logger as well, which defeats dill's stdout capture when
# `datasets` hashes TRL's map functions (pages of bytecode in the console); progress bars of weight loading
# repeat for every worker. Our own progress line is printed by rank 0.
WORKER_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}


class DataError(UserError, ValueError):
    """Training data that cannot be used; raised on the driver before any worker starts."""


class ScalingSettings(Config):
    num_workers: int = Field(
        1,
        ge=1,
        description="Training workers (one process each, data parallel); the "
        "upper bound when min_workers is set.",
    )
    min_workers: int | None = Field(
        None,
        ge=1,
        description="Elastic range: Ray Train starts with as many workers "
        "as fit between min_workers and num_workers and resizes on failures or new "
        "nodes. Null: exactly num_workers.",
    )
    device: Literal["auto", "gpu", "cpu"] = Field(
        "auto",
        description="'gpu': NCCL, gpus_per_worker each; 'cpu': "
        "gloo; 'auto': gpu if the Ray cluster has GPUs, cpu on a Ray this job started on its own machine; "
        "on a cluster without GPUs (yet) auto refuses to guess.",
    )
    gpus_per_worker: float = Field(1, gt=0, description="GPUs reserved per worker when on GPU.")
    cpus_per_worker: float = Field(
        1, gt=0, description="CPUs reserved per worker (also its torch threads on CPU)."
    )
    resize_interval_s: float = Field(
        60,
        gt=0,
        description="Elastic range only: how often a running group looks for room for more workers (a "
        "node that joined); when there is, it restarts bigger from its last checkpoint.",
    )

    @model_validator(mode="after")
    def _range(self) -> ScalingSettings:
        if self.min_workers is not None and self.min_workers > self.num_workers:
            raise ValueError(f"min_workers ({self.min_workers}) must be <= num_workers ({self.num_workers})")
        return self

    @property
    def worker_counts(self) -> list[int]:
        return list(range(self.min_workers or self.num_workers, self.num_workers + 1))


class CheckpointSettings(Config):
    save_steps: int = Field(
        50,
        ge=1,
        description="TRL saves a checkpoint every this many optimizer steps; each "
        "is reported to Ray Train (the point a failed run resumes from).",
    )
    num_to_keep: int = Field(
        2, ge=1, description="Checkpoints Ray Train keeps in storage_path (oldest deleted)."
    )
    storage_path: OutputPath | None = Field(
        None,
        description="Ray Train storage (local path or s3:// gs:// URI; shared "
        "storage on a multi-node cluster). Null: <output_dir>/ray.",
    )
    max_failures: int = Field(
        3,
        ge=-1,
        description="Worker-group failures to recover from (restart from the last "
        "checkpoint) before the job fails; -1: unlimited.",
    )


class TrainConfig(StageConfig):
    """What SFT and DPO share: data, model, batch arithmetic, optimizer, scaling and checkpoints."""

    model: ModelSource = Field(
        smollm.PATH,
        description="Model to train: hub id, local path (HF format), s3:// or gs:// URI of such a folder "
        "(copied to each node's MOAA_CACHE), or a model of this run (run:train_sft, "
        "run:train_dpo@1; moaa/core/layout.py). The embedded models (models/smollm2/..., models/tiny/...) "
        "are built when missing.",
    )
    data: InputPath | None = Field(
        None,
        description="Parquet file or folder of Parquet files; null: the upstream stage's data folder in this "
        "run and round (moaa/core/layout.py).",
    )
    scaling: ScalingSettings = Field(default_factory=ScalingSettings, description="Workers and devices.")
    checkpoint: CheckpointSettings = Field(
        default_factory=CheckpointSettings, description="Checkpoints, faults."
    )

    learning_rate: float = Field(2e-5, gt=0, description="Peak learning rate (AdamW).")
    num_epochs: float = Field(1, gt=0, description="Passes over the data (ignored when max_steps > 0).")
    max_steps: int = Field(-1, description="Optimizer steps to run; -1: num_epochs decides.")
    per_device_batch_size: int = Field(
        2, ge=1, description="Sequences (or packed blocks) per worker per micro-step."
    )
    gradient_accumulation_steps: int | None = Field(
        None,
        ge=1,
        description="Micro-steps per optimizer step; "
        "null: effective_batch_size decides (1 if that is null too).",
    )
    effective_batch_size: int | None = Field(
        None,
        ge=1,
        description="Sequences per optimizer step = per device "
        "batch x accumulation x workers; refused if some allowed worker "
        "count cannot reach it exactly.",
    )
    max_length: int = Field(
        512, ge=8, description="Tokens per sequence (longer ones are truncated); the block size when packing."
    )
    lr_scheduler_type: str = Field("linear", description="transformers scheduler name (linear, cosine, ...).")
    warmup_steps: float = Field(0.0, ge=0, description=">= 1: warmup steps; < 1: fraction of all steps.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto",
        description="bf16: bf16 compute (on GPU bf16 weights; on CPU fp32 weights under bf16 autocast, so "
        "that small updates are not lost). 'auto': bf16 on GPU and on CPUs with AVX512-BF16, else fp32.",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in backward (saves memory)."
    )
    fsdp: bool = Field(
        False,
        description="Shard weights, gradients and optimizer states over workers "
        "(TrainingArguments.fsdp); needed to fully fine-tune 8B-9B models; GPU only.",
    )
    logging_steps: int = Field(1, ge=1, description="Log (and print) loss every this many optimizer steps.")
    seed: int = Field(42, description="Seed for model init of new heads, data order and dropout.")

    stage: ClassVar[str] = ""  # the run folder stage name
    schema_name: ClassVar[str] = ""  # contract of the input data
    text_columns: ClassVar[tuple[str, ...]] = ()  # columns TRL reads (plus 'error', which filters rows)

    @model_validator(mode="after")
    def _batch(self) -> TrainConfig:
        bad = []
        for w in self.scaling.worker_counts:
            per_step = self.per_device_batch_size * w
            if self.effective_batch_size is not None:
                gas = self.gradient_accumulation_steps or self.effective_batch_size // per_step
                if gas < 1 or per_step * gas != self.effective_batch_size:
                    bad.append(w)
        if bad:
            how = (
                f"x {self.gradient_accumulation_steps} accumulation"
                if self.gradient_accumulation_steps
                else "x a whole number of accumulation steps"
            )
            raise ValueError(
                f"effective_batch_size {self.effective_batch_size} cannot be reached with "
                f"per_device_batch_size {self.per_device_batch_size} {how} x {bad} worker(s); "
                "pick an effective batch divisible by per_device_batch_size x workers for every allowed "
                f"worker count {self.scaling.worker_counts}"
            )
        return self

    # -- derived values ------------------------------------------------------------------------------------
    def gradient_accumulation(self, world_size: int) -> int:
        if self.gradient_accumulation_steps is not None:
            return self.gradient_accumulation_steps
        if self.effective_batch_size is not None:
            return self.effective_batch_size // (self.per_device_batch_size * world_size)
        return 1

    def effective_batch(self, world_size: int) -> int:
        return self.per_device_batch_size * self.gradient_accumulation(world_size) * world_size

    def batch_line(self) -> str:
        """E.g. 'effective batch 128 = 2 per device x 8 accumulation x 8 workers' (per worker count)."""
        return "; ".join(
            f"effective batch {self.effective_batch(w)} = {self.per_device_batch_size} per device x "
            f"{self.gradient_accumulation(w)} accumulation x {w} worker{'s' if w > 1 else ''}"
            for w in self.scaling.worker_counts
        )

    @property
    def data_path(self) -> str:
        return self.data or layout.default_input(self.runs_dir, self.run_id, self.stage, self.round)[1]

    @property
    def model_path(self) -> str:
        return layout.resolve_model(self.model, self.runs_dir, self.run_id, self.round)

    @property
    def storage_path(self) -> str:
        return self.checkpoint.storage_path or storage.join(self.out_dir(), "ray")

    def fingerprint_data(self) -> Any:
        # How many failures to tolerate and how many checkpoints to keep do not change the result: a re-run
        # with other values must still resume.
        return self.model_dump(
            mode="json",
            exclude={"checkpoint": {"max_failures", "num_to_keep"}, "scaling": {"resize_interval_s"}},
        )


class TrainSFTConfig(TrainConfig):
    """``jobs.train_sft``: supervised fine-tuning on generate_sft's conversations (schemas/sft.json)."""

    packing: bool = Field(False, description="Pack conversations into max_length blocks (TRL packing).")
    assistant_only_loss: bool = Field(
        True,
        description="Loss on assistant turns only, where the chat template "
        "allows it (generation markers, or a TRL training template); else the "
        "whole conversation, with a printed note.",
    )

    stage: ClassVar[str] = "train_sft"
    schema_name: ClassVar[str] = "sft"
    text_columns: ClassVar[tuple[str, ...]] = ("messages",)


class TrainDPOConfig(TrainConfig):
    """``jobs.train_dpo``: DPO on preference pairs (schemas/preference.json), by default on the SFT model."""

    model: ModelSource = Field(
        "run:train_sft",
        description="Policy to train (and the reference's weights): hub id, path, or run:train_sft (this "
        "round's SFT model, the default).",
    )
    learning_rate: float = Field(5e-6, gt=0, description="Peak learning rate (AdamW).")
    beta: float = Field(0.1, gt=0, description="DPO beta: how far the policy may move from the reference.")
    loss_type: str = Field("sigmoid", description="TRL DPO loss type: sigmoid (DPO), ipo, hinge, robust, ...")
    reference: Literal["frozen_copy", "precomputed"] = Field(
        "frozen_copy",
        description="'frozen_copy': a second copy of the starting model in memory; "
        "'precomputed': its log-probs computed once before training, then no reference model is kept (TRL "
        "caches them on rank 0's node: the workers are kept on one node).",
    )

    stage: ClassVar[str] = "train_dpo"
    schema_name: ClassVar[str] = "preference"
    text_columns: ClassVar[tuple[str, ...]] = ("prompt", "chosen", "rejected")


# -- read + check (driver) ---------------------------------------------------------------------------------
def data_files(path: str) -> list[str]:
    if not storage.exists(path):
        raise DataError(f"training data {path} does not exist; run the upstream job first or set data=...")
    fs, p = storage.resolve(path)
    if fs.get_file_info(p).type == pafs.FileType.File:
        return [path]
    files = storage.list_files(path, ".parquet")
    if not files:
        raise DataError(f"{path} holds no .parquet files")
    return files


def check_data(cfg: TrainConfig) -> dict[str, Any]:
    """Schema of every file and row counts, read from the driver before any worker starts: a bad file fails
    here with the column named, not minutes later inside a worker."""
    files = data_files(cfg.data_path)
    total = errored = 0
    for f in files:
        fs, p = storage.resolve(f)
        with fs.open_input_file(p) as fh:
            schema = pq.read_schema(fh)
        schemas.check_columns(schema, cfg.schema_name, [*cfg.text_columns, "error"], where=f)
        err = storage.read_parquet(f, columns=["error"]).column("error")
        total += len(err)
        errored += err.length() - err.null_count
    if total - errored == 0:
        raise DataError(
            f"no usable rows in {cfg.data_path}: {total} row(s), all {errored} with 'error' set; "
            "nothing to train on"
        )
    return {"files": files, "rows_total": total, "rows_errored": errored, "rows_used": total - errored}


def load_rows(files: list[str], columns: tuple[str, ...]) -> pa.Table:
    """The usable rows (error is null), only the columns training reads: later stages may add others."""
    tables = [storage.read_parquet(f, columns=[*columns, "error"]) for f in files]
    table = pa.concat_tables(tables)
    return table.filter(pc.is_null(table.column("error"))).select(list(columns))


# -- the TRL run (a Ray worker, or a plain process for the benchmark) ----------------------------------------
def _dataset(table: pa.Table):
    """A file-backed ``datasets.Dataset``, at one path per content on each node: TRL's precomputed
    reference log-probs are cached next to the dataset's file, and every rank must find rank 0's cache."""
    import datasets

    key = hashlib.sha256(str(table.schema).encode() + str(table.num_rows).encode())
    for batch in table.to_batches():
        key.update(batch.to_pandas().to_json().encode())
    folder = Path(tempfile.gettempdir()) / "moaa-train-data" / key.hexdigest()[:16]
    path = folder / "data.arrow"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".data.{os.getpid()}.arrow"
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        os.replace(tmp, path)
    return datasets.Dataset.from_file(str(path))


def assistant_loss_supported(tokenizer) -> bool:
    """True when TRL can mask non-assistant tokens: the template has generation markers, or TRL ships a
    training version of it (Llama 3, Gemma, Qwen ...)."""
    from trl.chat_template_utils import get_training_chat_template

    try:
        get_training_chat_template(tokenizer)
        return True
    except ValueError:
        return False


def _last_loss(log_history: list[dict[str, Any]]) -> float | None:
    losses = [h["loss"] for h in log_history if "loss" in h]
    return float(losses[-1]) if losses else None


def load_model(model_dir: str, dtype: Any) -> Any:
    """The model to train, with an attention that computes what the model is: Gemma-2 caps its attention
    logits (``attn_logit_softcapping``), which transformers' SDPA attention drops and vLLM applies, so
    training would differ from inference; eager attention applies it (as transformers advises for Gemma-2)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    softcapped = getattr(config, "attn_logit_softcapping", None) is not None
    return AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, **({"attn_implementation": "eager"} if softcapped else {})
    )


def run_trl(
    cfg: TrainConfig,
    files: list[str],
    work_dir: str,
    *,
    world_size: int = 1,
    use_gpu: bool = False,
    resume_from: str | None = None,
    callbacks: list | None = None,
    final_dir: str | None = None,
) -> dict[str, Any]:
    """Build the TRL trainer for ``cfg`` and train; returns the run's numbers. Inside Ray Train the process
    group is already up (accelerate picks it up from the environment Ray sets)."""
    import torch
    from transformers import AutoTokenizer, PrinterCallback, TrainerCallback
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    is_sft = isinstance(cfg, TrainSFTConfig)
    bf16 = cfg.precision == "bf16" or (
        cfg.precision == "auto" and (use_gpu or torch.cpu._is_avx512_bf16_supported())
    )
    train_data = _dataset(load_rows(files, cfg.text_columns))
    # an s3:// or gs:// model is copied to this node first: transformers loads local folders and hub ids
    model_dir = storage.local_copy(cfg.model_path)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # GPU: bf16 weights (memory for 8B models); CPU: fp32 weights, bf16 autocast, fp32 optimizer updates
    model = load_model(model_dir, torch.bfloat16 if bf16 and use_gpu else torch.float32)

    class Progress(TrainerCallback):
        """One line per log step on rank 0: Ray forwards worker output to the driver's console."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs and "loss" in logs:
                print(
                    f"[{cfg.stage}] step {state.global_step}/{state.max_steps} epoch {state.epoch or 0:.2f} "
                    f"loss {logs['loss']:.4f} lr {logs.get('learning_rate', 0):.2e} "
                    f"tokens {state.num_input_tokens_seen}",
                    flush=True,
                )

    common: dict[str, Any] = dict(
        output_dir=work_dir,
        per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation(world_size),
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.num_epochs,
        max_steps=cfg.max_steps,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        max_length=cfg.max_length,
        bf16=bf16,
        use_cpu=not use_gpu,
        gradient_checkpointing=cfg.gradient_checkpointing,
        fsdp=cfg.fsdp or None,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.checkpoint.save_steps,
        save_total_limit=1,  # local scratch only: Ray Train keeps the reported copies
        seed=cfg.seed,
        report_to="none",
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        ddp_find_unused_parameters=False,
    )
    assistant_only = False
    if is_sft:
        assistant_only = cfg.assistant_only_loss and assistant_loss_supported(tokenizer)
        if cfg.assistant_only_loss and not assistant_only:
            print(
                f"[{cfg.stage}] the chat template of {cfg.model_path} cannot mark assistant turns: loss on "
                "whole conversations",
                flush=True,
            )
        args = SFTConfig(**common, packing=cfg.packing, assistant_only_loss=assistant_only)
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=train_data,
            processing_class=tokenizer,
            callbacks=[Progress(), *(callbacks or [])],
        )
    else:
        assert isinstance(cfg, TrainDPOConfig)
        args = DPOConfig(
            **common,
            beta=cfg.beta,
            loss_type=[cfg.loss_type],
            precompute_ref_log_probs=cfg.reference == "precomputed",
        )
        # ref_model=None: TRL loads the frozen copy from the same path, or none when precomputing.
        trainer = DPOTrainer(
            model=model,
            args=args,
            train_dataset=train_data,
            processing_class=tokenizer,
            callbacks=[Progress(), *(callbacks or [])],
        )

    trainer.remove_callback(PrinterCallback)  # Progress prints the loss line instead
    out = trainer.train(resume_from_checkpoint=resume_from)
    state = trainer.state
    session_tokens = state.num_input_tokens_seen - trainer._initial_num_input_tokens_seen
    runtime = float(out.metrics.get("train_runtime", 0.0))
    if final_dir is not None:
        trainer.save_model(final_dir)  # every rank: a collective under FSDP; rank 0 writes
    return {
        "steps": state.global_step,
        "max_steps": state.max_steps,
        "epochs": state.epoch,
        "final_loss": _last_loss(state.log_history),
        "losses": [[h["step"], h["loss"]] for h in state.log_history if "loss" in h],
        # DPO: the chosen-minus-rejected reward margin per logged step (what DPO raises)
        "reward_margins": [
            [h["step"], h["rewards/margins"]] for h in state.log_history if "rewards/margins" in h
        ],
        "tokens_seen": int(state.num_input_tokens_seen),
        "session_tokens": int(session_tokens),
        "train_runtime_s": runtime,
        "tokens_per_s": session_tokens / runtime if runtime > 0 else None,
        "world_size": world_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation(world_size),
        "effective_batch_size": cfg.effective_batch(world_size),
        "assistant_only_loss": assistant_only if is_sft else None,
        "rows_trained": len(train_data),
    }


# The worker groups a run trained with, carried from checkpoint to checkpoint in rank 0's part: an elastic run
# that shrank after a lost node, or grew onto a new one, says so in its summary.
WORKER_GROUPS_FILE = "moaa_worker_groups.json"


def _worker_groups(resume_dir: str | None, world_size: int) -> list[dict[str, int]]:
    """The groups whose steps are in the checkpoint resumed from, then this one (from the checkpoint's step).
    A group that died before its first checkpoint left nothing in the model, and is not listed."""
    if resume_dir is None:
        return [{"from_step": 0, "workers": world_size}]
    groups = []  # a checkpoint of an older moaa has no record of its groups
    if os.path.exists(os.path.join(resume_dir, WORKER_GROUPS_FILE)):
        with open(os.path.join(resume_dir, WORKER_GROUPS_FILE)) as f:
            groups = json.load(f)
    with open(os.path.join(resume_dir, "trainer_state.json")) as f:
        step = json.load(f)["global_step"]
    return [*groups, {"from_step": step, "workers": world_size}]


def _report_callback(worker_groups: list[dict[str, int]]):
    """A TrainerCallback that reports each TRL save to Ray Train. Every rank reports its own checkpoint
    folder (rank 0: weights, optimizer, trainer state, worker groups; others: their RNG state) and Ray merges
    them."""
    import ray.train
    from transformers import TrainerCallback

    class RayReport(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if state.is_world_process_zero and os.path.isdir(folder):
                with open(os.path.join(folder, WORKER_GROUPS_FILE), "w") as f:
                    json.dump(worker_groups, f)
            ckpt = ray.train.Checkpoint.from_directory(folder) if os.path.isdir(folder) else None
            metrics = {
                "step": state.global_step,
                "epoch": state.epoch,
                "loss": _last_loss(state.log_history),
                "workers": worker_groups[-1]["workers"],
            }
            ray.train.report(
                metrics, checkpoint=ckpt, checkpoint_dir_name=f"checkpoint-{state.global_step:07d}"
            )

    return RayReport()


class ProgressBoard:
    """Rank 0's last logged step, read by the driver for its progress line (a Ray actor holding no CPU:
    worker output stays in Ray's logs when the console is quiet)."""

    def __init__(self) -> None:
        self.last: dict[str, Any] = {}
        self.notes: list[str] = []

    def put(self, step: dict[str, Any]) -> None:
        self.last = step

    def note(self, line: str) -> None:
        """A line the driver prints once (a resume, a new worker group)."""
        self.notes.append(line)

    def get(self) -> tuple[dict[str, Any], list[str]]:
        return self.last, self.notes


def _board_callback(board: Any):
    from transformers import TrainerCallback

    class ToBoard(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs and "loss" in logs:
                step = {"step": state.global_step, "max_steps": state.max_steps, "loss": logs["loss"]}
                board.put.remote({**step, "tokens": state.num_input_tokens_seen})

    return ToBoard()


def _watch(board: Any, label: str, stop: threading.Event) -> None:
    """The driver's training progress line, from the board, until ``stop``."""
    import ray

    line = console.Progress(label, 0, "steps")
    printed = 0
    try:
        while True:
            stopped = stop.wait(1.0)  # one more read after the stop: the last notes are printed too
            try:
                last, notes = ray.get(board.get.remote(), timeout=10)
            except Exception:  # a lost board only costs the progress line
                return
            for note in notes[printed:]:
                line.close()
                print(f"[{label}] {note}", flush=True)
            printed = len(notes)
            if stopped:
                return
            if last:
                line.total = last["max_steps"]
                line.update(last["step"], f"loss {last['loss']:.3f}")
    finally:
        line.close()


def _publish(local_dir: str, dest: str) -> None:
    """Copy a finished local folder to ``dest`` (path or URI); local: copy beside it then rename, so that a
    killed worker never leaves half a model under the final name."""
    if storage.is_uri(dest):
        fs, p = storage.resolve(dest)
        pafs.copy_files(local_dir, p, destination_filesystem=fs)
        return
    dest = os.path.abspath(dest)
    tmp = f"{dest}.tmp-{os.getpid()}"
    shutil.copytree(local_dir, tmp)
    if os.path.exists(dest):
        shutil.rmtree(dest)
    os.replace(tmp, dest)


def train_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train's per-worker loop: resume from Ray's latest checkpoint if any, train, rank 0 publishes the
    model. Rank 0's return value is the run's numbers (Ray Train hands it to the driver)."""
    import ray.train
    import torch

    cfg: TrainConfig = config["cfg"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if not config["use_gpu"]:
        torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
    scratch = tempfile.mkdtemp(prefix=f"moaa-{cfg.stage}-rank{rank}-")
    checkpoint = ray.train.get_checkpoint()
    resumed = checkpoint.path if checkpoint is not None else None
    try:
        with contextlib.ExitStack() as stack:
            resume_from = None
            if checkpoint is not None:
                # as_directory: a checkpoint on a local or shared filesystem is read where it is; one in
                # s3:// or gs:// is downloaded once per node (Ray's file lock: the node's other ranks wait for
                # that copy), not once per rank (8 ranks x a ~96 GB FSDP checkpoint of an 8B model)
                resume_from = stack.enter_context(checkpoint.as_directory())
                if rank == 0:
                    note = f"resuming from {resumed} with {world} worker(s)"
                    print(f"[{cfg.stage}] {note}", flush=True)
                    config["board"].note.remote(note)  # the driver's console shows it
            worker_groups = _worker_groups(resume_from, world)
            final_dir = os.path.join(scratch, "final")
            result = run_trl(
                cfg,
                config["files"],
                os.path.join(scratch, "hf"),
                world_size=world,
                use_gpu=config["use_gpu"],
                resume_from=resume_from,
                callbacks=[_report_callback(worker_groups), _board_callback(config["board"])],
                final_dir=final_dir,
            )
        if rank == 0:
            _publish(final_dir, layout.output_of(cfg.out_dir(), cfg.stage))
        return {**result, "resumed_from": resumed, "worker_groups": worker_groups}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# -- scale + train (driver) ------------------------------------------------------------------------------
def connected_to_a_cluster() -> bool:
    """Whether this driver joined a Ray cluster (an address, a submitted job, Ray Client) rather than
    starting a Ray of its own on this machine."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    return node is None or not node.is_head()


def wants_gpu(cfg: TrainConfig) -> bool:
    """'auto': GPU when the cluster has GPUs, CPU on a Ray of this machine without any. On a cluster without
    GPUs it refuses to guess: an autoscaling cluster scaled to zero shows no GPU until work asks for one,
    and training an 8B model on its CPUs would be the wrong guess."""
    import ray

    if cfg.scaling.device != "auto":
        return cfg.scaling.device == "gpu"
    if ray.cluster_resources().get("GPU", 0) > 0:
        return True
    if connected_to_a_cluster():
        raise UserError(
            "scaling.device auto: the Ray cluster has no GPU now, and an autoscaling cluster adds GPU nodes "
            "only for work that asks for them. Set scaling.device=gpu (training waits for GPU workers) or "
            "scaling.device=cpu (train on the cluster's CPUs)."
        )
    return False


def worker_resources(cfg: TrainConfig, use_gpu: bool) -> dict[str, float]:
    s = cfg.scaling
    return {"CPU": s.cpus_per_worker, **({"GPU": s.gpus_per_worker} if use_gpu else {})}


def scaling_config(cfg: TrainConfig, use_gpu: bool):
    from ray.train import ScalingConfig

    s = cfg.scaling
    num_workers: int | tuple[int, int] = (
        s.num_workers if s.min_workers is None else (s.min_workers, s.num_workers)
    )
    # TRL writes the precomputed reference log-probs on rank 0 only, beside the dataset file, which is in each
    # node's temp folder: ranks on another node would not find them. Such a run keeps its workers on one node
    # (8 GPU workers fit one node of cluster/raycluster.yaml; the frozen copy has no such limit).
    one_node = isinstance(cfg, TrainDPOConfig) and cfg.reference == "precomputed"
    return ScalingConfig(
        num_workers=num_workers,
        use_gpu=use_gpu,
        resources_per_worker=worker_resources(cfg, use_gpu),
        placement_strategy="STRICT_PACK" if one_node else "PACK",
        elastic_resize_monitor_interval_s=s.resize_interval_s,
    )


def ray_run_name(cfg: TrainConfig) -> str:
    """A fixed name per run folder: a re-run after a crash finds this run's checkpoints and resumes."""
    return f"{cfg.stage}-{cfg.run_id}"


def fit(cfg: TrainConfig, files: list[str]) -> dict[str, Any]:
    """Run the TorchTrainer; raises when the run fails after max_failures recoveries."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    console.start_ray(cfg.ray_address)
    use_gpu = wants_gpu(cfg)
    board = ray.remote(num_cpus=0)(ProgressBoard).remote()
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"cfg": cfg, "files": files, "use_gpu": use_gpu, "board": board},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=scaling_config(cfg, use_gpu),
        run_config=RunConfig(
            name=ray_run_name(cfg),
            storage_path=cfg.storage_path,
            failure_config=FailureConfig(max_failures=cfg.checkpoint.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.num_to_keep),
            worker_runtime_env={"env_vars": WORKER_ENV},
        ),
    )
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(board, cfg.stage, stop), daemon=True)
    watcher.start()
    try:
        result = trainer.fit()
    finally:
        stop.set()
        watcher.join()
        ray.kill(board)
    return {**result.return_value, "device": "gpu" if use_gpu else "cpu"}


def read_and_check(cfg: TrainConfig) -> dict[str, Any]:
    """Data and model checks on the driver, before Ray or any worker starts."""
    data = check_data(cfg)
    check_sources([("model", cfg.model_path)])
    models.ensure([cfg.model_path])
    if layout.is_model_ref(cfg.model) and not storage.exists(cfg.model_path):
        raise DataError(
            f"model is {cfg.model} = {cfg.model_path}, which does not exist yet: run the stage that writes "
            f"it for run {cfg.run_id!r} first, or set model=<hub id or path>"
        )
    check_uri_model("model", cfg.model_path)
    print(
        f"[{cfg.stage}] {data['rows_used']} rows to train on ({data['rows_errored']} with error skipped) "
        f"from {cfg.data_path}; {cfg.batch_line()}"
    )
    return data


class WorkerGroup(Config):
    from_step: int = Field(0, description="The step this group of workers started from.")
    workers: int = Field(1, description="Workers in the group.")


class TrainMetrics(StageMetrics):
    model: str | None = Field(None, description="The model trained from (path or hub id).")
    data: str | None = Field(None, description="The data folder trained on.")
    rows_total: int | None = Field(None, description="Rows in the data, with error rows.")
    steps: int | None = Field(None, description="Optimizer steps taken.")
    max_steps: int | None = Field(None, description="Steps planned.")
    epochs: float | None = Field(None, description="Epochs trained.")
    final_loss: float | None = Field(None, description="Last logged training loss.")
    losses: list[list[float]] = Field(default_factory=list, description="[step, loss] per logged step.")
    reward_margins: list[list[float]] = Field(
        default_factory=list, description="DPO: [step, chosen-minus-rejected reward margin] per logged step."
    )
    tokens_seen: int | None = Field(None, description="Input tokens over the whole run, resumed parts too.")
    session_tokens: int | None = Field(None, description="Input tokens of the call that finished.")
    train_runtime_s: float | None = Field(None, description="Seconds TRL's train() ran in that call.")
    tokens_per_s: float | None = Field(None, description="session_tokens / train_runtime_s.")
    world_size: int | None = Field(None, description="Workers (ranks) of the last group.")
    gradient_accumulation_steps: int | None = Field(None, description="Steps accumulated per update.")
    effective_batch_size: int | None = Field(None, description="Sequences per optimizer step.")
    assistant_only_loss: bool | None = Field(None, description="SFT: loss on assistant tokens only.")
    rows_trained: int | None = Field(None, description="Rows in the training set.")
    resumed_from: str | None = Field(None, description="The checkpoint the last call resumed from.")
    worker_groups: list[WorkerGroup] = Field(
        default_factory=list, description="The groups of workers the steps were trained with (elastic runs)."
    )
    device: str | None = Field(None, description="cpu or gpu.")
    ray_storage: str | None = Field(None, description="Ray Train's run folder (checkpoints).")


class Train(Stage[TrainConfig, TrainMetrics]):
    """train_sft and train_dpo: one stage class, two configs."""

    metrics = TrainMetrics

    def __init__(self, config: type[TrainConfig]) -> None:
        self.config = config
        self.name = config.stage

    def resources(self, cfg: TrainConfig) -> dict[str, float]:
        """Every worker's resources at the most workers (the controller takes none)."""
        per = worker_resources(cfg, wants_gpu(cfg))
        return {k: v * cfg.scaling.num_workers for k, v in per.items()}

    def work(self, work: Work, pools: Any = None) -> Outcome:
        """Train (or resume) and publish the model."""
        cfg = work.cfg
        assert isinstance(cfg, TrainConfig)
        data = read_and_check(cfg)  # schema, error rows, model: before the output folder or any worker
        ray_run = storage.join(cfg.storage_path, ray_run_name(cfg))
        checkpoints = [
            p for p in storage.list_dirs(ray_run) if posixpath.basename(p).startswith("checkpoint")
        ]
        manifest = work.open_manifest(other_work=bool(checkpoints))
        metrics = fit(cfg, data["files"])  # scale + train (TRL in Ray Train workers) + save (rank 0)
        return Outcome(
            manifest,
            rows=data["rows_used"],
            errors=data["rows_errored"],
            outputs={"model": layout.output_of(work.out, cfg.stage)},
            metrics=TrainMetrics(
                model=cfg.model_path,
                data=cfg.data_path,
                rows_total=data["rows_total"],
                **metrics,
                ray_storage=ray_run,
            ),
            usable=data["rows_used"],
        )

    def one_line(self, s: Summary) -> str:
        m = self.read(s)
        return (
            f"{s.stage}: {m.steps} steps, {m.epochs or 0:.2f} epochs on {s.rows} rows ({s.errors} with error "
            f"skipped), final loss {m.final_loss}, {m.tokens_per_s or 0:.0f} tokens/s, {s.wall_s} s"
            + (f", resumed from {m.resumed_from}" if m.resumed_from else "")
            + (
                f", workers {' -> '.join(str(g.workers) for g in m.worker_groups)}"
                if len(m.worker_groups) > 1
                else ""
            )
            + f" -> {s.outputs['model']}"
        )

    def key_numbers(self, s: Summary) -> str:
        m = self.read(s)
        parts = []
        if m.steps is not None:
            parts.append(f"{num(m.steps)} steps on {num(m.rows_trained or s.rows)} rows")
        if m.final_loss is not None:
            parts.append(f"final loss {num(m.final_loss, 3)}")
        if m.device is not None:
            parts.append(f"{m.device} x {m.world_size or 1}")
        return ", ".join(parts)


TRAIN_SFT = Train(TrainSFTConfig)
TRAIN_DPO = Train(TrainDPOConfig)
