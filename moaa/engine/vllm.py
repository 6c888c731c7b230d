"""The engine: a thin class around ``vllm.LLM`` used inside Ray actor pools (its settings are
``moaa.engine.settings``).

``ray.data.llm``'s vLLM processor has no CPU path and keeps only the first of ``n`` samples, so this is
our own: prompts are rendered with the model's chat template and tokenized here (so that their length
is known before anything is sent), over-long prompts are returned as errors instead of being sent, and
token counts come from vLLM's ``RequestOutput``s.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from moaa.core import storage
from moaa.engine.settings import Completion, ModelConfig, SamplingConfig, engine_key


def is_fatal(e: BaseException) -> bool:
    """Whether an engine error leaves the engine unable to answer any later request: vLLM's engine core
    is gone (``EngineDeadError``, the error ray.data.llm restarts its actors on) or the GPU context is
    broken (a CUDA or NCCL error: every later kernel fails too). Any other error belongs to the request."""
    try:
        from vllm.v1.engine.exceptions import EngineDeadError
    except ImportError:  # another vLLM layout: only the message tells
        EngineDeadError = ()  # type: ignore[assignment]  # noqa: N806
    if isinstance(e, EngineDeadError):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("CUDA error" in text or "NCCL error" in text)


def fold_system(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The conversation without system messages: their text opens the first user turn (Gemma-2's template
    raises "System role not supported"; Google's model card says to put instructions in the user turn).
    The same list when it has no system message."""
    system = [m["content"] for m in messages if m["role"] == "system"]
    if not system:
        return messages
    rest = [dict(m) for m in messages if m["role"] != "system"]
    first = next((m for m in rest if m["role"] == "user"), None)
    if first is None:
        return [{"role": "user", "content": "\n\n".join(system)}, *rest]
    first["content"] = "\n\n".join([*system, first["content"]])
    return rest


def render_ids(engine: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of a conversation under ``engine.tokenizer``'s chat template, ready for the answer. When the
    template rejects a conversation with a system message, the system text goes into the first user turn,
    for this call and every later one of the engine (``engine.fold_system``, said once)."""
    tok = engine.tokenizer
    if engine.fold_system:
        messages = fold_system(messages)
    try:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:
        folded = fold_system(messages)
        if folded is messages:
            raise
        text = tok.apply_chat_template(folded, tokenize=False, add_generation_prompt=True)
        engine.fold_system = True
        print(
            f"[engine] {engine.cfg.display_name}: its chat template rejects a system message; system text "
            "now opens the first user turn"
        )
    # The template already holds any BOS; adding special tokens again would double it.
    return tok(text, add_special_tokens=False)["input_ids"]


class VLLMEngine:
    """``vllm.LLM`` with chat rendering, length checks and per-row error isolation."""

    def __init__(self, cfg: ModelConfig, in_actor: bool = False):
        # in a Ray actor a fatal engine error ends the process (Ray restarts it); elsewhere it is raised
        self.in_actor = in_actor
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
        self.fold_system = False  # set by render_ids when the template rejects a system role
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len

    def render(self, messages: list[dict[str, str]]) -> list[int]:
        return render_ids(self, messages)

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
            if is_fatal(e):
                if not self.in_actor:
                    raise
                # The engine cannot answer again, and its rows are not at fault: end the actor, so that Ray
                # restarts it with a fresh engine and EngineStage sends the batch again. os._exit, as
                # ray.data.llm does: an exit the actor asks for itself would not be restarted.
                print(
                    f"[engine] {self.cfg.display_name}: fatal engine error, exiting so Ray restarts it: "
                    f"{type(e).__name__}: {e}"
                )
                sys.stdout.flush()
                os._exit(1)
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
        self.started: list[Any] = []

    def wait_ready(self) -> None:
        import ray

        calls = {a.ready.remote(): a for a in self.actors}
        done, pending = ray.wait(list(calls), num_returns=len(calls), timeout=self.cfg.start_timeout_s)
        self.started = [calls[r] for r in done]  # the ones shutdown asks to end their processes
        if pending:
            raise RuntimeError(
                f"engine for model {self.cfg.display_name!r} ({self.cfg.model}) did not start within "
                f"start_timeout_s {self.cfg.start_timeout_s:g} s. {_fit_note(self.cfg, ray.nodes())}"
            )
        try:
            ray.get(done)
        except Exception as e:
            raise RuntimeError(
                f"engine for model {self.cfg.display_name!r} ({self.cfg.model}) failed to start: {e}. "
                "Check the model path or hub id, max_model_len and the resources in its config."
            ) from None

    def shutdown(self, timeout_s: float = 60) -> None:
        """Stop the engines and return once their processes are gone, so that their GPU memory is free for
        the next stage's engines (vLLM refuses to start below its memory target). Each engine first ends
        its own child processes (vLLM's engine core and tensor-parallel workers: killing the actor kills
        only the actor), then the actor is killed and its process waited for (by pid on this node, through
        Ray elsewhere)."""
        import ray

        closing = [a.close.remote() for a in self.started]
        done = ray.wait(closing, num_returns=len(closing), timeout=timeout_s / 2)[0] if closing else []
        here = ray.get_runtime_context().get_node_id()
        pids = []
        for ref in done:
            try:
                info = ray.get(ref)
            except ray.exceptions.RayError:  # already dead, or never started
                continue
            if info["node"] == here:
                pids.append(info["pid"])
        for a in self.actors:
            ray.kill(a)
        deadline = time.time() + timeout_s / 2
        for a in self.actors:  # a killed actor answers with an error once Ray knows it is dead
            while time.time() < deadline:
                try:
                    ray.get(a.ready.remote(), timeout=max(0.1, deadline - time.time()))
                except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                    break
                time.sleep(0.1)
        _wait_gone(pids, deadline)


def _fit_note(cfg: ModelConfig, nodes: list[dict[str, Any]]) -> str:
    """What one engine of ``cfg`` needs on a single node, against the largest live nodes of the cluster."""
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive")]
    need = {"CPU": cfg.num_cpus, "GPU": cfg.num_gpus}
    most = {k: max((r.get(k, 0) for r in alive), default=0) for k in need}
    short = [k for k, v in need.items() if v > most[k]]
    have = ", ".join(f"{most[k]:g} {k}" for k in need)
    if short:
        return (
            f"One engine needs {need['CPU']:g} CPU and {need['GPU']:g} GPU on one node; no live node has "
            f"that many {' or '.join(short)} (the largest: {have}). On an autoscaling cluster a node group "
            "of that size must exist; otherwise lower num_cpus / num_gpus (and tensor_parallel_size)."
        )
    return (
        f"A node with room for it ({need['CPU']:g} CPU, {need['GPU']:g} GPU) exists (the largest: {have}): "
        "the weights may still be loading (raise start_timeout_s), or other work holds those resources."
    )


def start_pools(models: list[ModelConfig]) -> dict[str, EnginePool]:
    """One engine pool per distinct engine (``engine_key``), all started before any row is read, so that a
    model that cannot load fails the job at once and by name (and no engine is left starting)."""
    from moaa.embedded.models import ensure

    ensure([m.model for m in models])
    pools: dict[str, EnginePool] = {}
    for m in models:
        pools.setdefault(engine_key(m), EnginePool(m))
    try:
        for pool in pools.values():
            pool.wait_ready()
    except BaseException:
        stop_pools(pools)
        raise
    return pools


def stop_pools(pools: dict[str, EnginePool]) -> None:
    for pool in pools.values():
        pool.shutdown()


def _wait_gone(pids: list[int], deadline: float) -> None:
    """Until each process has exited (a zombie holds no memory: its parent reaps it) or the deadline."""
    import psutil

    for pid in pids:
        while time.time() < deadline:
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.05)


def end_children(timeout_s: float = 20) -> None:
    """End this process's descendants (terminate, then kill what is left) and wait for them."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for c in children:
        try:
            c.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(children, timeout=timeout_s)
    for c in alive:
        try:
            c.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout_s)


class _EngineActor:
    def __init__(self, cfg: ModelConfig):
        self.engine = VLLMEngine(cfg, in_actor=True)

    def ready(self) -> int:
        return self.engine.max_model_len

    def close(self) -> dict[str, Any]:
        """Before the actor is killed: end the engine's child processes; where and who this actor is."""
        import ray

        end_children()
        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id()}

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
