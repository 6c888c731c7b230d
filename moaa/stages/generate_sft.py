"""MoA-SFT generation: proposers -> (more layers) -> aggregator, turn by turn, over Ray Data.

Input: the ``prompts`` shards written by ``jobs.prepare`` (``prompt_id, source, messages, n_turns``).
Output: ``<out>/data/<shard>.parquet`` in schema ``sft`` (one file per input shard: ``prompt_id, source,
messages, n_turns, proposals, aggregator_model, error, error_stage`` and provenance), ``manifest.json``
and ``summary.json``.

How it runs (``moaa.engine.shards`` is the engine): every (layer, model) is one ``map_batches`` step
feeding that model's engine pool, so the layers run pipelined on different batches; models with the same
engine settings share one engine whatever their role; turn t of a multi-turn chat needs turn t-1's
*aggregated* answer, so turns are passes over the shards that still have turns.
"""

from __future__ import annotations

import hashlib
import posixpath
from functools import partial
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import Field, field_validator

from moaa.benchmarks import verifiable
from moaa.benchmarks.verifiable import PairedGain, PassRate
from moaa.core import layout, manifests, schemas, stage, storage
from moaa.core.config import Config, InputPath
from moaa.core.stage import Outcome, Price, ShardMetrics, Stage, StageConfig, Summary, Work, num
from moaa.embedded import smollm
from moaa.engine import shards
from moaa.engine.settings import ModelConfig
from moaa.engine.vllm import EnginePool
from moaa.judging import moa, prompts

NAME = "generate_sft"


class GenerateSFTConfig(StageConfig):
    """MoA-SFT generation. Defaults are the embedded tiny CPU setup (see configs/generate_sft/)."""

    input_dir: InputPath | None = Field(
        None, description="Prompts shards; default: this run's prepare/prompts (moaa/core/layout.py)."
    )
    proposers: list[ModelConfig] = Field(
        # Self-MoA on the embedded model: one model sampled two ways (one engine serves every role).
        default_factory=lambda: [
            smollm.engine("smollm2-t0.7", 0.7, 128),
            smollm.engine("smollm2-t1.0", 1.0, 128, top_p=0.9),
        ],
        description="Proposer models; every proposer layer uses all of them.",
    )
    aggregator: ModelConfig = Field(
        # Lower temperature and a repetition penalty: without them the 135M aggregator loops on long prompts.
        default_factory=lambda: smollm.engine("smollm2-aggregator", 0.3, 160, repetition_penalty=1.1),
        description="Aggregator model (the last layer).",
    )
    layers: int = Field(2, description="MoA layers including the aggregator: 2 = proposers -> aggregator.")
    prices: dict[str, Price] = Field(
        default_factory=dict, description="Optional USD prices per model display name, for the cost estimate."
    )
    keep_prompts: bool = Field(
        False, description="Store the exact messages sent with every proposal (audits; much larger output)."
    )

    stage: ClassVar[str] = NAME

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

    def in_dir(self) -> str:
        return self.input_dir or layout.prompts_dir(self.runs_dir, self.run_id)

    def proposer_models(self) -> list[ModelConfig]:
        """The proposers, ``run:`` references resolved (a model of an earlier round can propose)."""
        return [layout.resolve_engine(m, self.runs_dir, self.run_id, self.round) for m in self.proposers]

    def aggregator_model(self) -> ModelConfig:
        return layout.resolve_engine(self.aggregator, self.runs_dir, self.run_id, self.round)

    def engine_models(self) -> list[ModelConfig]:
        return [*self.proposer_models(), self.aggregator_model()]

    def fingerprint_data(self) -> Any:
        """Hash of what decides the rows' content (models, sampling, layers, prompt, input), not of
        resources or batch sizes: a rerun on a bigger cluster still resumes."""
        data = {
            "proposers": [m.output_settings() for m in self.proposer_models()],
            "aggregator": self.aggregator_model().output_settings(),
            "layers": self.layers,
            "keep_prompts": self.keep_prompts,
            "prompt": hashlib.sha256(prompts.AGGREGATE_AND_SYNTHESIZE.encode()).hexdigest(),
            "input": self.in_dir(),
        }
        return data


# ---------------------------------------------------------------------------------------------- pipeline


def load_prompts(path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """A prompts shard as fresh MoA states (runs in a Ray task)."""
    shard = posixpath.basename(path)
    return [moa.init_state(r, shard) for r in storage.read_parquet(path).to_pylist()]


def _step(
    ds, pools: dict[str, EnginePool], model: ModelConfig, *, turn: int, layer: int, final: bool, keep: bool
):
    name = model.display_name
    return shards.engine_stage(
        ds,
        pools,
        model,
        partial(moa.build_messages, turn=turn, layer=layer, model=name),
        partial(moa.apply_completion, turn=turn, layer=layer, model=name, final=final, keep_prompt=keep),
        sampling=model.sampling,  # one engine may serve several roles with their own sampling
    )


def build_turn_pipeline(ds, turn: int, pools: dict[str, EnginePool], cfg: GenerateSFTConfig):
    """One turn of MoA over a dataset of states: every proposer of every proposer layer, then the
    aggregator."""
    for layer in range(1, cfg.layers):
        for model in cfg.proposer_models():
            ds = _step(ds, pools, model, turn=turn, layer=layer, final=False, keep=cfg.keep_prompts)
    aggregator = cfg.aggregator_model()
    return _step(ds, pools, aggregator, turn=turn, layer=cfg.layers, final=True, keep=cfg.keep_prompts)


# ------------------------------------------------------------------------------------------------ driver


def shard_stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-shard accounting kept in the manifest, so that the summary covers resumed runs too."""
    tokens = stage.token_counter()
    for row in rows:
        last_layer = max((p["layer"] for p in row["proposals"]), default=0)
        for p in row["proposals"]:
            final = p["layer"] == last_layer and p["model"] == row["aggregator_model"]
            t = tokens[f"{'aggregate' if final else 'propose'}/{p['model']}"]
            t["prompt_tokens"] += p["prompt_tokens"]
            t["completion_tokens"] += p["completion_tokens"]
            t["calls"] += 1
    return {
        "rows": len(rows),
        "errors": sum(r["error"] is not None for r in rows),
        "tokens": dict(tokens),
        "checks": check_counts(rows),
    }


def check_counts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Verifiable pass counts (``verifiable.add``) of the rows with instructions: per answer
    ``layer<L>/<model>`` and per layer ``layer<L>`` over every checked answer, ``final`` over the aggregated
    answers of the rows that finished, and ``final_vs/<layer>/<model>`` the paired counts of the aggregated
    answer against each proposal it was made from (first = the aggregated answer)."""
    out: dict[str, Any] = {"prompts": 0, "answers": {}, "layers": {}, "final": verifiable.new_counts()}
    out["final_vs"] = {}
    for row in rows:
        if not row.get("constraints"):
            continue
        out["prompts"] += 1
        checked = [p for p in row["proposals"] if p["turn"] == row["n_turns"] and p["follows"] is not None]
        last = max((p["layer"] for p in checked), default=0)
        final = next(
            (p for p in checked if p["layer"] == last and p["model"] == row["aggregator_model"]), None
        )
        if row["error"] is not None:
            final = None  # a row that stopped early has no aggregated answer, whatever layer it reached
        for p in checked:
            for key in (f"layer{p['layer']}/{p['model']}", f"layer{p['layer']}"):
                group = "answers" if "/" in key else "layers"
                verifiable.add(
                    out[group].setdefault(key, verifiable.new_counts()), p["follows"], p["follows_loose"]
                )
            if final is not None and p is not final and p["layer"] == last - 1:
                pair = out["final_vs"].setdefault(f"layer{p['layer']}/{p['model']}", {})
                verifiable.add_pair(pair, all(final["follows"]), all(p["follows"]))
        if final is not None:
            verifiable.add(out["final"], final["follows"], final["follows_loose"])
    return out


def commit(
    name: str, states: list[dict[str, Any]], provenance: dict[str, Any]
) -> tuple[dict[str, pa.Table], dict]:
    rows = sorted((moa.to_sft_row(s, **provenance) for s in states), key=lambda r: r["prompt_id"])
    return {"data": schemas.to_table(rows, "sft")}, shard_stats(rows)


def plan(cfg: GenerateSFTConfig) -> list[shards.Shard]:
    """Every input shard with its row count and number of turns; the inputs are checked here, before
    anything is written or started."""
    in_dir = cfg.in_dir()
    if cfg.input_dir is None:  # the default chains on this run's prepare stage: it must have finished
        manifests.require_complete(posixpath.dirname(in_dir.rstrip("/")), "prepare")
    inputs = storage.list_files(in_dir, ".parquet")
    if not inputs:
        raise manifests.MissingInputError(
            f"no .parquet prompt shards in {in_dir}: run `python -m jobs.prepare` first"
        )
    planned = []
    for p in inputs:
        schemas.validate(storage.read_schema(p), "prompts", where=p)
        n_turns = storage.read_parquet(p, columns=["n_turns"]).column("n_turns").to_pylist()
        planned.append(
            shards.Shard(posixpath.basename(p), p, rows=len(n_turns), turns=max(n_turns, default=1))
        )
    return planned


class SFTChecks(Config):
    """Does aggregation follow instructions better than its inputs? Pass rates of the answers to the prompts
    that carry verifiable instructions (prepare's ``constraints``), checked by IFEval's checkers."""

    prompts: int = Field(0, description="Rows with instructions.")
    final: PassRate = Field(PassRate(), description="The aggregated (final) answers.")
    answers: dict[str, PassRate] = Field(
        default_factory=dict,
        description="Per model and layer ('layer<L>/<model>'); the last layer is the aggregator.",
    )
    layers: dict[str, PassRate] = Field(default_factory=dict, description="Per layer, over all its models.")
    final_vs: dict[str, PairedGain] = Field(
        default_factory=dict,
        description="The aggregated answer's pass rate minus each proposal's it was made from, on the same "
        "prompts ('layer<L>/<model>' of the layer before the aggregator).",
    )

    @classmethod
    def of(cls, c: dict[str, Any]) -> SFTChecks:
        return cls(
            prompts=c.get("prompts", 0),
            final=PassRate.of(c.get("final", {})),
            answers={k: PassRate.of(v) for k, v in sorted(c.get("answers", {}).items())},
            layers={k: PassRate.of(v) for k, v in sorted(c.get("layers", {}).items())},
            final_vs={k: PairedGain.of(v) for k, v in sorted(c.get("final_vs", {}).items())},
        )

    def text(self) -> str:
        """'final 40% [..] of 20; vs smollm2-t0.7 +5 points [..], ...'"""
        if not self.prompts:
            return ""
        vs = ", ".join(f"vs {k.split('/', 1)[1]} {g.text()}" for k, g in self.final_vs.items())
        return f"instructions followed (strict): aggregated {self.final.text()}" + (f"; {vs}" if vs else "")


class GenerateSFTMetrics(ShardMetrics):
    completion_tokens: int | None = Field(None, description="Tokens generated over all of the stage's work.")
    completion_tokens_per_s: float | None = Field(
        None, description="Tokens generated per second by the call that finished the stage (null: none)."
    )
    checks: SFTChecks | None = Field(
        None, description="Verifiable instructions: pass rates per proposer, per layer and of the aggregate."
    )


class GenerateSFT(Stage[GenerateSFTConfig, GenerateSFTMetrics]):
    name = NAME
    config = GenerateSFTConfig
    metrics = GenerateSFTMetrics

    def work(self, work: Work, pools: dict[str, EnginePool] | None = None) -> Outcome:
        """Generate MoA-SFT data for every prompts shard not yet done."""
        cfg = work.cfg
        assert isinstance(cfg, GenerateSFTConfig)
        planned = plan(cfg)  # inputs are checked before the output folder is touched
        provenance = work.provenance(aggregator_model=cfg.aggregator_model().display_name)
        manifest, committed = shards.run(
            work,
            planned,
            load=load_prompts,
            pipeline=partial(build_turn_pipeline, cfg=cfg),
            commit=partial(commit, provenance=provenance),
            models=cfg.engine_models(),
            pools=pools,
        )
        wall = work.wall_s()
        total, new = shards.totals(manifest), shards.totals(manifest, committed)
        new_completion = sum(t["completion_tokens"] for t in new["tokens"].values())
        return Outcome(
            manifest,
            rows=total["rows"],
            errors=total["errors"],
            outputs={"data": storage.join(work.out, "data")},
            tokens=total["tokens"],
            prices=cfg.prices,
            metrics=GenerateSFTMetrics(
                **shards.progress(manifest, committed),
                completion_tokens=sum(t["completion_tokens"] for t in total["tokens"].values()),
                completion_tokens_per_s=round(new_completion / wall, 1) if committed else None,
                checks=SFTChecks.of(total["checks"]) if total.get("checks") else None,
            ),
        )

    def one_line(self, s: Summary) -> str:
        m = self.read(s)
        tps = m.completion_tokens_per_s
        return (
            f"{NAME}: {s.rows} rows ({s.errors} errors) in {m.shards} shards "
            f"({m.shards - m.shards_this_run} already done), {m.completion_tokens} completion tokens"
            + (f", {tps} tok/s" if tps else "")
            + f", {s.wall_s} s, ${s.usd:.2f} -> {s.outputs['data']}"
            + (f"\n  {m.checks.text()}" if m.checks and m.checks.prompts else "")
        )

    def key_numbers(self, s: Summary) -> str:
        m = self.read(s)
        if m.completion_tokens is None:
            return ""
        speed = (
            f" at {num(m.completion_tokens_per_s, 1)} tok/s" if m.completion_tokens_per_s is not None else ""
        )
        checks = f"; {m.checks.text()}" if m.checks and m.checks.prompts else ""
        return f"{num(m.completion_tokens)} completion tokens{speed}{checks}"

    def brief(self, s: Summary) -> dict[str, Any]:
        m = self.read(s)
        return {"checks": m.checks.text() if m.checks and m.checks.prompts else None}


STAGE = GenerateSFT()
run = STAGE.run
one_line = STAGE.one_line
