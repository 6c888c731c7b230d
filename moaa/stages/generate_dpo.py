"""MoAA-DPO preference data: candidates per prompt, judges compare every ordered pair, a DPO pair is picked
from the scores. Runs on ``moaa.engine.shards``. Two pair strategies (``pairs``):

- ``policy_samples`` (default, the paper's): the policy (this round's SFT model) samples n answers per
  prompt; the best and worst answers become the pair. Input: the ``prompts`` shards written by
  ``jobs.prepare`` (single-turn rows; multi-turn rows are skipped and counted).
- ``moa_sft``: the candidates come from this round's ``generate_sft`` data, no policy runs: the aggregated
  answer of a row's last turn and that turn's last proposer layer's proposals. Chosen is always the
  aggregated answer, rejected the proposal the judge scores lowest.

Output (both): ``<out>/data/<shard>.parquet`` in schema ``preference`` (one file per input shard, every
input row kept: ``prompt, chosen, rejected`` in TRL's conversational format, ``candidates`` with scores,
``judgments``, ``status``; rows without a pair carry the reason in ``error``), ``manifest.json`` and
``summary.json``.

Steps: [policy_samples: policy (n samples, one request)] -> the judge pipeline of ``moaa.judging.judge``
(criteria, pairs, aggregate) -> the strategy's pick.
"""

from __future__ import annotations

import posixpath
from functools import partial
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import Field, model_validator

from moaa.benchmarks import verifiable
from moaa.benchmarks.verifiable import PairedGain, PassRate
from moaa.core import layout, manifests, schemas, stage, storage
from moaa.core.config import Config, InputPath
from moaa.core.stage import Outcome, Price, ShardMetrics, Stage, StageConfig, Summary, Work, num
from moaa.embedded import smollm
from moaa.engine import shards
from moaa.engine.settings import ModelConfig
from moaa.engine.vllm import EnginePool
from moaa.judging import judge
from moaa.judging.judge import JudgeAccuracy, JudgeConfig

NAME = "generate_dpo"
SFT_STAGE = "generate_sft"


class GenerateDPOConfig(StageConfig):
    """MoAA-DPO preference generation. Defaults are the embedded tiny CPU setup (configs/generate_dpo/)."""

    pairs: Literal["policy_samples", "moa_sft"] = Field(
        "policy_samples",
        description="How pairs are built. policy_samples (the paper's): the policy samples n answers per "
        "single-turn prompt, chosen = the judge's best, rejected = its worst. moa_sft: no policy runs; the "
        "candidates are a generate_sft row's aggregated answer and its last proposer layer's proposals "
        "(last turn of a multi-turn row), chosen = the aggregated answer, rejected = the proposal the judge "
        "scores lowest; a row where the aggregated answer does not score above that proposal gets no pair "
        "(status tie). Same judge, output schema and summary keys.",
    )
    input_dir: InputPath | None = Field(
        None,
        description="Prompts shards (pairs=policy_samples); default: this run's prepare/prompts "
        "(moaa/core/layout.py).",
    )
    sft_dir: InputPath | None = Field(
        None,
        description="generate_sft data folder (pairs=moa_sft); default: this run and round's "
        "generate_sft/data (moaa/core/layout.py), which must be complete.",
    )
    limit: int | None = Field(
        None,
        ge=1,
        description="Use only the first N input rows (shard order): single-turn prompts (policy_samples) "
        "or generate_sft rows (moa_sft).",
    )
    policy: ModelConfig = Field(
        default_factory=lambda: smollm.engine("policy", 0.8, 128).model_copy(
            update={"model": "run:train_sft", "name": None}
        ),
        description="The model that samples the candidates; model run:train_sft (the default) is this "
        "round's SFT model, as in the paper. Ignored (not started) with pairs=moa_sft.",
    )
    n: int = Field(
        3,
        description="Candidates sampled per prompt, in one request (MoAA: 5; 3 keeps the CPU demo short). "
        "Ignored with pairs=moa_sft (the candidates are the generate_sft row's).",
    )
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="The judge (mode, models, criteria).")
    prices: dict[str, Price] = Field(
        default_factory=dict, description="Optional USD prices per model display name, for the cost estimate."
    )

    stage: ClassVar[str] = NAME

    @model_validator(mode="after")
    def _check(self) -> GenerateDPOConfig:
        if self.n < 2 and self.pairs == "policy_samples":
            raise ValueError("n must be >= 2: a pair needs two candidates")
        self.judge.check_modes([self.judge.mode])
        return self

    def in_dir(self) -> str:
        """The input folder of the strategy: prompts shards, or generate_sft data (moa_sft)."""
        if self.pairs == "moa_sft":
            folder = layout.stage_dir(self.runs_dir, self.run_id, SFT_STAGE, self.round)
            return self.sft_dir or layout.output_of(folder, SFT_STAGE)
        return self.input_dir or layout.prompts_dir(self.runs_dir, self.run_id)

    def policy_model(self) -> ModelConfig:
        """The policy with a ``run:`` model reference resolved to this run's model folder."""
        return layout.resolve_engine(self.policy, self.runs_dir, self.run_id, self.round)

    def judge_config(self) -> JudgeConfig:
        """The judge with ``run:`` model references resolved (a model of an earlier round can judge)."""

        def resolve(m: ModelConfig) -> ModelConfig:
            return layout.resolve_engine(m, self.runs_dir, self.run_id, self.round)

        agg = self.judge.aggregator
        update = {"judges": [resolve(m) for m in self.judge.judges], "aggregator": agg and resolve(agg)}
        return self.judge.model_copy(update=update)

    def engine_models(self) -> list[ModelConfig]:
        if self.pairs == "moa_sft":
            return self.judge_config().models()
        return [self.policy_model(), *self.judge_config().models()]

    def fingerprint_data(self) -> Any:
        """Hash of what decides the rows (strategy, models, sampling, n, judge, prompts, input, limit), not
        of resources or batch sizes: a rerun on a bigger cluster still resumes."""
        if self.pairs == "moa_sft":
            # The policy and n are ignored here, so they do not lock the folder either.
            data: dict[str, Any] = {"pairs": self.pairs}
        else:
            # Without a "pairs" key: folders written before there were strategies keep their hash and resume.
            data = {"policy": self.policy_model().output_settings(), "n": self.n}
        data.update(judge=self.judge_config().fingerprint_data(), input=self.in_dir(), limit=self.limit)
        return data


# ---------------------------------------------------------------------------------------------- pipeline


def load_prompts(path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """The first ``limit`` single-turn rows of a prompts shard as judge states (runs in a Ray task)."""
    shard = posixpath.basename(path)
    rows = [r for r in storage.read_parquet(path).to_pylist() if r["n_turns"] == 1][: params["limit"]]
    return [judge.init_state(r, shard) for r in rows]


def _meta(p: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "finish_reason": p["finish_reason"] if p else None,
        "completion_tokens": p["completion_tokens"] if p else None,
    }


def sft_state(row: dict[str, Any], shard: str) -> dict[str, Any]:
    """Judge state of a generate_sft row (schema ``sft``): the prompt is the conversation up to the last
    user turn; candidate 0 is that turn's aggregated answer, then come the last proposer layer's proposals
    in the order the aggregator saw them. A row that failed in generate_sft (or lacks that turn) keeps an
    error and gets no candidates, so it ends in the output as an error row."""
    state = judge.init_state({**row, "candidates": None}, shard)
    if row["error"] is not None:
        state["error"] = row["error"]
        state["error_stage"] = f"{SFT_STAGE}/{row['error_stage']}" if row["error_stage"] else SFT_STAGE
        return state
    messages = row["messages"]
    turn = [p for p in row["proposals"] if p["turn"] == row["n_turns"]]
    last = max((p["layer"] for p in turn), default=0)
    proposals = [p for p in turn if p["layer"] == last - 1]
    if not messages or messages[-1]["role"] != "assistant" or not proposals:
        state["error"] = (
            f"{SFT_STAGE} row without an aggregated answer and proposals for its last turn "
            f"(turn {row['n_turns']}): not a complete sft row"
        )
        state["error_stage"] = "moa_sft"
        return state
    answer = messages[-1]["content"]
    final = next((p for p in turn if p["layer"] == last and p["content"] == answer), None)
    state["prompt"] = messages[:-1]
    state["candidates"] = [answer, *(p["content"] for p in proposals)]
    state["candidate_meta"] = [_meta(final), *(_meta(p) for p in proposals)]
    # generate_sft checked these very answers against these instructions: its verdicts are reused
    follows = [final.get("follows") if final else None, *(p.get("follows") for p in proposals)]
    if state["constraints"] and all(f is not None for f in follows):
        state["checks"] = [list(f) for f in follows]
    return state


def load_sft(path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """The first ``limit`` rows of a generate_sft data file as judge states (runs in a Ray task)."""
    shard = posixpath.basename(path)
    return [sft_state(r, shard) for r in storage.read_parquet(path).to_pylist()[: params["limit"]]]


def build_pipeline(ds, turn: int, pools: dict[str, EnginePool], cfg: GenerateDPOConfig):
    if cfg.pairs == "moa_sft":  # the candidates come with the rows
        return judge.build_judge_pipeline(ds, cfg.judge_config(), pools)
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
    return judge.build_judge_pipeline(ds, cfg.judge_config(), pools)


# ------------------------------------------------------------------------------------------------ moa_sft


def select_against_aggregate(candidates: list[str], score: list[float]) -> tuple[int | None, int | None, str]:
    """moa_sft's (chosen, rejected, status): chosen is the aggregated answer (candidate 0), rejected the
    proposal with the lowest score among those whose text differs from it (first index on equal scores).
    'identical' when no proposal differs; 'tie' when that proposal scores as high as the aggregated answer
    or higher: a pair against the judge's own verdict would teach DPO what the judge ranks worse."""
    others = [i for i in range(1, len(candidates)) if candidates[i] != candidates[0]]
    if not others:
        return None, None, "identical"
    rejected = min(others, key=lambda i: (score[i], i))
    if score[rejected] >= score[0]:
        return None, None, "tie"
    return 0, rejected, "pair"


def decide_against_aggregate(state: dict[str, Any], jc: JudgeConfig) -> dict[str, Any]:
    """``judge.decide`` (scores, judgments, tokens), with chosen/rejected picked by
    ``select_against_aggregate``."""
    row = judge.decide(state, jc.mode, jc.judge_names(), jc.vote)
    if row["status"] == "error":
        return row
    cands = state["candidates"]
    score = [c["score"] for c in row["candidates"]]
    chosen, rejected, status = select_against_aggregate(cands, score)
    reason = {
        "identical": "no pair: all candidates are identical",
        "tie": "no pair: the aggregated answer does not score above the worst proposal",
    }.get(status)
    pair = chosen is not None and rejected is not None
    row.update(
        chosen=[{"role": "assistant", "content": cands[chosen]}] if pair else [],
        rejected=[{"role": "assistant", "content": cands[rejected]}] if pair else [],
        error=reason,
        status=status,
        chosen_index=chosen,
        rejected_index=rejected,
        chosen_score=score[chosen] if pair else None,
        rejected_score=score[rejected] if pair else None,
        score_margin=score[chosen] - score[rejected] if pair else None,
    )
    return row


def aggregate_on_top(candidates: list[dict[str, Any]]) -> bool:
    """Whether the aggregated answer (candidate 0 of a moa_sft row) scores above every candidate with
    another text: the judge's own top pick. Copies of it are the same answer and do not count."""
    if not candidates:
        return False
    others = [c["score"] for c in candidates[1:] if c["content"] != candidates[0]["content"]]
    return bool(others) and candidates[0]["score"] > max(others)


# ------------------------------------------------------------------------------------------------ driver


def shard_stats(rows: list[dict[str, Any]], judges: list[str], vote: str = "majority") -> dict[str, Any]:
    """Per-shard accounting kept in the manifest, so that the summary covers resumed runs too."""
    tokens = stage.token_counter()
    for row in rows:
        for t in row["tokens"]:
            acc = tokens[f"{t['role']}/{t['model']}"]
            for k in ("prompt_tokens", "completion_tokens", "calls"):
                acc[k] += t[k]
    decisive = [j for r in rows for j in judge.decisive(r["judgments"], r["judge_mode"], judges)]
    status = [r["status"] for r in rows]
    judged = [r for r in rows if r["status"] in ("pair", "tie")]
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
        # Rows judged (at least two different texts, no error), and those whose candidate 0 won: only
        # meaningful for moa_sft, where candidate 0 is the aggregated answer.
        "judged": len(judged),
        "candidate0_top": sum(aggregate_on_top(r["candidates"]) for r in judged),
        "tokens": dict(tokens),
        "checks": check_counts(rows, judges, vote),
    }


def check_counts(rows: list[dict[str, Any]], judges: list[str], vote: str) -> dict[str, Any]:
    """Verifiable counts of the rows whose prompt carries instructions: every candidate's, chosen's and
    rejected's pass counts (``verifiable.add``), chosen against rejected (paired), and per way of judging
    (``judge.judge_views``) its decisions on the verifiable pairs (``judge.verifiable_accuracy``)."""
    out: dict[str, Any] = {"prompts": 0, "candidates": verifiable.new_counts()}
    out.update(chosen=verifiable.new_counts(), rejected=verifiable.new_counts(), chosen_vs_rejected={})
    out["accuracy"] = {}
    for r in rows:
        if not r.get("constraints") or r["status"] == "error":
            continue
        out["prompts"] += 1
        for c in r["candidates"]:
            verifiable.add(out["candidates"], c["follows"])
        if r["status"] == "pair":
            chosen, rejected = r["candidates"][r["chosen_index"]], r["candidates"][r["rejected_index"]]
            verifiable.add(out["chosen"], chosen["follows"])
            verifiable.add(out["rejected"], rejected["follows"])
            verifiable.add_pair(out["chosen_vs_rejected"], all(chosen["follows"]), all(rejected["follows"]))
        shards.add_counts(out["accuracy"], judge.verifiable_accuracy(r, judges, vote))
    return out


def to_rows(
    states: list[dict[str, Any]],
    jc: JudgeConfig,
    provenance: dict[str, Any],
    pairs: str = "policy_samples",
) -> list[dict[str, Any]]:
    if pairs == "moa_sft":
        decided = [decide_against_aggregate(s, jc) for s in states]
    else:
        decided = [judge.decide(s, jc.mode, jc.judge_names(), jc.vote) for s in states]
    rows = [{**r, **provenance} for r in decided]
    return sorted(rows, key=lambda r: r["prompt_id"])


def commit(name: str, states: list[dict[str, Any]], cfg: GenerateDPOConfig, provenance: dict[str, Any]):
    rows = to_rows(states, cfg.judge_config(), provenance, cfg.pairs)
    tables: dict[str, pa.Table] = {"data": schemas.to_table(rows, "preference")}
    return tables, shard_stats(rows, cfg.judge_config().judge_names(), cfg.judge.vote)


def plan(cfg: GenerateDPOConfig) -> tuple[list[shards.Shard], int]:
    """Every input shard with its share of the global ``limit`` (split in name order, so a rerun plans the
    same rows), and the multi-turn rows skipped. Inputs are checked here, before anything starts."""
    if cfg.pairs == "moa_sft":
        return plan_sft(cfg), 0
    in_dir = cfg.in_dir()
    if cfg.input_dir is None:  # the default chains on this run's prepare stage: it must have finished
        manifests.require_complete(posixpath.dirname(in_dir.rstrip("/")), "prepare")
    inputs = sorted(storage.list_files(in_dir, ".parquet"))
    if not inputs:
        raise manifests.MissingInputError(
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
        raise manifests.MissingInputError(
            f"no single-turn prompts in {in_dir} ({multi_turn} multi-turn rows, which generate_dpo skips): "
            "give prompts with one user turn"
        )
    return planned, multi_turn


def plan_sft(cfg: GenerateDPOConfig) -> list[shards.Shard]:
    """moa_sft: one shard per generate_sft data file (same name), with its share of ``limit``; every row,
    multi-turn ones included (their last turn is judged)."""
    in_dir = cfg.in_dir()
    if cfg.sft_dir is None:  # the default chains on this round's generate_sft stage: it must have finished
        manifests.require_complete(posixpath.dirname(in_dir.rstrip("/")), SFT_STAGE)
    inputs = sorted(storage.list_files(in_dir, ".parquet"))
    if not inputs:
        raise manifests.MissingInputError(
            f"no .parquet generate_sft data in {in_dir}: run `python -m jobs.generate_sft` first "
            "(pairs=moa_sft builds its pairs from that data), or set sft_dir"
        )
    left = cfg.limit if cfg.limit is not None else float("inf")
    planned = []
    for p in inputs:
        schemas.validate(storage.read_schema(p), "sft", where=p)
        take = int(min(storage.read_parquet(p, columns=["prompt_id"]).num_rows, left))
        left -= take
        planned.append(shards.Shard(posixpath.basename(p), p, rows=take, params={"limit": take}))
    if not any(s.rows for s in planned):
        raise manifests.MissingInputError(f"no rows in the generate_sft data in {in_dir}")
    return planned


def _ratio(a: float, b: float, digits: int = 4) -> float | None:
    return round(a / b, digits) if b else None


class DPOChecks(Config):
    """Verifiable instructions in the preference data: do chosen answers follow them more often than
    rejected ones, and how often does each way of judging prefer the candidate that follows them all?"""

    prompts: int = Field(0, description="Judged rows whose prompt carries instructions.")
    candidates: PassRate = Field(PassRate(), description="Every candidate of those rows (strict checks).")
    chosen: PassRate = Field(PassRate(), description="The chosen answers of the pairs among them.")
    rejected: PassRate = Field(PassRate(), description="The rejected answers.")
    chosen_vs_rejected: PairedGain = Field(PairedGain(), description="Chosen's pass rate minus rejected's.")
    accuracy: dict[str, JudgeAccuracy] = Field(
        default_factory=dict,
        description="Per way of judging (the run's mode, and the jury and single judges its calls allow): "
        "accuracy on the verifiable pairs, with its interval.",
    )

    @classmethod
    def of(cls, c: dict[str, Any]) -> DPOChecks:
        return cls(
            prompts=c.get("prompts", 0),
            candidates=PassRate.of(c.get("candidates", {})),
            chosen=PassRate.of(c.get("chosen", {})),
            rejected=PassRate.of(c.get("rejected", {})),
            chosen_vs_rejected=PairedGain.of(c.get("chosen_vs_rejected", {})),
            accuracy={k: JudgeAccuracy.of(v) for k, v in sorted(c.get("accuracy", {}).items())},
        )

    def text(self) -> str:
        if not self.prompts:
            return ""
        acc = "; ".join(f"{k} {a.text()}" for k, a in self.accuracy.items())
        return (
            f"instructions followed (strict): chosen {self.chosen.text()}, rejected {self.rejected.text()}"
            + (f"; judge accuracy on verifiable pairs: {acc}" if acc else "")
        )


class GenerateDPOMetrics(ShardMetrics):
    pairs_strategy: str = Field(
        "policy_samples",
        description="Where the candidates came from (a summary from before strategies: policy).",
    )
    judge_mode: str | None = Field(None, description="How the candidates were judged (judge.mode).")
    n: int | None = Field(None, description="Samples per prompt (null for moa_sft).")
    multi_turn_skipped: int = Field(0, description="Multi-turn prompts left out (pairs are single-turn).")
    pairs: int | None = Field(None, description="Prompts with a chosen and a rejected answer.")
    ties: int | None = Field(None, description="Prompts whose best and worst candidates scored the same.")
    identical: int = Field(0, description="Prompts whose candidates were all the same text.")
    verdict_parse_rate: float | None = Field(None, description="Judge verdicts that parsed.")
    position_consistency: float | None = Field(
        None, description="Candidate pairs judged the same way in both orders."
    )
    position_flip_rate: float | None = Field(
        None, description="Candidate pairs whose verdict followed the position, not the answer."
    )
    mean_score_margin: float | None = Field(None, description="Mean score of chosen minus rejected.")
    judge_tokens: int = Field(0, description="Judge tokens (prompt and completion) over all of the work.")
    judge_tokens_per_pair: float | None = Field(None, description="Judge tokens per pair.")
    pairs_per_min: float | None = Field(None, description="Pairs per minute in the call that finished.")
    # moa_sft: the share of judged rows whose aggregated answer the judge ranked above every proposal (a
    # sanity number: MoA should usually win); null for policy_samples.
    aggregate_top_rate: float | None = Field(
        None, description="moa_sft: judged rows whose aggregated answer ranked above every proposal."
    )
    checks: DPOChecks | None = Field(
        None, description="Verifiable instructions: chosen vs rejected pass rates, judge accuracy per mode."
    )


class GenerateDPO(Stage[GenerateDPOConfig, GenerateDPOMetrics]):
    name = NAME
    config = GenerateDPOConfig
    metrics = GenerateDPOMetrics

    def work(self, work: Work, pools: dict[str, EnginePool] | None = None) -> Outcome:
        """Preference pairs for every input shard not yet done."""
        cfg = work.cfg
        assert isinstance(cfg, GenerateDPOConfig)
        planned, multi_turn = plan(cfg)  # inputs are checked before the output folder is touched
        moa_sft = cfg.pairs == "moa_sft"
        # moa_sft's candidates come from several generate_sft models, no policy: policy_model stays null.
        policy_name = None if moa_sft else cfg.policy_model().display_name
        manifest, committed = shards.run(
            work,
            planned,
            load=load_sft if moa_sft else load_prompts,
            pipeline=partial(build_pipeline, cfg=cfg),
            commit=partial(commit, cfg=cfg, provenance=work.provenance(policy_model=policy_name)),
            models=cfg.engine_models(),
            pools=pools,
        )
        wall = work.wall_s()
        tot = shards.totals(manifest)
        new_pairs = shards.totals(manifest, committed)["pairs"]
        m = GenerateDPOMetrics(
            pairs_strategy=cfg.pairs,
            judge_mode=cfg.judge.mode,
            n=None if moa_sft else cfg.n,
            **shards.progress(manifest, committed),
            multi_turn_skipped=multi_turn,
            pairs=tot["pairs"],
            ties=tot["ties"],
            identical=tot["identical"],
            verdict_parse_rate=_ratio(tot["verdicts_parsed"], tot["verdicts"]),
            position_consistency=_ratio(tot["position_consistent"], tot["position_pairs"]),
            position_flip_rate=_ratio(tot["position_flips"], tot["position_pairs"]),
            mean_score_margin=_ratio(tot["margin_sum"], tot["pairs"]),
            judge_tokens=tot["judge_tokens"],
            judge_tokens_per_pair=_ratio(tot["judge_tokens"], tot["pairs"], 1),
            pairs_per_min=round(new_pairs / wall * 60, 2) if committed and wall > 0 else None,
            aggregate_top_rate=_ratio(tot["candidate0_top"], tot["judged"]) if moa_sft else None,
            checks=DPOChecks.of(tot["checks"]) if tot.get("checks") else None,
        )
        rows = tot["rows"]
        why = (
            f"no pairs: {tot['ties']} of {rows} prompts tie, {tot['identical']} have identical "
            f"candidates, {tot['errors']} failed; the judge could not tell the candidates apart (position "
            f"consistency {m.position_consistency}: a judge that always picks one position "
            "scores every candidate the same; sample the judges, or use a stronger judge)"
        )
        if cfg.judge.mode == "verifier":
            why = (
                f"no pairs: judge.mode verifier decides by the prompts' verifiable instructions alone; on "
                f"{tot['ties']} of {rows} prompts no candidate followed more of them than another (a prompt "
                "without instructions never gets a pair: set prepare's constraints.share)"
            )
        elif moa_sft:
            why = (
                f"no pairs: on {tot['ties']} of {rows} rows the aggregated answer did not score above the "
                f"worst proposal, {tot['identical']} have identical candidates, {tot['errors']} failed "
                f"(position consistency {m.position_consistency}; aggregated answer on top "
                f"{m.aggregate_top_rate}); check the judge with judge_eval, or use pairs=policy_samples"
            )
        return Outcome(
            manifest,
            rows=rows,
            errors=tot["errors"],
            outputs={"data": storage.join(work.out, "data")},
            tokens=tot["tokens"],
            prices=cfg.prices,
            metrics=m,
            usable=tot["pairs"],
            why=why,
        )

    def one_line(self, s: Summary) -> str:
        m = self.read(s)
        top = f"aggregated answer on top {m.aggregate_top_rate}, " if m.pairs_strategy == "moa_sft" else ""
        return (
            f"{NAME} [{m.pairs_strategy}, {m.judge_mode}]: {m.pairs} pairs from {s.rows} prompts "
            f"({m.ties} tie, {m.identical} identical, {s.errors} errors) in "
            f"{m.shards} shards ({m.shards - m.shards_this_run} already done); verdicts parsed "
            f"{m.verdict_parse_rate}, position consistency {m.position_consistency}, "
            f"{m.judge_tokens_per_pair} judge tokens/pair, {m.pairs_per_min} pairs/min, "
            f"{top}{s.wall_s} s, ${s.usd:.2f} -> {s.outputs['data']}"
            + (f"\n  {m.checks.text()}" if m.checks and m.checks.prompts else "")
        )

    def key_numbers(self, s: Summary) -> str:
        m = self.read(s)
        parts = []
        if m.pairs is not None and m.ties is not None:
            parts.append(f"{num(m.pairs)} pairs, {num(m.ties)} ties from {num(s.rows)} prompts")
        if m.judge_mode is not None:
            parts.append(f"judge mode {m.judge_mode}" + (f", n={m.n}" if m.n is not None else ""))
        return ", ".join(parts)

    def brief(self, s: Summary) -> dict[str, Any]:
        m = self.read(s)
        return {
            "pairs_strategy": m.pairs_strategy,
            "pairs": m.pairs,
            "ties": m.ties,
            "position_consistency": m.position_consistency,
            "checks": m.checks.text() if m.checks and m.checks.prompts else None,
        }


STAGE = GenerateDPO()
run = STAGE.run
one_line = STAGE.one_line
