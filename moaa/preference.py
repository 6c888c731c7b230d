"""MoAA-DPO preference data: the policy (this round's SFT model) samples n answers per prompt, judges compare
every ordered pair, the best and worst answers become a DPO pair. Runs on ``moaa.shards``.

Input: the ``prompts`` shards written by ``jobs.prepare`` (single-turn rows; multi-turn rows are skipped and
counted). Output: ``<out>/data/<shard>.parquet`` in schema ``preference`` (one file per input shard, every
prompt kept: ``prompt, chosen, rejected`` in TRL's conversational format, ``candidates`` with scores,
``judgments``, ``status``; rows without a pair carry the reason in ``error``), ``manifest.json`` and
``summary.json``.

Steps: policy (n samples, one request) -> the judge pipeline of ``moaa.judge`` (criteria, pairs, aggregate).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import time
from functools import partial
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import Field, model_validator

from moaa import judge, layout, runs, schemas, shards, smollm, stage, storage
from moaa.config import InputPath
from moaa.engine import EnginePool, ModelConfig
from moaa.judge import JudgeConfig
from moaa.stage import Price, StageConfig, Summary

STAGE = "generate_dpo"


class GenerateDPOConfig(StageConfig):
    """MoAA-DPO preference generation. Defaults are the embedded tiny CPU setup (configs/generate_dpo/)."""

    input_dir: InputPath | None = Field(
        None, description="Prompts shards; default: this run's prepare/prompts (moaa/layout.py)."
    )
    limit: int | None = Field(
        None, ge=1, description="Use only the first N single-turn prompts (shard order)."
    )
    policy: ModelConfig = Field(
        default_factory=lambda: smollm.engine("policy", 0.8, 128).model_copy(
            update={"model": "run:train_sft", "name": None}
        ),
        description="The model that samples the candidates; model run:train_sft (the default) is this "
        "round's SFT model, as in the paper.",
    )
    n: int = Field(
        3, description="Candidates sampled per prompt, in one request (MoAA: 5; 3 keeps the CPU demo short)."
    )
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="The judge (mode, models, criteria).")
    prices: dict[str, Price] = Field(
        default_factory=dict, description="Optional USD prices per model display name, for the cost estimate."
    )

    stage: ClassVar[str] = STAGE

    @model_validator(mode="after")
    def _check(self) -> GenerateDPOConfig:
        if self.n < 2:
            raise ValueError("n must be >= 2: a pair needs two candidates")
        self.judge.check_modes([self.judge.mode])
        return self

    def in_dir(self) -> str:
        return self.input_dir or layout.prompts_dir(self.runs_dir, self.run_id)

    def policy_model(self) -> ModelConfig:
        """The policy with a ``run:`` model reference resolved to this run's model folder."""
        return layout.resolve_engine(self.policy, self.runs_dir, self.run_id, self.round)

    def models(self) -> list[ModelConfig]:
        return [self.policy_model(), *self.judge.models()]

    def fingerprint(self) -> str:
        """Hash of what decides the rows (models, sampling, n, judge, prompts, input, limit), not of
        resources or batch sizes: a rerun on a bigger cluster still resumes."""
        data = {
            "policy": self.policy_model().output_settings(),
            "n": self.n,
            "judge": self.judge.fingerprint_data(),
            "input": self.in_dir(),
            "limit": self.limit,
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- pipeline


def load_prompts(path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """The first ``limit`` single-turn rows of a prompts shard as judge states (runs in a Ray task)."""
    shard = posixpath.basename(path)
    rows = [r for r in storage.read_parquet(path).to_pylist() if r["n_turns"] == 1][: params["limit"]]
    return [judge.init_state(r, shard) for r in rows]


def build_pipeline(ds, turn: int, pools: dict[str, EnginePool], cfg: GenerateDPOConfig):
    policy = cfg.policy_model()
    ds = shards.engine_stage(
        ds,
        pools,
        policy,
        judge.build_policy,
        partial(judge.apply_policy, model=policy.display_name),
        n=cfg.n,
        sampling=policy.sampling,
    )
    return judge.build_judge_pipeline(ds, cfg.judge, pools)


# ------------------------------------------------------------------------------------------------ driver


def shard_stats(rows: list[dict[str, Any]], judges: list[str]) -> dict[str, Any]:
    """Per-shard accounting kept in the manifest, so that the summary covers resumed runs too."""
    tokens = stage.token_counter()
    for row in rows:
        for t in row["tokens"]:
            acc = tokens[f"{t['role']}/{t['model']}"]
            for k in ("prompt_tokens", "completion_tokens", "calls"):
                acc[k] += t[k]
    decisive = [j for r in rows for j in judge.decisive(r["judgments"], r["judge_mode"], judges)]
    status = [r["status"] for r in rows]
    return {
        "rows": len(rows),
        "pairs": status.count("pair"),
        "ties": status.count("tie"),
        "identical": status.count("identical"),
        "errors": status.count("error"),
        "judge_tokens": sum(r["judge_tokens"] for r in rows),
        "verdicts": len(decisive),
        "verdicts_parsed": sum(j["verdict"] is not None for j in decisive),
        "position_pairs": sum(r["position_pairs"] for r in rows),
        "position_consistent": sum(r["position_consistent"] for r in rows),
        "position_flips": sum(r["position_flips"] for r in rows),
        "margin_sum": sum(r["score_margin"] or 0.0 for r in rows),
        "tokens": dict(tokens),
    }


def to_rows(
    states: list[dict[str, Any]], jc: JudgeConfig, provenance: dict[str, Any]
) -> list[dict[str, Any]]:
    rows = [{**judge.decide(s, jc.mode, jc.judge_names(), jc.vote), **provenance} for s in states]
    return sorted(rows, key=lambda r: r["prompt_id"])


def commit(name: str, states: list[dict[str, Any]], cfg: GenerateDPOConfig, provenance: dict[str, Any]):
    rows = to_rows(states, cfg.judge, provenance)
    tables: dict[str, pa.Table] = {"data": schemas.to_table(rows, "preference")}
    return tables, shard_stats(rows, cfg.judge.judge_names())


def plan(cfg: GenerateDPOConfig) -> tuple[list[shards.Shard], int]:
    """Every input shard with its share of the global ``limit`` (split in name order, so a rerun plans the
    same rows), and the multi-turn rows skipped. Inputs are checked here, before anything starts."""
    in_dir = cfg.in_dir()
    if cfg.input_dir is None:  # the default chains on this run's prepare stage: it must have finished
        runs.require_complete(posixpath.dirname(in_dir.rstrip("/")), "prepare")
    inputs = sorted(storage.list_files(in_dir, ".parquet"))
    if not inputs:
        raise runs.MissingInputError(
            f"no .parquet prompt shards in {in_dir}: run `python -m jobs.prepare` first"
        )
    left = cfg.limit if cfg.limit is not None else float("inf")
    planned, multi_turn = [], 0
    for p in inputs:
        schemas.validate(storage.read_schema(p), "prompts", where=p)
        turns = storage.read_parquet(p, columns=["n_turns"]).column("n_turns").to_pylist()
        single = sum(t == 1 for t in turns)
        multi_turn += len(turns) - single
        take = int(min(single, left))
        left -= take
        planned.append(shards.Shard(posixpath.basename(p), p, rows=take, params={"limit": take}))
    if not any(s.rows for s in planned):
        raise runs.MissingInputError(
            f"no single-turn prompts in {in_dir} ({multi_turn} multi-turn rows, which generate_dpo skips): "
            "give prompts with one user turn"
        )
    return planned, multi_turn


def run(cfg: GenerateDPOConfig, pools: dict[str, EnginePool] | None = None) -> Summary:
    """Preference pairs for every prompts shard not yet done. ``pools``: engines the caller started and
    keeps (keyed by ``engine.engine_key``), e.g. a benchmark running several judge modes on the same
    engines; by default the job starts its own."""
    if (done := stage.finished(cfg)) is not None:
        return done
    t0 = time.time()
    out = cfg.out_dir()
    planned, multi_turn = plan(cfg)  # inputs are checked before the output folder is touched
    manifest, committed = shards.run(
        cfg,
        planned,
        load=load_prompts,
        pipeline=partial(build_pipeline, cfg=cfg),
        commit=partial(
            commit, cfg=cfg, provenance=stage.provenance(cfg, policy_model=cfg.policy_model().display_name)
        ),
        models=cfg.models(),
        pools=pools,
    )
    wall = time.time() - t0
    tot = shards.totals(manifest)
    new_pairs = shards.totals(manifest, committed)["pairs"]
    result = stage.summary(
        cfg,
        rows=tot["rows"],
        errors=tot["errors"],
        wall_s=wall,
        outputs={"data": storage.join(out, "data")},
        tokens=tot["tokens"],
        prices=cfg.prices,
        metrics={
            "judge_mode": cfg.judge.mode,
            "n": cfg.n,
            **shards.progress(manifest, committed),
            "multi_turn_skipped": multi_turn,
            "pairs": tot["pairs"],
            "ties": tot["ties"],
            "identical": tot["identical"],
            "verdict_parse_rate": _ratio(tot["verdicts_parsed"], tot["verdicts"]),
            "position_consistency": _ratio(tot["position_consistent"], tot["position_pairs"]),
            "position_flip_rate": _ratio(tot["position_flips"], tot["position_pairs"]),
            "mean_score_margin": _ratio(tot["margin_sum"], tot["pairs"]),
            "judge_tokens": tot["judge_tokens"],
            "judge_tokens_per_pair": _ratio(tot["judge_tokens"], tot["pairs"], 1),
            "pairs_per_min": round(new_pairs / wall * 60, 2) if committed and wall > 0 else None,
        },
    )
    why = (
        f"no pairs: {tot['ties']} of {result.rows} prompts tie, {tot['identical']} have identical "
        f"candidates, {result.errors} failed; the judge could not tell the candidates apart (position "
        f"consistency {result.metrics['position_consistency']}: a judge that always picks one position "
        "scores every candidate the same; sample the judges, or use a stronger judge)"
    )
    return stage.complete(cfg, manifest, result, usable=tot["pairs"], why=why)


def _ratio(a: float, b: float, digits: int = 4) -> float | None:
    return round(a / b, digits) if b else None


def one_line(s: Summary) -> str:
    m = s.metrics
    return (
        f"{STAGE} [{m['judge_mode']}]: {m['pairs']} pairs from {s.rows} prompts "
        f"({m['ties']} tie, {m['identical']} identical, {s.errors} errors) in "
        f"{m['shards']} shards ({m['shards'] - m['shards_this_run']} already done); verdicts parsed "
        f"{m['verdict_parse_rate']}, position consistency {m['position_consistency']}, "
        f"{m['judge_tokens_per_pair']} judge tokens/pair, {m['pairs_per_min']} pairs/min, "
        f"{s.wall_s} s, ${s.usd:.2f} -> {s.outputs['data']}"
    )
