"""Model settings: what a model is, how it samples, what an engine answers, and the checks of a model
source made in the driver before any engine starts. No vLLM and no Ray here (training and every stage's
config import this); the engines themselves are ``moaa.engine.vllm``.

``ray.data.llm``'s vLLM processor has no CPU path and keeps only the first of ``n`` samples, so this is
our own: prompts are rendered with the model's chat template and tokenized here (so that their length
is known before anything is sent), over-long prompts are returned as errors instead of being sent, and
token counts come from vLLM's ``RequestOutput``s.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, Field, model_validator

from moaa.core import storage
from moaa.core.config import Config, ModelSource, UserError
from moaa.core.storage import is_uri


class SamplingConfig(Config):
    temperature: float = Field(0.7, ge=0, description="Sampling temperature (MoA paper: 0.7); 0: greedy.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass, in (0, 1].")
    max_tokens: int = Field(
        2048, ge=1, description="Most tokens generated per answer (clamped to what the context leaves)."
    )
    repetition_penalty: float = Field(
        1.0,
        gt=0,
        description="vLLM's penalty on tokens already in the prompt or answer (> 1 discourages loops).",
    )
    seed: int | None = Field(
        None,
        description="Per-request seed: the same seed, the same samples. null: samples come from the engine's "
        "generator, which the model's `seed` seeds, so a rerun of the same job repeats them too.",
    )


# vllm.LLM arguments that have a setting of their own here: engine_kwargs may not set them behind its back.
OWN_SETTINGS = {
    "model",
    "tokenizer",
    "dtype",
    "max_model_len",
    "tensor_parallel_size",
    "enforce_eager",
    "gpu_memory_utilization",
    "seed",
    "trust_remote_code",
}


class ModelConfig(Config):
    """One model served by a pool of vLLM engines (one Ray Data actor pool)."""

    model: ModelSource = Field(
        description="Hub id, local folder (HF format: config.json, weights, tokenizer), s3:// or gs:// URI "
        "of such a folder (copied to each node's MOAA_CACHE), or a model of this run (run:train_sft, "
        "run:train_dpo@1)."
    )
    name: str | None = Field(
        None, description="Display name in outputs and summaries; default: last path part."
    )
    tokenizer: ModelSource | None = Field(None, description="Tokenizer hub id or path if not the model's.")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="Sampling parameters.")
    max_model_len: int | None = Field(
        None, ge=16, description="Context length; prompts that do not fit are not sent."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto",
        description="Weights dtype for vLLM. 'auto': on GPU the checkpoint's; on CPU bfloat16 where the CPU "
        "has AVX512-BF16, else float32 (bfloat16 is emulated there, ~4.6x slower), decided on each engine's "
        "node.",
    )
    trust_remote_code: bool = Field(
        False,
        description="Run the model repository's own Python code (custom architectures). Off: only code "
        "shipped with transformers/vLLM runs; turn it on only for a model you trust.",
    )
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per engine (tensor parallel).")
    num_gpus: float = Field(
        0, ge=0, description="GPUs reserved per engine actor; set = tensor_parallel_size on GPU."
    )
    num_cpus: float = Field(1, gt=0, description="CPUs reserved per engine actor (fractions allowed on CPU).")
    replicas: int = Field(1, ge=1, description="Engines (actors) in this model's pool.")
    batch_size: int = Field(64, ge=1, description="Rows per map_batches call: one vLLM batch.")
    enforce_eager: bool = Field(False, description="Disable CUDA graphs / compilation (required on CPU).")
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="vLLM's share of GPU memory, in (0, 1]."
    )
    kv_cache_space_gb: float | None = Field(
        None, gt=0, description="CPU only: KV cache size (VLLM_CPU_KVCACHE_SPACE)."
    )
    cpu_threads: int | None = Field(
        None, ge=1, description="CPU only: compute threads per engine; null: every core of the node."
    )
    seed: int = Field(0, description="Engine seed.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "ERROR",
        description="vLLM's log level in the engine actors; WARNING or INFO show its start-up and load logs "
        "(dozens of lines per engine), ERROR keeps the console to Ray Data's progress and moaa's lines.",
    )
    start_timeout_s: float = Field(
        3600,
        gt=0,
        description="Longest wait for the engines to load (weights downloaded to a fresh node count): then "
        "the job stops and says what the engine needs and what the cluster has (e.g. a node that never "
        "came up with enough GPUs).",
    )
    max_retries: int = Field(
        3,
        ge=0,
        description="Times a batch is sent again when its engine dies mid-request (restarted or "
        "another replica).",
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra vllm.LLM arguments (not those with a setting of their own)."
    )

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        taken = sorted(OWN_SETTINGS & set(self.engine_kwargs))
        if taken:
            raise ValueError(
                f"engine_kwargs may not set {taken}: use the model setting of that name instead "
                "(e.g. trust_remote_code: true)"
            )
        gpus = self.gpus_per_engine()
        if self.num_gpus == 0 and gpus > 1:
            raise ValueError(
                f"tensor_parallel_size x pipeline_parallel_size = {gpus} needs GPUs: set num_gpus = {gpus}"
            )
        # Ray gives the actor num_gpus GPUs and vLLM spreads the engine over the GPUs it sees: any other
        # count fails inside vLLM, or leaves GPUs reserved and idle. A fraction shares one GPU.
        if self.num_gpus > 0 and (self.num_gpus > 1 or gpus > 1) and self.num_gpus != gpus:
            raise ValueError(
                f"num_gpus {self.num_gpus:g} is not tensor_parallel_size x pipeline_parallel_size "
                f"({self.tensor_parallel_size} x {gpus // self.tensor_parallel_size}): set num_gpus = {gpus} "
                "(a fraction below 1 shares one GPU between engines of one GPU each)"
            )
        return self

    def gpus_per_engine(self) -> int:
        """GPUs one engine spreads over: tensor x pipeline parallel (``engine_kwargs``)."""
        pp = self.engine_kwargs.get("pipeline_parallel_size", 1)
        return self.tensor_parallel_size * (pp if isinstance(pp, int) and pp > 0 else 1)

    def output_settings(self) -> dict[str, Any]:
        """The settings that decide what this model writes (not its resources or batch size): the part
        of a job's config hash that makes a rerun with other settings refuse to mix into old output."""
        keep = {"model", "tokenizer", "sampling", "max_model_len", "dtype", "name", "seed"}
        return self.model_dump(mode="json", include=keep)

    @property
    def display_name(self) -> str:
        return self.name or self.model.rstrip("/").split("/")[-1]

    def engine_dtype(self) -> str:
        """The dtype an engine loads with, on the node it runs on (see ``dtype``)."""
        if self.dtype != "auto" or self.num_gpus > 0:
            return self.dtype
        import torch

        return "bfloat16" if torch.cpu._is_avx512_bf16_supported() else "float32"

    def ray_remote_args(self) -> dict[str, Any]:
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}


@dataclass
class Completion:
    """One engine answer (or the reason there is none)."""

    texts: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: list[int] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)
    error: str | None = None
    # The first generated token's top log-probabilities (token text -> logprob) of the first sample, when
    # they were asked for: an AlpacaEval-style judge reads its preference from them.
    first_logprobs: dict[str, float] | None = None

    @property
    def text(self) -> str:
        return self.texts[0]


def model_settings(cfg: BaseModel, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, model) of every ``ModelConfig`` inside a config, for messages that name the key."""
    found: list[tuple[str, str]] = []
    for name, value in cfg:
        items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for i, item in items:
            key = f"{prefix}{name}" + ("" if i is None else f".{i}")
            if isinstance(item, ModelConfig):
                found.append((f"{key}.model", item.model))
            elif isinstance(item, BaseModel):
                found += model_settings(item, f"{key}.")
    return found


class ModelSourceError(UserError, FileNotFoundError):
    """A model that cannot be had: the message names the setting and the fix."""


def _hub_reachable(timeout: float = 2.0) -> bool:
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def check_sources(settings: list[tuple[str, str]]) -> None:
    """Before Ray or any engine starts: every hub id must be in the local Hugging Face cache or the hub must
    be reachable, so that an offline run fails at once with the key named, not after minutes of retries."""
    from huggingface_hub import try_to_load_from_cache

    hub = [
        (key, value)
        for key, value in settings
        if not is_uri(value) and not os.path.isabs(value) and not value.startswith("run:")
    ]
    missing = [(k, v) for k, v in hub if not isinstance(try_to_load_from_cache(v, "config.json"), str)]
    if not missing:
        return
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
    if not offline and _hub_reachable():
        return
    why = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face hub cannot be reached from here"
    raise ModelSourceError(
        "\n".join(
            f"{key}: {value!r} is a hub id that is not in the local Hugging Face cache, and {why}; download "
            f"it first (huggingface-cli download {value}) or give a local model folder"
            for key, value in missing
        )
    )


def check_uri_model(what: str, path: str) -> None:
    """A model in object storage is a whole Hugging Face folder: its config.json is looked for from the
    driver, before engines or training workers start (they copy the folder to their node: ``local_copy``)."""
    if is_uri(path) and not storage.exists(storage.join(path, "config.json")):
        raise ModelSourceError(
            f"{what}: {path} holds no config.json: a model in object storage is a Hugging Face model "
            "folder (config.json, weights, tokenizer) copied there whole; a model of this run (run:...) is "
            "written by its training stage: run that first"
        )


def check_local(models: list[ModelConfig]) -> None:
    """Every local model folder exists (a run: model is written by an earlier stage; embedded ones are built
    on first use), and every model in object storage has its config.json."""
    from moaa.embedded import is_embedded

    for m in models:
        check_uri_model(f"model {m.display_name}", m.model)
        if not is_uri(m.model) and os.path.isabs(m.model) and not is_embedded(m.model):
            if not os.path.isdir(m.model):
                raise ModelSourceError(
                    f"model {m.display_name}: {m.model} does not exist (yet); a model of this run (run:...) "
                    "is written by its training stage: run that first (python -m jobs.train_sft ...), or "
                    "point the setting at another model"
                )


def engine_key(m: ModelConfig) -> str:
    """Models with the same engine settings share one engine pool, whatever role they play: sampling,
    batch size and display name are per call, not per engine."""
    per_call = {"sampling", "batch_size", "name", "max_retries", "start_timeout_s"}
    return json.dumps(m.model_dump(mode="json", exclude=per_call), sort_keys=True)
