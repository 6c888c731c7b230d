"""MoAA-DPO preference data: the policy (SFT model) samples n answers per prompt, judges compare every
ordered pair, the best and worst answers become a DPO pair. One Ray Data pipeline over the prompts shards.

Input: the ``prompts`` shards written by ``jobs.prepare`` (single-turn rows; multi-turn rows are skipped and
counted). Output: ``<out>/data/<shard>.parquet`` in schema ``preference`` (one file per input shard, every
prompt kept: rows without a pair carry the reason in ``error``), ``manifest.json`` and ``summary.json``.

Stages (each a ``map_batches`` over ``EngineStage`` with its own caller pool, engines shared by key):

    policy (n samples, one request)  ->  criteria, per judge (choice of k criteria)
      ->  pairs, per judge (all n(n-1) ordered pairs of a row in the same engine call; regex-constrained
          "Evaluation: ...\\nVerdict: A|B|tie")  ->  aggregate (mode moa: choice A|B|tie per ordered pair)

Judge modes share this module: ``moa`` (default), ``jury`` (no aggregator; judges vote) and ``single``
(the first judge alone). ``jobs.judge_eval`` runs the same judge stages on labeled pairs.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import time
from collections import defaultdict
from functools import partial
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from moaa import __version__, judge, prompts, runs, schemas, storage
from moaa.config import Config, InputPath, OutputPath
from moaa.engine import EnginePool, EngineStage, ModelConfig, SamplingConfig
from moaa.generate import LIGHT_CPUS, Price, _init_ray

STAGE = "generate_dpo"


def tiny_model(name: str, temperature: float = 0.7, max_tokens: int = 32) -> ModelConfig:
    # One context length for every tiny engine: the policy and the aggregator judge are the same model
    # and then share one engine (pools are keyed by engine settings, not by role).
    return ModelConfig(
        model=f"models/tiny/{name}",
        dtype="float32",
        enforce_eager=True,
        max_model_len=4096,
        kv_cache_space_gb=1,
        num_cpus=0.4,
        batch_size=8,
        sampling=SamplingConfig(temperature=temperature, max_tokens=max_tokens),
    )


class JudgeConfig(Config):
    """Who judges and how. Defaults: the embedded tiny CPU setup, MoA mode."""

    mode: Literal["moa", "jury", "single"] = Field(
        "moa",
        description="moa: judges + aggregator judge; jury: judges vote (PoLL); single: judges[0] alone.",
    )
    judges: list[ModelConfig] = Field(
        default_factory=lambda: [tiny_model("tiny-llama-b", 1.0), tiny_model("tiny-qwen2-c", 1.0)],
        description="Judge models (their sampling's temperature/top_p/seed are used; max_tokens is set "
        "from max_evaluation_chars).",
    )
    aggregator: ModelConfig | None = Field(
        default_factory=lambda: tiny_model("tiny-qwen2-a", 1.0),
        description="Aggregator judge (mode moa): reads the judges' evaluations, gives the final verdict.",
    )
    criteria: list[str] = Field(
        default_factory=lambda: list(prompts.JUDGE_CRITERIA), description="The fixed list of criteria."
    )
    n_criteria: int = Field(3, description="Criteria each judge picks per prompt (constrained choice).")
    vote: Literal["majority", "mean"] = Field(
        "majority", description="Jury pooling: majority verdict (no majority = tie) or mean value."
    )
    max_evaluation_chars: int = Field(
        96, description="Longest evaluation line a judge may write before its verdict (regex bound)."
    )

    @model_validator(mode="after")
    def _check(self) -> JudgeConfig:
        names = [m.display_name for m in self.judges]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"need at least one judge, with distinct names (got {names}); set 'name'")
        if self.mode == "moa" and self.aggregator is None:
            raise ValueError("mode moa needs an aggregator judge (or use mode jury or single)")
        if not 1 <= self.n_criteria <= len(self.criteria):
            raise ValueError(f"n_criteria must be between 1 and {len(self.criteria)}")
        return self

    def active_judges(self) -> list[ModelConfig]:
        return self.judges[:1] if self.mode == "single" else self.judges

    def judge_names(self) -> list[str]:
        return [m.display_name for m in self.active_judges()]

    def models(self) -> list[ModelConfig]:
        """Every model this mode calls."""
        return self.active_judges() + ([self.aggregator] if self.mode == "moa" and self.aggregator else [])

    def fingerprint_data(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "judges": [m.output_settings() for m in self.active_judges()],
            "aggregator": self.aggregator.output_settings()
            if self.mode == "moa" and self.aggregator
            else None,
            "criteria": self.criteria,
            "n_criteria": self.n_criteria,
            "vote": self.vote if self.mode == "jury" else None,
            "max_evaluation_chars": self.max_evaluation_chars,
            "prompts": hashlib.sha256(
                (
                    prompts.SELECT_CRITERIA
                    + prompts.JUDGE_SYSTEM
                    + prompts.JUDGE_PAIR
                    + prompts.AGGREGATE_JUDGMENTS
                    + prompts.AGGREGATE_JUDGMENTS_USER
                ).encode()
            ).hexdigest(),
        }


class GenerateDPOConfig(Config):
    """MoAA-DPO preference generation. Defaults are the embedded tiny CPU setup (configs/generate_dpo/)."""

    run_id: str = Field("demo", description="Run name: outputs go to <runs_dir>/<run_id>/generate_dpo/.")
    runs_dir: OutputPath = Field("runs", description="Folder or URI (s3://, gs://) holding run folders.")
    input_dir: InputPath | None = Field(
        None, description="Prompts shards; default <runs_dir>/<run_id>/prepare/prompts."
    )
    output_dir: OutputPath | None = Field(
        None, description="Output folder; default <runs_dir>/<run_id>/generate_dpo."
    )
    limit: int | None = Field(None, description="Use only the first N single-turn prompts (shard order).")
    policy: ModelConfig = Field(
        default_factory=lambda: tiny_model("tiny-qwen2-a"),
        description="The model that samples the candidates (the paper: the MoAA-SFT model).",
    )
    n: int = Field(5, description="Candidates sampled per prompt, in one request (MoAA: 5).")
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="The judge (mode, models, criteria).")
    prices: dict[str, Price] = Field(
        default_factory=dict, description="Optional USD prices per model display name, for the cost estimate."
    )
    ray_address: str | None = Field(
        None, description="Ray cluster address; null: RAY_ADDRESS or a local Ray."
    )

    @model_validator(mode="after")
    def _check(self) -> GenerateDPOConfig:
        if self.n < 2:
            raise ValueError("n must be >= 2: a pair needs two candidates")
        return self

    def out_dir(self) -> str:
        return self.output_dir or runs.stage_dir(self.runs_dir, self.run_id, STAGE)

    def in_dir(self) -> str:
        return self.input_dir or storage.join(
            runs.stage_dir(self.runs_dir, self.run_id, "prepare"), "prompts"
        )

    def fingerprint(self) -> str:
        """Hash of what decides the rows (models, sampling, n, judge, prompts, input, limit), not of
        resources or batch sizes: a rerun on a bigger cluster still resumes."""
        data = {
            "policy": self.policy.output_settings(),
            "n": self.n,
            "judge": self.judge.fingerprint_data(),
            "input": self.in_dir(),
            "limit": self.limit,
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- pipeline


def engine_key(m: ModelConfig) -> str:
    """Models with the same engine settings share one engine pool, whatever role they play: sampling,
    batch size and display name are per call, not per engine."""
    return json.dumps(m.model_dump(mode="json", exclude={"sampling", "batch_size", "name"}), sort_keys=True)


def start_pools(models: list[ModelConfig]) -> dict[str, EnginePool]:
    """One engine pool per distinct engine, all started before any row is read, so that a model that
    cannot load fails the job at once and by name."""
    from moaa.tiny import ensure_tiny_models

    ensure_tiny_models([m.model for m in models])
    pools: dict[str, EnginePool] = {}
    for m in models:
        pools.setdefault(engine_key(m), EnginePool(m))
    for pool in pools.values():
        pool.wait_ready()
    return pools


def _stage(ds, pools: dict[str, EnginePool], m: ModelConfig, build, apply, **stage_kwargs: Any):
    import ray.data

    pool = pools[engine_key(m)]
    return ds.map_batches(
        EngineStage,
        fn_constructor_kwargs={"actors": pool.actors, "build": build, "apply": apply, **stage_kwargs},
        batch_size=m.batch_size,
        # Up to two callers per engine: one batch generating, one queued, so an engine never waits.
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=2 * pool.cfg.replicas),
        num_cpus=LIGHT_CPUS,
    )


def _sampling(m: ModelConfig, max_tokens: int) -> SamplingConfig:
    return m.sampling.model_copy(update={"max_tokens": max_tokens})


def build_policy_stage(ds, policy: ModelConfig, n: int, pools: dict[str, EnginePool]):
    name = policy.display_name
    return _stage(
        ds,
        pools,
        policy,
        judge.build_policy,
        partial(judge.apply_policy, model=name),
        n=n,
        sampling=policy.sampling,
    )


def build_judge_pipeline(ds, jc: JudgeConfig, pools: dict[str, EnginePool]):
    """The judge stages of ``jc.mode`` over a dataset of states that hold their candidates."""
    choices = judge.criteria_choices(jc.criteria, jc.n_criteria)
    choice_tokens = 4 * max(len(c) for c in choices) + 8
    for m in jc.active_judges():
        kw = {"judge": m.display_name, "criteria": jc.criteria, "k": jc.n_criteria}
        ds = _stage(
            ds,
            pools,
            m,
            partial(judge.build_criteria, **kw),
            partial(judge.apply_criteria, **kw),
            structured={"choice": choices},
            sampling=_sampling(m, choice_tokens),
        )
    for m in jc.active_judges():
        ds = _stage(
            ds,
            pools,
            m,
            partial(judge.build_pairs, judge=m.display_name),
            partial(judge.apply_pairs, judge=m.display_name),
            multi=True,
            structured={"regex": judge.pair_regex(jc.max_evaluation_chars)},
            sampling=_sampling(m, judge.pair_max_tokens(jc.max_evaluation_chars)),
        )
    if jc.mode == "moa":
        agg = jc.aggregator
        assert agg is not None
        ds = _stage(
            ds,
            pools,
            agg,
            partial(judge.build_aggregate, aggregator=agg.display_name, judges=jc.judge_names()),
            partial(judge.apply_aggregate, aggregator=agg.display_name),
            multi=True,
            structured={"choice": list(judge.VERDICTS)},
            sampling=_sampling(agg, 8),
        )
    return ds


def _load_prompts(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Read the prompts files named in ``path`` into ``shard``/``state`` columns: single-turn rows only,
    the first ``limit`` of them (the plan's per-shard share of the global limit)."""
    shards, states = [], []
    for path, limit in zip(batch["path"], batch["limit"]):
        shard = posixpath.basename(path)
        rows = [r for r in storage.read_parquet(path).to_pylist() if r["n_turns"] == 1][: int(limit)]
        states += [json.dumps(judge.init_state(r, shard), ensure_ascii=False) for r in rows]
        shards += [shard] * len(rows)
    return {"shard": np.array(shards, dtype=object), "state": np.array(states, dtype=object)}


def _read(items: list[dict[str, Any]]):
    # One light task per file rather than ray.data.read_parquet (see moaa.generate._read).
    import ray.data

    return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _load_prompts, batch_size=1, num_cpus=LIGHT_CPUS
    )


# ------------------------------------------------------------------------------------------------ driver


def decisive_judgments(row: dict[str, Any], judges: list[str]) -> list[dict[str, Any]]:
    """The judgments whose verdicts decide in the row's mode (the aggregator's; the judges' votes; the
    single judge's): the ones whose parse rate must be 100%."""
    mode = row["judge_mode"]
    if mode == "moa":
        return [j for j in row["judgments"] if j["role"] == "aggregator"]
    if mode == "single":
        return [j for j in row["judgments"] if j["role"] == "judge" and j["judge"] == judges[0]]
    return [j for j in row["judgments"] if j["role"] == "judge"]


def shard_stats(rows: list[dict[str, Any]], judges: list[str]) -> dict[str, Any]:
    """Per-shard accounting kept in the manifest, so that the summary covers resumed runs too."""
    tokens: dict[str, dict[str, int]] = defaultdict(
        lambda: {"prompt_tokens": 0, "completion_tokens": 0, "calls": 0}
    )
    for row in rows:
        for t in row["tokens"]:
            acc = tokens[f"{t['role']}/{t['model']}"]
            for k in ("prompt_tokens", "completion_tokens", "calls"):
                acc[k] += t[k]
    decisive = [j for r in rows for j in decisive_judgments(r, judges)]
    status = defaultdict(int)
    for r in rows:
        status[r["status"]] += 1
    return {
        "rows": len(rows),
        "pairs": status["pair"],
        "ties": status["tie"],
        "identical": status["identical"],
        "errors": status["error"],
        "judge_tokens": sum(r["judge_tokens"] for r in rows),
        "verdicts": len(decisive),
        "verdicts_parsed": sum(j["verdict"] is not None for j in decisive),
        "position_pairs": sum(r["position_pairs"] for r in rows),
        "position_consistent": sum(r["position_consistent"] for r in rows),
        "position_flips": sum(r["position_flips"] for r in rows),
        "margin_sum": sum(r["score_margin"] or 0.0 for r in rows),
        "tokens": dict(tokens),
    }


def to_rows(states: list[str], jc: JudgeConfig, provenance: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [{**judge.decide(json.loads(s), jc.mode, jc.judge_names(), jc.vote), **provenance} for s in states]
    rows.sort(key=lambda r: r["prompt_id"])
    return rows


class Committer:
    """Collects streamed rows per shard and commits a shard (atomic write, then manifest) once all of its
    rows are in, so that a killed run resumes from the shards it finished."""

    def __init__(
        self, cfg: GenerateDPOConfig, manifest: dict[str, Any], expected: dict[str, int], cfg_hash: str
    ):
        self.cfg, self.manifest, self.expected = cfg, manifest, expected
        self.provenance = {
            "policy_model": cfg.policy.display_name,
            "run_id": cfg.run_id,
            "config_hash": cfg_hash,
            "moaa_version": __version__,
        }
        self.buffers: dict[str, list[str]] = defaultdict(list)
        self.committed: list[str] = []

    def add(self, shards: list[str], states: list[str]) -> None:
        for shard, state in zip(shards, states):
            self.buffers[shard].append(state)
            if len(self.buffers[shard]) == self.expected[shard]:
                self.commit(shard, self.buffers.pop(shard))

    def commit(self, shard: str, states: list[str]) -> None:
        out = self.cfg.out_dir()
        rows = to_rows(states, self.cfg.judge, self.provenance)
        storage.write_parquet(schemas.to_table(rows, "preference"), storage.join(out, "data", shard))
        self.manifest["shards"][shard] = shard_stats(rows, self.cfg.judge.judge_names())
        runs.save_manifest(out, self.manifest)
        self.committed.append(shard)

    def check_drained(self) -> None:
        if self.buffers:
            missing = {s: self.expected[s] - len(b) for s, b in self.buffers.items()}
            raise RuntimeError(f"rows missing from the pipeline output for shards {missing}")


def plan(
    cfg: GenerateDPOConfig, manifest: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, int], int]:
    """Shards still to do with their row limits, their expected row counts, and the multi-turn rows
    skipped. The global ``limit`` is split over shards in name order, so a rerun plans the same rows."""
    in_dir = cfg.in_dir()
    if cfg.input_dir is None:  # the default chains on this run's prepare stage: it must have finished
        runs.require_complete(posixpath.dirname(in_dir.rstrip("/")), "prepare")
    inputs = sorted(storage.list_files(in_dir, ".parquet"))
    if not inputs:
        raise runs.MissingInputError(
            f"no .parquet prompt shards in {in_dir}: run `python -m jobs.prepare` first"
        )
    left = cfg.limit if cfg.limit is not None else float("inf")
    todo, expected, multi_turn = [], {}, 0
    for p in inputs:
        schemas.validate(storage.read_schema(p), "prompts", where=p)
        turns = storage.read_parquet(p, columns=["n_turns"]).column("n_turns").to_pylist()
        single = sum(t == 1 for t in turns)
        multi_turn += len(turns) - single
        take = int(min(single, left))
        left -= take
        name = posixpath.basename(p)
        done = name in manifest["shards"] and storage.exists(storage.join(cfg.out_dir(), "data", name))
        if not done:
            todo.append({"path": p, "limit": take})
            expected[name] = take
    return todo, expected, multi_turn


def run(cfg: GenerateDPOConfig, pools: dict[str, EnginePool] | None = None) -> dict[str, Any]:
    """Generate preference pairs for every prompts shard not yet done; returns the run summary. ``pools``:
    engines already started (keyed by ``engine_key``) that the caller keeps, e.g. a benchmark that runs
    several judge modes on the same engines; by default the job starts and stops its own."""
    t0 = time.time()
    out = cfg.out_dir()
    cfg_hash = cfg.fingerprint()
    # Inputs are checked before the output folder is touched: a job that cannot start leaves nothing.
    todo, expected, multi_turn = plan(cfg, runs.load_manifest(out) or {"shards": {}})
    manifest = runs.start_manifest(out, STAGE, cfg.run_id, cfg_hash, cfg.model_dump(mode="json"))
    committer = Committer(cfg, manifest, expected, cfg_hash)
    for item in [t for t in todo if t["limit"] == 0]:  # nothing to judge: commit the empty shard now
        committer.commit(posixpath.basename(item["path"]), [])
    todo = [t for t in todo if t["limit"] > 0]
    if todo:
        _init_ray(cfg.ray_address)
        own = pools is None
        pools = pools if pools is not None else start_pools([cfg.policy, *cfg.judge.models()])
        try:
            ds = build_policy_stage(_read(todo), cfg.policy, cfg.n, pools)
            ds = build_judge_pipeline(ds, cfg.judge, pools)
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                committer.add(list(batch["shard"]), list(batch["state"]))
            committer.check_drained()
        finally:
            if own:
                for pool in pools.values():
                    pool.shutdown()
    summary = summarize(manifest, wall=time.time() - t0, committed=committer.committed, prices=cfg.prices)
    summary.update(
        stage=STAGE,
        run_id=cfg.run_id,
        output=storage.join(out, "data"),
        judge_mode=cfg.judge.mode,
        n=cfg.n,
        multi_turn_skipped=multi_turn,
    )
    storage.write_json(storage.join(out, runs.SUMMARY), summary)
    runs.finish_manifest(out, manifest, data=storage.join(out, "data"), rows=summary["rows"])
    return summary


def _ratio(a: float, b: float, digits: int = 4) -> float | None:
    return round(a / b, digits) if b else None


def summarize(
    manifest: dict[str, Any], wall: float, committed: list[str], prices: dict[str, Price] | None = None
) -> dict[str, Any]:
    """Totals over every committed shard; pairs per minute over the shards this invocation judged."""
    shards = manifest["shards"]
    tot = {k: sum(s[k] for s in shards.values()) for k in next(iter(shards.values()), {}) if k != "tokens"}
    tokens: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for s in shards.values():
        for key, t in s["tokens"].items():
            for k, v in t.items():
                tokens[key][k] += v
    usd = 0.0
    for key, t in tokens.items():
        price = (prices or {}).get(key.split("/", 1)[1])
        if price:
            usd += (
                t["prompt_tokens"] * price.prompt_usd_per_mtok
                + t["completion_tokens"] * price.completion_usd_per_mtok
            ) / 1e6
    new_pairs = sum(shards[name]["pairs"] for name in committed)
    get = tot.get
    return {
        "shards": len(shards),
        "shards_this_run": len(committed),
        "shards_skipped": len(shards) - len(committed),
        "rows": int(get("rows", 0)),
        "pairs": int(get("pairs", 0)),
        "ties": int(get("ties", 0)),
        "identical": int(get("identical", 0)),
        "errors": int(get("errors", 0)),
        "verdict_parse_rate": _ratio(get("verdicts_parsed", 0), get("verdicts", 0)),
        "position_consistency": _ratio(get("position_consistent", 0), get("position_pairs", 0)),
        "position_flip_rate": _ratio(get("position_flips", 0), get("position_pairs", 0)),
        "mean_score_margin": _ratio(get("margin_sum", 0.0), get("pairs", 0)),
        "judge_tokens": int(get("judge_tokens", 0)),
        "judge_tokens_per_pair": _ratio(get("judge_tokens", 0), get("pairs", 0), 1),
        "tokens": {k: {kk: int(vv) for kk, vv in v.items()} for k, v in sorted(tokens.items())},
        "usd": usd,
        "wall_s": round(wall, 2),
        "pairs_per_min": round(new_pairs / wall * 60, 2) if committed and wall > 0 else None,
        "config_hash": manifest["config_hash"],
        "moaa_version": __version__,
    }


def one_line(summary: dict[str, Any]) -> str:
    return (
        f"{STAGE} [{summary['judge_mode']}]: {summary['pairs']} pairs from {summary['rows']} prompts "
        f"({summary['ties']} tie, {summary['identical']} identical, {summary['errors']} errors) in "
        f"{summary['shards']} shards ({summary['shards_skipped']} already done); verdicts parsed "
        f"{summary['verdict_parse_rate']}, position consistency {summary['position_consistency']}, "
        f"{summary['judge_tokens_per_pair']} judge tokens/pair, {summary['pairs_per_min']} pairs/min, "
        f"{summary['wall_s']} s, ${summary['usd']:.2f} -> {summary['output']}"
    )
