"""The engine: a model's config and a thin class around ``vllm.LLM`` used inside Ray Data actor pools.

``ray.data.llm``'s vLLM processor has no CPU path and keeps only the first of ``n`` samples, so this is
our own: prompts are rendered with the model's chat template and tokenized here (so that their length
is known before anything is sent), over-long prompts are returned as errors instead of being sent, and
token counts come from vLLM's ``RequestOutput``s.
"""

from __future__ import annotations

import json
import os
import random
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlparse

import numpy as np
from pydantic import BaseModel, Field, model_validator

from moaa import storage
from moaa.config import Config, ModelSource, UserError
from moaa.storage import is_uri


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
        if self.num_gpus == 0 and self.tensor_parallel_size > 1:
            raise ValueError("tensor_parallel_size > 1 needs GPUs: set num_gpus = tensor_parallel_size")
        return self

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


class VLLMEngine:
    """``vllm.LLM`` with chat rendering, length checks and per-row error isolation."""

    def __init__(self, cfg: ModelConfig):
        os.environ["VLLM_LOGGING_LEVEL"] = cfg.log_level
        if cfg.log_level == "ERROR":
            warnings.filterwarnings("ignore", category=FutureWarning)  # vLLM's own deprecation notices
        if cfg.kv_cache_space_gb is not None:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(int(cfg.kv_cache_space_gb))
        if cfg.num_gpus == 0:
            # Ray gives an actor with num_cpus < 2 OMP_NUM_THREADS=1, which halves a CPU engine's speed on a
            # 2-core machine (measured); the threads are set here, before torch is imported in this process.
            os.environ["OMP_NUM_THREADS"] = str(cfg.cpu_threads or os.cpu_count() or 1)
        # The engine already lives in its own Ray actor process: running vLLM's engine core in-process
        # saves a second process per engine (memory) and starts faster (measured 26 s vs 62 s on CPU).
        if cfg.tensor_parallel_size == 1:
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        self.cfg = cfg
        self.llm = LLM(
            # an s3:// or gs:// model is copied to this node first: vLLM loads local folders and hub ids
            model=storage.local_copy(cfg.model),
            tokenizer=storage.local_copy(cfg.tokenizer) if cfg.tokenizer else None,
            dtype=cfg.engine_dtype(),
            max_model_len=cfg.max_model_len,
            tensor_parallel_size=cfg.tensor_parallel_size,
            enforce_eager=cfg.enforce_eager,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            seed=cfg.seed,
            trust_remote_code=cfg.trust_remote_code,
            **cfg.engine_kwargs,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len

    def render(self, messages: list[dict[str, str]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # The template already holds any BOS; adding special tokens again would double it.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _params(
        self, prompt_len: int, sampling: SamplingConfig, n: int, structured: Any, logprobs: int | None
    ):
        from vllm import SamplingParams

        return SamplingParams(
            n=n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=min(sampling.max_tokens, self.max_model_len - prompt_len),
            repetition_penalty=sampling.repetition_penalty,
            seed=sampling.seed,
            structured_outputs=structured,
            logprobs=logprobs,
        )

    def chat(
        self,
        conversations: list[list[dict[str, str]]],
        sampling: SamplingConfig | list[SamplingConfig] | None = None,
        n: int = 1,
        structured: Any = None,
        logprobs: int | None = None,
    ) -> list[Completion]:
        """Answer every conversation; never raises for a bad row (the row's ``error`` says why).
        ``sampling``: one for all, or one per conversation; ``logprobs``: return the first token's top-k."""
        samplings = (
            sampling if isinstance(sampling, list) else [sampling or self.cfg.sampling] * len(conversations)
        )
        results = [Completion() for _ in conversations]
        todo: list[tuple[int, list[int]]] = []
        for i, conv in enumerate(conversations):
            try:
                ids = self.render(conv)
            except Exception as e:  # a template that rejects this conversation
                results[i].error = f"chat template failed: {type(e).__name__}: {e}"
                continue
            results[i].prompt_tokens = len(ids)
            if len(ids) >= self.max_model_len:
                results[i].error = (
                    f"prompt too long: {len(ids)} tokens, engine context is {self.max_model_len}; "
                    "raise max_model_len or shorten the prompt"
                )
                continue
            todo.append((i, ids))
        if todo:
            self._generate(todo, results, samplings, n, structured, logprobs)
        return results

    def _generate(self, todo, results, samplings, n, structured, logprobs) -> None:
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=ids) for _, ids in todo]
        try:
            params = [self._params(len(ids), samplings[i], n, structured, logprobs) for i, ids in todo]
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
        except Exception as e:
            if len(todo) == 1:
                results[todo[0][0]].error = f"engine error: {type(e).__name__}: {e}"
                return
            # Isolate the failing row(s): one bad request must not fail the batch.
            for item in todo:
                self._generate([item], results, samplings, n, structured, logprobs)
            return
        for (i, _), out in zip(todo, outputs):
            r = results[i]
            r.texts = [o.text for o in out.outputs]
            r.completion_tokens = [len(o.token_ids) for o in out.outputs]
            r.finish_reasons = [str(o.finish_reason) for o in out.outputs]
            first = out.outputs[0].logprobs if logprobs else None
            if first:
                r.first_logprobs = {lp.decoded_token: lp.logprob for lp in first[0].values()}


class EnginePool:
    """A model's engines: ``replicas`` Ray actors, each holding one ``VLLMEngine``, started once per job.

    Ray Data stages call into them instead of owning the engine themselves because one engine serves
    many stages: every turn of a multi-turn chat (turn t needs turn t-1's aggregated answer, so turns are
    successive passes) and every MoA layer that uses the same model. An engine that lived inside a
    ``map_batches`` actor would be reloaded for each of them.
    """

    def __init__(self, cfg: ModelConfig):
        import ray

        # Ray restarts a lost engine (bounded); the batch it was working on is sent again by EngineStage.
        actor_cls = ray.remote(
            num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, max_restarts=max(1, cfg.max_retries)
        )(_EngineActor)
        self.cfg = cfg
        self.actors = [actor_cls.remote(cfg) for _ in range(cfg.replicas)]

    def wait_ready(self) -> None:
        import ray

        try:
            ray.get([a.ready.remote() for a in self.actors])
        except Exception as e:
            raise RuntimeError(
                f"engine for model {self.cfg.display_name!r} ({self.cfg.model}) failed to start: {e}. "
                "Check the model path or hub id, max_model_len and the resources in its config."
            ) from None

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)


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
    from moaa.models import is_embedded

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
    per_call = {"sampling", "batch_size", "name", "max_retries"}
    return json.dumps(m.model_dump(mode="json", exclude=per_call), sort_keys=True)


def start_pools(models: list[ModelConfig]) -> dict[str, EnginePool]:
    """One engine pool per distinct engine (``engine_key``), all started before any row is read, so that a
    model that cannot load fails the job at once and by name."""
    from moaa.models import ensure

    ensure([m.model for m in models])
    pools: dict[str, EnginePool] = {}
    for m in models:
        pools.setdefault(engine_key(m), EnginePool(m))
    for pool in pools.values():
        pool.wait_ready()
    return pools


def stop_pools(pools: dict[str, EnginePool]) -> None:
    for pool in pools.values():
        pool.shutdown()


class _EngineActor:
    def __init__(self, cfg: ModelConfig):
        self.engine = VLLMEngine(cfg)

    def ready(self) -> int:
        return self.engine.max_model_len

    def chat(self, conversations, sampling=None, n=1, structured=None, logprobs=None) -> list[Completion]:
        if structured is not None:
            from vllm.sampling_params import StructuredOutputsParams

            structured = StructuredOutputsParams(**structured)
        return self.engine.chat(
            conversations, sampling=sampling, n=n, structured=structured, logprobs=logprobs
        )


class EngineLostError(RuntimeError):
    """Engines died mid-request more often than ``max_retries`` allows."""


class EngineStage:
    """A Ray Data ``map_batches`` callable class that feeds one engine pool: rows carry a JSON ``state``
    column; ``build(state)`` gives the conversation to send (None passes the row through untouched), an
    engine of the pool answers the whole batch in one vLLM call, and
    ``apply(state, completion, conversation)`` writes each answer back. With ``multi=True`` ``build``
    returns a list of conversations for the row (e.g. every candidate pair a judge compares; empty: nothing
    to send) and ``apply(state, completions, conversations)`` gets them all back in order: all rows' lists
    go to the engine in the same single call, so one prompt's conversations share a batch (and a prefix
    cache). ``sampling`` overrides the pool model's own (one engine serves calls of different lengths);
    ``sampling_of(state)`` gives each row its own (e.g. MT-Bench's per-category temperatures); ``logprobs``
    asks for the first token's top-k log-probabilities (``Completion.first_logprobs``).

    A (light) actor class rather than a function because Ray Data fuses consecutive task stages into
    one task, which would run proposer after proposer on the same batch and leave engines idle; stages
    with their own actor pools stay separate and run concurrently on different batches. Keeping the
    row state as one JSON string gives every block of every stage one Arrow schema."""

    def __init__(
        self,
        actors: list[Any],
        build: Callable[[dict], list[dict[str, str]] | None],
        apply: Callable[[dict, Completion, list[dict[str, str]]], None],
        n: int = 1,
        structured: dict[str, Any] | None = None,
        multi: bool = False,
        sampling: SamplingConfig | None = None,
        max_retries: int = 3,
        sampling_of: Callable[[dict], SamplingConfig] | None = None,
        logprobs: int | None = None,
    ):
        self.actors, self.build, self.apply, self.n, self.structured = actors, build, apply, n, structured
        self.multi, self.sampling, self.max_retries = multi, sampling, max_retries
        self.sampling_of, self.logprobs = sampling_of, logprobs
        self.next = random.randrange(len(actors))

    def _chat(self, convs: list, sampling: Any) -> tuple[list[Completion], int]:
        """One engine call; when the engine dies mid-request (its node lost, the process killed) the same
        request goes again, to the restarted engine or another replica, up to ``max_retries`` times."""
        import ray

        retries = 0
        while True:
            actor = self.actors[self.next % len(self.actors)]
            self.next += 1
            try:
                call = actor.chat.remote(
                    convs, sampling=sampling, n=self.n, structured=self.structured, logprobs=self.logprobs
                )
                return ray.get(call), retries
            except ray.exceptions.RayActorError as e:
                retries += 1
                if retries > self.max_retries:
                    raise EngineLostError(
                        f"an engine died mid-request {retries} times (max_retries {self.max_retries}): {e}"
                    ) from None
                print(
                    f"[engine] an engine died mid-request; sending the batch again "
                    f"({retries}/{self.max_retries})"
                )
                self._wait_for_an_engine()

    def _wait_for_an_engine(self, timeout_s: float = 900) -> None:
        """Until one engine answers: a killed one is restarted by Ray (and reloads its weights)."""
        import ray

        deadline = time.time() + timeout_s
        while time.time() < deadline:
            for i in range(len(self.actors)):
                actor = self.actors[(self.next + i) % len(self.actors)]
                try:
                    ray.get(actor.ready.remote(), timeout=max(1.0, min(30.0, deadline - time.time())))
                    self.next = (self.next + i) % len(self.actors)
                    return
                except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                    continue
            time.sleep(1)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        states = [json.loads(s) for s in batch["state"]]
        todo = [(s, conv) for s in states if (conv := self.build(s)) is not None]
        if self.multi:
            todo = [(s, convs) for s, convs in todo if convs]
        if todo:
            convs = [c for _, row in todo for c in (row if self.multi else [row])]
            sampling: Any = self.sampling
            if self.sampling_of is not None:
                sampling = [self.sampling_of(s) for s, row in todo for _ in (row if self.multi else [row])]
            completions, retries = self._chat(convs, sampling)
            if retries:  # counted once per batch: the number of times a request was sent again
                todo[0][0]["engine_retries"] = todo[0][0].get("engine_retries", 0) + retries
            start = 0
            for state, row in todo:
                if self.multi:
                    self.apply(state, completions[start : start + len(row)], row)
                    start += len(row)
                else:
                    self.apply(state, completions[start], row)
                    start += 1
        states_json = [json.dumps(s, ensure_ascii=False) for s in states]
        return {"shard": batch["shard"], "state": np.array(states_json, dtype=object)}
