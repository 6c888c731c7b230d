"""MoA-SFT generation: proposers -> (more layers) -> aggregator, turn by turn, as one Ray Data pipeline
per turn.

Input: the ``prompts`` shards written by ``jobs.prepare`` (``prompt_id, source, messages, n_turns``).
Output: ``<out>/data/<shard>.parquet`` in schema ``sft`` (one file per input shard), ``manifest.json``
(the shards that finished) and ``summary.json`` (rows, errors, tokens per model and stage, tokens/s, $).

How it runs:
- every (layer, model) is one ``map_batches`` stage with its own vLLM actor pool (resources, replicas,
  sampling from its ``ModelConfig``), so the layers run pipelined on different batches;
- turn t of every multi-turn chat needs turn t-1's *aggregated* answer, so turns are passes: pass t
  reads the state that pass t-1 left (``<out>/work/turn-<t>/``) for the shards that still have turns;
  single-turn shards finish in pass 1;
- results stream back to the driver, which commits a shard (one atomic Parquet write, then the manifest)
  once all of its rows are in. A rerun skips committed shards and resumes the others from the last
  finished turn, so a killed run ends with the same rows, none twice and none lost.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import time
from collections import defaultdict
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from moaa import __version__, moa, prompts, runs, schemas, storage
from moaa.config import Config, InputPath, OutputPath
from moaa.engine import EnginePool, EngineStage, ModelConfig, SamplingConfig

STAGE = "generate_sft"
AGGREGATOR = "aggregator"  # key of the aggregator's pool (proposer pools are keyed by display name)
# Light tasks (reading, state conversion) take little CPU so that engine actors with fractional CPUs
# never starve them on a small machine.
LIGHT_CPUS = 0.1


def _tiny(name: str) -> ModelConfig:
    return ModelConfig(
        model=f"models/tiny/{name}",
        dtype="float32",
        enforce_eager=True,
        max_model_len=2048,
        kv_cache_space_gb=1,
        num_cpus=0.5,
        batch_size=16,
        sampling=SamplingConfig(temperature=0.7, max_tokens=64),
    )


class Price(Config):
    prompt_usd_per_mtok: float = Field(0.0, description="USD per million prompt tokens.")
    completion_usd_per_mtok: float = Field(0.0, description="USD per million completion tokens.")


class GenerateSFTConfig(Config):
    """MoA-SFT generation. Defaults are the embedded tiny CPU setup (see configs/generate_sft/)."""

    run_id: str = Field("demo", description="Run name: outputs go to <runs_dir>/<run_id>/generate_sft/.")
    runs_dir: OutputPath = Field("runs", description="Folder or URI (s3://, gs://) holding run folders.")
    input_dir: InputPath | None = Field(
        None, description="Prompts shards; default <runs_dir>/<run_id>/prepare/prompts."
    )
    output_dir: OutputPath | None = Field(
        None, description="Output folder; default <runs_dir>/<run_id>/generate_sft."
    )
    proposers: list[ModelConfig] = Field(
        default_factory=lambda: [_tiny("tiny-qwen2-a"), _tiny("tiny-llama-b")],
        description="Proposer models; every proposer layer uses all of them.",
    )
    aggregator: ModelConfig = Field(
        default_factory=lambda: _tiny("tiny-qwen2-c"), description="Aggregator model (the last layer)."
    )
    layers: int = Field(2, description="MoA layers including the aggregator: 2 = proposers -> aggregator.")
    prices: dict[str, Price] = Field(
        default_factory=dict, description="Optional USD prices per model display name, for the cost estimate."
    )
    keep_prompts: bool = Field(
        False, description="Store the exact messages sent with every proposal (audits; much larger output)."
    )
    ray_address: str | None = Field(
        None, description="Ray cluster address; null: RAY_ADDRESS or a local Ray."
    )

    @field_validator("layers")
    @classmethod
    def _at_least_two(cls, v: int) -> int:
        if v < 2:
            raise ValueError("layers must be >= 2 (proposers, then the aggregator)")
        return v

    @field_validator("proposers")
    @classmethod
    def _distinct_names(cls, v: list[ModelConfig]) -> list[ModelConfig]:
        names = [m.display_name for m in v]
        if not v or len(set(names)) != len(names):
            raise ValueError(
                f"need at least one proposer, with distinct names (got {names}); set 'name' to tell apart"
            )
        return v

    def out_dir(self) -> str:
        return self.output_dir or runs.stage_dir(self.runs_dir, self.run_id, STAGE)

    def in_dir(self) -> str:
        return self.input_dir or storage.join(
            runs.stage_dir(self.runs_dir, self.run_id, "prepare"), "prompts"
        )

    def fingerprint(self) -> str:
        """Hash of what decides the rows' content (models, sampling, layers, prompt, input), not of
        resources or batch sizes: a rerun on a bigger cluster still resumes."""
        data = {
            "proposers": [m.output_settings() for m in self.proposers],
            "aggregator": self.aggregator.output_settings(),
            "layers": self.layers,
            "keep_prompts": self.keep_prompts,
            "prompt": hashlib.sha256(prompts.AGGREGATE_AND_SYNTHESIZE.encode()).hexdigest(),
            "input": self.in_dir(),
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- pipeline


def _load_shards(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Read the files named in ``path`` into ``shard``/``state`` columns: prompts files (turn 1) become
    fresh states, state files of an earlier turn are passed on as they are."""
    shards, states = [], []
    for path, turn in zip(batch["path"], batch["turn"]):
        shard = posixpath.basename(path)
        table = storage.read_parquet(path)
        if turn == 1:
            rows = table.to_pylist()
            states += [json.dumps(moa.init_state(r, shard), ensure_ascii=False) for r in rows]
        else:
            states += table.column("state").to_pylist()
        shards += [shard] * table.num_rows
    return {"shard": np.array(shards, dtype=object), "state": np.array(states, dtype=object)}


def _stage(ds, pool: EnginePool, *, turn: int, layer: int, final: bool, keep_prompts: bool):
    import ray.data

    name = pool.cfg.display_name
    return ds.map_batches(
        EngineStage,
        fn_constructor_kwargs={
            "actors": pool.actors,
            "build": partial(moa.build_messages, turn=turn, layer=layer, model=name),
            "apply": partial(
                moa.apply_completion,
                turn=turn,
                layer=layer,
                model=name,
                final=final,
                keep_prompt=keep_prompts,
            ),
        },
        batch_size=pool.cfg.batch_size,
        # Up to two callers per engine: one batch generating, one queued, so an engine never waits.
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=2 * pool.cfg.replicas),
        num_cpus=LIGHT_CPUS,
    )


def build_turn_pipeline(ds, cfg: GenerateSFTConfig, pools: dict[str, EnginePool], turn: int):
    """One turn of MoA over a dataset of states: every proposer of every proposer layer, then the
    aggregator."""
    for layer in range(1, cfg.layers):
        for model in cfg.proposers:
            ds = _stage(
                ds,
                pools[model.display_name],
                turn=turn,
                layer=layer,
                final=False,
                keep_prompts=cfg.keep_prompts,
            )
    return _stage(
        ds, pools[AGGREGATOR], turn=turn, layer=cfg.layers, final=True, keep_prompts=cfg.keep_prompts
    )


def start_pools(cfg: GenerateSFTConfig) -> dict[str, EnginePool]:
    """One engine pool per proposer and one for the aggregator, all started before any row is read, so
    that a model that cannot load fails the job at once and by name."""
    pools = {m.display_name: EnginePool(m) for m in cfg.proposers}
    pools[AGGREGATOR] = EnginePool(cfg.aggregator)
    for pool in pools.values():
        pool.wait_ready()
    return pools


def _read(paths: list[str], turn: int):
    # One light task per file rather than ray.data.read_parquet: its file-listing task asks for a whole
    # CPU, which engine actors holding fractional CPUs can starve forever on a small machine.
    import ray.data

    items = [{"path": p, "turn": turn} for p in paths]
    return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _load_shards, batch_size=1, num_cpus=LIGHT_CPUS
    )


# ------------------------------------------------------------------------------------------------ driver


class ShardCommitter:
    """Collects streamed rows per shard and commits a shard when all its rows are in."""

    def __init__(
        self,
        cfg: GenerateSFTConfig,
        manifest: dict[str, Any],
        expected: dict[str, int],
        last_turn: dict[str, int],
        cfg_hash: str,
    ):
        self.cfg, self.manifest, self.expected, self.last_turn = cfg, manifest, expected, last_turn
        self.out = cfg.out_dir()
        self.provenance = {
            "aggregator_model": cfg.aggregator.display_name,
            "run_id": cfg.run_id,
            "config_hash": cfg_hash,
            "moaa_version": __version__,
        }
        self.buffers: dict[str, list[str]] = defaultdict(list)
        self.committed: list[str] = []

    def add(self, shards: list[str], states: list[str], turn: int) -> None:
        for shard, state in zip(shards, states):
            self.buffers[shard].append(state)
            if len(self.buffers[shard]) == self.expected[shard]:
                self._commit(shard, self.buffers.pop(shard), turn)

    def _commit(self, shard: str, states: list[str], turn: int) -> None:
        if turn < self.last_turn[shard]:
            table = pa.table({"shard": [shard] * len(states), "state": states})
            storage.write_parquet(table, _work(self.out, turn, shard))
            return
        rows = [moa.to_sft_row(json.loads(s), **self.provenance) for s in states]
        rows.sort(key=lambda r: r["prompt_id"])
        table = schemas.to_table(rows, "sft")
        storage.write_parquet(table, storage.join(self.out, "data", shard))
        self.manifest["shards"][shard] = shard_stats(rows)
        runs.save_manifest(self.out, self.manifest)
        self.committed.append(shard)

    def check_drained(self, turn: int) -> None:
        if self.buffers:
            missing = {s: self.expected[s] - len(b) for s, b in self.buffers.items()}
            raise RuntimeError(f"turn {turn}: rows missing from the pipeline output for shards {missing}")


def shard_stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    tokens: dict[str, dict[str, int]] = defaultdict(
        lambda: {"prompt_tokens": 0, "completion_tokens": 0, "calls": 0}
    )
    for row in rows:
        last_layer = max((p["layer"] for p in row["proposals"]), default=0)
        for p in row["proposals"]:
            role = (
                "aggregate"
                if p["layer"] == last_layer and p["model"] == row["aggregator_model"]
                else "propose"
            )
            t = tokens[f"{role}/{p['model']}"]
            t["prompt_tokens"] += p["prompt_tokens"]
            t["completion_tokens"] += p["completion_tokens"]
            t["calls"] += 1
    return {"rows": len(rows), "errors": sum(r["error"] is not None for r in rows), "tokens": dict(tokens)}


def _init_ray(address: str | None) -> None:
    import ray

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=True)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = False


def plan(
    cfg: GenerateSFTConfig, manifest: dict[str, Any]
) -> tuple[list[str], dict[str, int], dict[str, int]]:
    """Input shards still to do, their row counts and number of turns."""
    in_dir = cfg.in_dir()
    if cfg.input_dir is None:  # the default chains on this run's prepare stage: it must have finished
        runs.require_complete(posixpath.dirname(in_dir.rstrip("/")), "prepare")
    inputs = storage.list_files(in_dir, ".parquet")
    if not inputs:
        raise runs.MissingInputError(
            f"no .parquet prompt shards in {in_dir}: run `python -m jobs.prepare` first"
        )
    out = cfg.out_dir()
    pending = [
        p
        for p in inputs
        if not (
            posixpath.basename(p) in manifest["shards"]
            and storage.exists(storage.join(out, "data", posixpath.basename(p)))
        )
    ]
    expected, last_turn = {}, {}
    for p in pending:
        schemas.validate(storage.read_schema(p), "prompts", where=p)
        n_turns = storage.read_parquet(p, columns=["n_turns"]).column("n_turns").to_pylist()
        name = posixpath.basename(p)
        expected[name] = len(n_turns)
        last_turn[name] = max(n_turns, default=1)
    return pending, expected, last_turn


def run(cfg: GenerateSFTConfig) -> dict[str, Any]:
    """Generate MoA-SFT data for every prompts shard not yet done; returns the run summary."""
    from moaa.tiny import ensure_tiny_models

    t0 = time.time()
    out = cfg.out_dir()
    cfg_hash = cfg.fingerprint()
    # Inputs are checked before the output folder is touched: a job that cannot start leaves nothing.
    pending, expected, last_turn = plan(cfg, runs.load_manifest(out) or {"shards": {}})
    manifest = runs.start_manifest(out, STAGE, cfg.run_id, cfg_hash, cfg.model_dump(mode="json"))
    committed: list[str] = []
    if pending:
        ensure_tiny_models([m.model for m in [*cfg.proposers, cfg.aggregator]])
        _init_ray(cfg.ray_address)
        committer = ShardCommitter(cfg, manifest, expected, last_turn, cfg_hash)
        pools = start_pools(cfg)
        try:
            for turn in range(1, max(last_turn.values()) + 1):
                names = [
                    posixpath.basename(p)
                    for p in pending
                    if last_turn[posixpath.basename(p)] >= turn and not storage.exists(_work(out, turn, p))
                ]
                if not names:
                    continue
                sources = [
                    storage.join(cfg.in_dir(), n) if turn == 1 else _work(out, turn - 1, n) for n in names
                ]
                ds = build_turn_pipeline(_read(sources, turn), cfg, pools, turn)
                for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                    committer.add(list(batch["shard"]), list(batch["state"]), turn)
                committer.check_drained(turn)
        finally:
            for pool in pools.values():
                pool.shutdown()
        committed = committer.committed
    summary = summarize(cfg, manifest, wall=time.time() - t0, committed=committed)
    storage.write_json(storage.join(out, runs.SUMMARY), summary)
    storage.remove(storage.join(out, "work"))
    runs.finish_manifest(out, manifest, data=storage.join(out, "data"), rows=summary["rows"])
    return summary


def _work(out: str, turn: int, shard: str) -> str:
    """Where the state of ``shard`` after ``turn`` is kept until its last turn is done."""
    return storage.join(out, "work", f"turn-{turn}", posixpath.basename(shard))


def summarize(
    cfg: GenerateSFTConfig, manifest: dict[str, Any], wall: float, committed: list[str]
) -> dict[str, Any]:
    """Totals over every committed shard; throughput over the shards this invocation generated."""
    total: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for stats in manifest["shards"].values():
        for key, t in stats["tokens"].items():
            for k, v in t.items():
                total[key][k] += v
    for key, t in total.items():
        price = cfg.prices.get(key.split("/", 1)[1])
        t["usd"] = (
            (
                t["prompt_tokens"] * price.prompt_usd_per_mtok
                + t["completion_tokens"] * price.completion_usd_per_mtok
            )
            / 1e6
            if price
            else 0.0
        )
    completion = sum(t["completion_tokens"] for t in total.values())
    new_completion = sum(
        t["completion_tokens"] for name in committed for t in manifest["shards"][name]["tokens"].values()
    )
    return {
        "stage": STAGE,
        "run_id": cfg.run_id,
        "output": storage.join(cfg.out_dir(), "data"),
        "shards": len(manifest["shards"]),
        "shards_this_run": len(committed),
        "shards_skipped": len(manifest["shards"]) - len(committed),
        "rows": sum(s["rows"] for s in manifest["shards"].values()),
        "errors": sum(s["errors"] for s in manifest["shards"].values()),
        "tokens": {
            k: {kk: (int(vv) if kk != "usd" else vv) for kk, vv in v.items()}
            for k, v in sorted(total.items())
        },
        "prompt_tokens": int(sum(t["prompt_tokens"] for t in total.values())),
        "completion_tokens": int(completion),
        "usd": sum(t["usd"] for t in total.values()),
        "wall_s": round(wall, 2),
        "completion_tokens_per_s": round(new_completion / wall, 1) if committed else None,
        "config_hash": manifest["config_hash"],
        "moaa_version": __version__,
    }


def one_line(summary: dict[str, Any]) -> str:
    tps = summary["completion_tokens_per_s"]
    return (
        f"{STAGE}: {summary['rows']} rows ({summary['errors']} errors) in {summary['shards']} shards "
        f"({summary['shards_skipped']} already done), {summary['completion_tokens']} completion tokens"
        + (f", {tps} tok/s" if tps else "")
        + f", {summary['wall_s']} s, ${summary['usd']:.2f} -> {summary['output']}"
    )
