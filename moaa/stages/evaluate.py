"""Evaluation: benchmark scores (MT-Bench, Arena-Hard, AlpacaEval 2: ``moaa.benchmarks.registry``) for any
set of models, with any judge.

Input: the benchmarks' own files (``moaa fetch-benchmarks`` puts them in ``data/benchmarks/``; a config names
any path or URI) and a list of models: hub ids, local folders or models of this run (``run:train_sft``,
``run:train_dpo@1``). Output, in ``<out>/``:

    answers/<benchmark>/<model>/part-*.parquet      schema eval_answers: every answer, turn by turn
    judgments/<benchmark>/<model>/part-*.parquet    schema eval_judgments: every judge and aggregator call
    results.parquet, results.json                   schema eval_results: one row per model and benchmark
    manifest.json, summary.json

How it runs (``moaa.engine.shards`` is the engine; a shard is one slice of one benchmark for one model): each
model answers its rows, one pass per turn (a later turn holds the model's own earlier answers), then the judge
steps score what is answered. The judge is one engine (``judge.judges: [one model]``) or the MoA judge
(several judges, then ``judge.aggregator`` reads their outputs and gives the final judgment), so
MoA-as-evaluator is measured exactly like a single judge. Judges that are our engines are constrained to the
benchmark's output format (vLLM structured outputs), so that every verdict parses; ``constrained: false``
lets a strong judge write freely, and unparsed verdicts are then counted (a benchmark may send a free judgment
without a verdict back once to be finished).

Each benchmark is a module of ``moaa.benchmarks`` behind one interface (``moaa.benchmarks.base.Benchmark``):
its config section, how its items are read and answered, its judge prompts, verdict parser and output format,
its score; its module's docstring says what it does, each formula read from the benchmark's reference code.
This module runs any of them and names none.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections import defaultdict
from functools import partial
from typing import Any, ClassVar

from pydantic import Field, create_model, field_validator, model_validator

from moaa.benchmarks import registry
from moaa.benchmarks.base import Benchmark, BenchmarkFileError, Key, Messages
from moaa.core import layout, schemas, stage, storage
from moaa.core.config import Config
from moaa.core.stage import Outcome, Price, ShardMetrics, Stage, StageConfig, Summary, Work
from moaa.embedded import is_embedded, smollm
from moaa.engine import shards
from moaa.engine.settings import Completion, ModelConfig, SamplingConfig
from moaa.engine.vllm import EnginePool
from moaa.judging import prompts

NAME = "evaluate"


class EvalJudge(Config):
    """The evaluator: one judge engine, or the MoA judge (several judges, then an aggregator judge)."""

    judges: list[ModelConfig] = Field(
        # Greedy, as the benchmarks' own judges run. The embedded 135M model is at chance as a judge: with it,
        # the numbers show the mechanics, not quality.
        default_factory=lambda: [smollm.engine("smollm2-judge", 0.0, 1, max_model_len=4096)],
        description="Judge models: one (a single judge) or several (the MoA judge, with an aggregator).",
    )
    aggregator: ModelConfig | None = Field(
        None, description="Aggregator judge of the MoA judge: reads the judges' outputs, gives the final one."
    )
    constrained: bool = Field(
        True,
        description="Constrain judge outputs to the benchmark's format (vLLM structured outputs) so that "
        "they always parse; false: free text of up to each judge's sampling.max_tokens, parsed afterwards.",
    )
    max_explanation_chars: int = Field(
        200, ge=1, description="Constrained judges: longest explanation before the verdict or rating."
    )

    @model_validator(mode="after")
    def _check(self) -> EvalJudge:
        names = [m.display_name for m in self.judges]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"need at least one judge, with distinct names (got {names}); set 'name'")
        if len(names) > 1 and self.aggregator is None:
            raise ValueError(
                f"{len(names)} judges need an aggregator (the MoA judge): set judge.aggregator, or keep "
                "one judge"
            )
        return self

    def models(self) -> list[ModelConfig]:
        return [*self.judges, *([self.aggregator] if self.aggregator else [])]

    def final_role(self) -> str:
        return "aggregator" if self.aggregator else "judge"

    def describe(self) -> str:
        names = ", ".join(m.display_name for m in self.judges)
        return f"MoA judge ({names} -> {self.aggregator.display_name})" if self.aggregator else names


def _default_models() -> list[ModelConfig]:
    base = smollm.engine("smollm2", 0.7, 256, max_model_len=4096)
    # This run's DPO model, on the same engine settings as the base (run: references resolve to its folder).
    return [base, base.model_copy(update={"model": "run:train_dpo", "name": None})]


class _Models(StageConfig):
    """The evaluate config's first keys: the models to evaluate."""

    models: list[ModelConfig] = Field(
        default_factory=_default_models,
        description="Models to evaluate: hub ids, folders, or models of this run (run:train_sft, "
        "run:train_dpo@1); their sampling is used except where a benchmark sets its own.",
    )

    @field_validator("models")
    @classmethod
    def _some_models(cls, v: list[ModelConfig]) -> list[ModelConfig]:
        if not v:
            raise ValueError("models must name at least one model to evaluate")
        return v


# Then one section per benchmark of the registry, under its name (``mt_bench: {...}``; null skips it), in the
# registry's order: where the benchmarks' sections have always been among the keys (dumps, --help).
_Sections = create_model("_Sections", __base__=_Models, __module__=__name__, **registry.config_fields())


class EvaluateConfig(_Sections):  # type: ignore[misc,valid-type]
    """Benchmarks for a list of models. Defaults: the embedded SmolLM2 against this run's DPO model on a
    slice of each benchmark, judged by SmolLM2 (the mechanics, not quality: a 135M judge is at chance)."""

    judge: EvalJudge = Field(default_factory=EvalJudge, description="The evaluator (one judge or MoA judge).")
    bootstrap: int = Field(
        100, ge=0, description="Bootstrap resamples for the intervals (arena-hard-auto: 100)."
    )
    ci: float = Field(
        0.90,
        gt=0,
        lt=1,
        description="Interval level: Arena-Hard and MT-Bench bootstrap percentiles (arena-hard-auto v2.0: "
        "0.90); AlpacaEval: win rate +- z * its standard error.",
    )
    rows_per_shard: int = Field(64, ge=1, description="Questions per output shard (the unit of resume).")
    prices: dict[str, Price] = Field(
        default_factory=dict, description="Optional USD prices per model display name, for the cost column."
    )

    stage: ClassVar[str] = NAME

    @model_validator(mode="after")
    def _check(self) -> EvaluateConfig:
        if not self.benchmarks():
            raise ValueError(f"every benchmark is null: keep at least one of {', '.join(registry.NAMES)}")
        names = [m.display_name for m in self.answer_models()]
        others = {n for b in self.benchmarks() for n in b.taken_names(self.section(b))}
        if len(set(names)) != len(names) or others & set(names):
            raise ValueError(
                f"models need distinct display names, none equal to the baseline's (got {names}); set 'name'"
            )
        return self

    def benchmarks(self) -> list[Benchmark]:
        """The benchmarks to run (those whose section is not null), in the registry's order."""
        return [b for b in registry.BENCHMARKS if self.section(b) is not None]

    def section(self, b: Benchmark) -> Any:
        """``b``'s config section; None: skipped."""
        return getattr(self, b.name)

    def answer_models(self) -> list[ModelConfig]:
        """The models to evaluate, ``run:`` references resolved (display name e.g. ``train_dpo-r1``)."""
        return [layout.resolve_engine(m, self.runs_dir, self.run_id, self.round) for m in self.models]

    def engine_models(self) -> list[ModelConfig]:
        """The answering models, and the judges only when a benchmark to run is judged (IFEval alone starts
        no judge engine)."""
        judges = self.judge.models() if any(b.judged for b in self.benchmarks()) else []
        return [*self.answer_models(), *judges]

    def fingerprint_data(self) -> Any:
        # Every benchmark's judge prompts, skipped ones too, in the order they were hashed before the registry
        # (its reverse), so that the fingerprints of earlier runs still match and they resume.
        judge_prompts = [
            *(p for b in reversed(registry.BENCHMARKS) for p in b.judge_prompts),
            prompts.AGGREGATE_BENCHMARK_JUDGMENTS,
        ]
        sections = {b.name: self.section(b) for b in registry.BENCHMARKS}
        data = {
            "models": [m.output_settings() for m in self.answer_models()],
            "judges": [m.output_settings() for m in self.judge.judges],
            "aggregator": self.judge.aggregator.output_settings() if self.judge.aggregator else None,
            "constrained": self.judge.constrained,
            "max_explanation_chars": self.judge.max_explanation_chars,
            **{name: s.model_dump(mode="json") if s else None for name, s in sections.items()},
            "rows_per_shard": self.rows_per_shard,
            "prompts": hashlib.sha256("".join(judge_prompts).encode()).hexdigest(),
        }
        return data


# ------------------------------------------------------------------------------------ benchmark items


def benchmark_items(cfg: EvaluateConfig) -> dict[str, list[dict[str, Any]]]:
    """Every benchmark's items (``moaa.benchmarks.base``), read and checked in the driver, by benchmark."""
    items = {b.name: b.items(cfg.section(b)) for b in cfg.benchmarks()}
    for b, rows in items.items():
        if not rows:
            raise BenchmarkFileError(f"{b}: no questions selected (check its file and limit)")
    return items


# ------------------------------------------------------------------------------- row functions: answer


def init_state(item: dict[str, Any], benchmark: str, model: str, shard: str) -> dict[str, Any]:
    return {
        **item,
        "benchmark": benchmark,
        "model": model,
        "shard": shard,
        "answers": [],
        "answer_meta": [],
        "judgments": [],
        "tokens": {},
        "error": None,
        "error_stage": None,
    }


def state_from_answers(row: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """A row of the answers table as a state ready for judging (no judgments yet): judge existing answers
    again with another judge (bench/evaluate_throughput.py does)."""
    item = {k: row[k] for k in ("question_id", "category", "turns", "reference")}
    switched = registry.get(row["benchmark"]).order_switched(row["turns"][0], seed)
    state = init_state({**item, "switched": switched}, row["benchmark"], row["model"], "")
    meta = zip(row["finish_reasons"], row["prompt_tokens"], row["completion_tokens"])
    state["answers"] = list(row["answers"])
    state["answer_meta"] = [
        {"finish_reason": f, "prompt_tokens": p, "completion_tokens": c} for f, p, c in meta
    ]
    state["error"], state["error_stage"] = row["error"], row["error_stage"]
    return state


def conversation(state: dict[str, Any], turns: int) -> Messages:
    """The first ``turns`` user turns with the model's own answers between them."""
    messages: Messages = []
    for t in range(turns):
        messages.append({"role": "user", "content": state["turns"][t]})
        if t < len(state["answers"]):
            messages.append({"role": "assistant", "content": state["answers"][t]})
    return messages


def build_answer(state: dict[str, Any], *, model: str, turn: int) -> Messages | None:
    """Turn ``turn``'s prompt: the earlier turns hold the model's own answers (MT-Bench's second turn)."""
    if state["model"] != model or state["error"] is not None or turn > len(state["turns"]):
        return None
    if len(state["answers"]) != turn - 1:
        return None
    return conversation(state, turn)


def _count(state: dict[str, Any], key: str, c: Completion) -> None:
    t = state["tokens"].setdefault(key, {"prompt_tokens": 0, "completion_tokens": 0, "calls": 0})
    t["prompt_tokens"] += c.prompt_tokens
    t["completion_tokens"] += sum(c.completion_tokens)
    t["calls"] += 1


def apply_answer(state: dict[str, Any], c: Completion, messages: Messages, *, model: str) -> None:
    if c.error is not None:
        state["error"], state["error_stage"] = c.error, f"answer/{model}"
        return
    _count(state, f"answer/{model}", c)
    state["answers"].append(c.text)
    state["answer_meta"].append(
        {
            "finish_reason": c.finish_reasons[0],
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens[0],
        }
    )


def answer_sampling(
    state: dict[str, Any], *, base: SamplingConfig, sections: dict[str, Any]
) -> SamplingConfig:
    """A row's answer sampling: the model's own, with its benchmark's rules (``sections``: the config
    section of each benchmark, by name)."""
    name = state["benchmark"]
    return registry.get(name).answer_sampling(sections[name], state, base)


# -------------------------------------------------------------------------------- row functions: judge


def judge_keys(state: dict[str, Any]) -> list[Key]:
    """The judgments a row needs now (none before it is answered, or after an answer failed)."""
    if state["error"] is not None or not state["answers"]:
        return []
    return registry.get(state["benchmark"]).judge_keys(state)


def judge_messages(state: dict[str, Any], turn: int, game: int) -> Messages:
    """The benchmark's own judge prompt for one judgment."""
    return registry.get(state["benchmark"]).judge_messages(state, turn, game)


def _done(state: dict[str, Any], who: str, role: str) -> set[Key]:
    return {(j["turn"], j["game"]) for j in state["judgments"] if j["judge"] == who and j["role"] == role}


def pending(state: dict[str, Any], who: str, role: str, judges: list[str]) -> list[Key]:
    """Judgments ``who`` still owes this row; an aggregator waits for every judge of the same key."""
    done = _done(state, who, role)
    keys = [k for k in judge_keys(state) if k not in done]
    if role == "aggregator":
        keys = [k for k in keys if all(k in _done(state, j, "judge") for j in judges)]
    return keys


def aggregate_messages(state: dict[str, Any], turn: int, game: int, judges: list[str]) -> Messages:
    """The benchmark's judge prompt with the judges' outputs appended for the aggregator."""
    messages = judge_messages(state, turn, game)
    outputs = {
        j["judge"]: j["raw"]
        for j in state["judgments"]
        if j["role"] == "judge" and (j["turn"], j["game"]) == (turn, game)
    }
    evaluations = "\n\n".join(f"Judge {i}:\n{outputs.get(name, '')}" for i, name in enumerate(judges, 1))
    extra = prompts.AGGREGATE_BENCHMARK_JUDGMENTS.format(evaluations=evaluations)
    return [*messages[:-1], {**messages[-1], "content": messages[-1]["content"] + "\n\n" + extra}]


def build_judge(state: dict[str, Any], *, benchmark: str, who: str, role: str, judges: list[str]):
    if state["benchmark"] != benchmark:
        return None
    keys = pending(state, who, role, judges)
    if role == "aggregator":
        return [aggregate_messages(state, t, g, judges) for t, g in keys]
    return [judge_messages(state, t, g) for t, g in keys]


def _role_key(role: str, who: str) -> str:
    return f"{'aggregate' if role == 'aggregator' else 'judge'}/{who}"


def apply_judge(
    state: dict[str, Any],
    cs: list[Completion],
    convs: list[Messages],
    *,
    benchmark: str,
    who: str,
    role: str,
    judges: list[str],
) -> None:
    bench = registry.get(benchmark)
    for (turn, game), c in zip(pending(state, who, role, judges), cs):
        verdict = score = score_from = None
        if c.error is None:
            _count(state, _role_key(role, who), c)
            verdict, score, score_from = bench.parse(c, state["switched"])
        state["judgments"].append(
            {
                "turn": turn,
                "game": game,
                "judge": who,
                "role": role,
                "raw": c.texts[0] if c.texts else "",
                "verdict": verdict,
                "score": score,
                "score_from": score_from,
                "shown_first": bench.shown_first(state, game),
                "prompt_tokens": c.prompt_tokens,
                "completion_tokens": c.completion_tokens[0] if c.completion_tokens else 0,
                "attempts": 1,
                "error": c.error,
            }
        )


def _unfinished(state: dict[str, Any], who: str, role: str) -> list[dict[str, Any]]:
    """Judgments of ``who`` that the benchmark sends back once (``Benchmark.unfinished``), not yet sent."""
    bench = registry.get(state["benchmark"])
    return [
        j
        for j in state["judgments"]
        if j["judge"] == who
        and j["role"] == role
        and j["error"] is None
        and j["attempts"] == 1
        and bench.unfinished(j["raw"])
    ]


def build_continuation(state: dict[str, Any], *, benchmark: str, who: str, role: str, judges: list[str]):
    """The second attempt: the same conversation, the judge's first reply, then the benchmark's
    ``continuation``."""
    if state["benchmark"] != benchmark:
        return None
    convs = []
    for j in _unfinished(state, who, role):
        t, g = j["turn"], j["game"]
        first = (
            aggregate_messages(state, t, g, judges) if role == "aggregator" else judge_messages(state, t, g)
        )
        convs.append(
            [
                *first,
                {"role": "assistant", "content": j["raw"]},
                {"role": "user", "content": registry.get(benchmark).continuation},
            ]
        )
    return convs


def apply_continuation(
    state: dict[str, Any],
    cs: list[Completion],
    convs: list[Messages],
    *,
    benchmark: str,
    who: str,
    role: str,
    judges: list[str],
) -> None:
    """The two replies are parsed together (Arena-Hard v0.1's judgment is their concatenation)."""
    for j, c in zip(_unfinished(state, who, role), cs):
        j["attempts"] = 2
        if c.error is not None:
            j["error"] = f"continuation: {c.error}"
            continue
        _count(state, _role_key(role, who), c)
        j["raw"] = f"{j['raw']}\n{c.texts[0]}"
        j["verdict"], j["score"], j["score_from"] = registry.get(benchmark).parse(
            Completion(texts=[j["raw"]]), state["switched"]
        )
        j["prompt_tokens"] += c.prompt_tokens
        j["completion_tokens"] += c.completion_tokens[0] if c.completion_tokens else 0


def build_pipeline(
    ds, turn: int, pools: dict[str, EnginePool], cfg: EvaluateConfig, benches: list[Benchmark]
):
    """One pass: every model answers its rows' turn ``turn``, then every judge (and the aggregator) judges
    what is answered and not yet judged, one step per judge and benchmark (each has its own format)."""
    sections = {b.name: cfg.section(b) for b in benches}
    for m in cfg.answer_models():
        name = m.display_name
        ds = shards.engine_stage(
            ds,
            pools,
            m,
            partial(build_answer, model=name, turn=turn),
            partial(apply_answer, model=name),
            sampling_of=partial(answer_sampling, base=m.sampling, sections=sections),
        )
    return judge_steps(ds, pools, cfg.judge, benches)


def judge_steps(ds, pools: dict[str, EnginePool], jc: EvalJudge, benches: list[Benchmark]):
    """The judge steps: every judge, then the aggregator (MoA judge), one step per judged benchmark, each
    constrained to that benchmark's format."""
    names = [m.display_name for m in jc.judges]
    steps = [(m, "judge") for m in jc.judges] + ([(jc.aggregator, "aggregator")] if jc.aggregator else [])
    for m, role in steps:
        for b in benches:
            if not b.judged:
                continue
            kw = {"benchmark": b.name, "who": m.display_name, "role": role, "judges": names}
            if jc.constrained:
                structured, max_tokens = b.judge_format(jc.max_explanation_chars)
            else:
                structured, max_tokens = b.free_format(m.sampling.max_tokens)
            ds = shards.engine_stage(
                ds,
                pools,
                m,
                partial(build_judge, **kw),
                partial(apply_judge, **kw),
                multi=True,
                structured=structured,
                sampling=m.sampling.model_copy(update={"max_tokens": max_tokens}),
                logprobs=b.judge_logprobs,
            )
            if b.continuation is not None and not jc.constrained:  # a constrained judge always finishes
                ds = shards.engine_stage(
                    ds,
                    pools,
                    m,
                    partial(build_continuation, **kw),
                    partial(apply_continuation, **kw),
                    multi=True,
                    sampling=m.sampling,
                )
    return ds


# -------------------------------------------------------------------------------------- output rows


def answer_row(state: dict[str, Any]) -> dict[str, Any]:
    meta = state["answer_meta"]
    messages = conversation(state, len(state["answers"]) + (1 if state["error"] else 0))
    return {
        "model": state["model"],
        "benchmark": state["benchmark"],
        "question_id": state["question_id"],
        "category": state["category"],
        "turns": state["turns"],
        "answers": state["answers"],
        "messages": messages,
        "reference": state["reference"],
        "finish_reasons": [m["finish_reason"] for m in meta],
        "prompt_tokens": [m["prompt_tokens"] for m in meta],
        "completion_tokens": [m["completion_tokens"] for m in meta],
        "error": state["error"],
        "error_stage": state["error_stage"],
    }


def judgment_rows(state: dict[str, Any], final_role: str) -> list[dict[str, Any]]:
    keys = ("model", "benchmark", "question_id")
    return [
        {**{k: state[k] for k in keys}, **j, "final": j["role"] == final_role}
        for j in sorted(state["judgments"], key=lambda j: (j["turn"], j["game"], j["role"] != "judge"))
    ]


def commit(name: str, states: list[dict[str, Any]], final_role: str, provenance: dict[str, Any]):
    states = sorted(states, key=lambda s: s["question_id"])
    answers = [{**answer_row(s), **provenance} for s in states]
    judgments = [{**r, **provenance} for s in states for r in judgment_rows(s, final_role)]
    tokens: dict[str, dict[str, int]] = {}
    for s in states:
        stage.add_tokens(tokens, s["tokens"])
    return (
        {
            "answers": schemas.to_table(answers, "eval_answers"),
            "judgments": schemas.to_table(judgments, "eval_judgments"),
        },
        {
            "rows": len(states),
            "errors": sum(s["error"] is not None for s in states),
            "judge_errors": sum(j["error"] is not None for s in states for j in s["judgments"]),
            "tokens": tokens,
        },
    )


# ------------------------------------------------------------------------------------------- scoring


def results_rows(cfg: EvaluateConfig, answers: list[dict[str, Any]], judgments: list[dict[str, Any]]):
    """One results row per model and benchmark."""
    by_answers: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for a in answers:
        by_answers[(a["model"], a["benchmark"])].append(a)
    by_finals: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    by_judge_tokens: dict[tuple[str, str], dict[str, dict[str, int]]] = defaultdict(dict)
    errors: dict[tuple[str, str], int] = defaultdict(int)
    for j in judgments:
        key = (j["model"], j["benchmark"])
        if j["final"] and j["error"] is None:  # a failed call has no output to parse: counted apart
            by_finals[key].append(j)
        errors[key] += j["error"] is not None
        role = "aggregate" if j["role"] == "aggregator" else "judge"
        stage.add_tokens(
            by_judge_tokens[key],
            {
                f"{role}/{j['judge']}": {
                    "prompt_tokens": j["prompt_tokens"],
                    "completion_tokens": j["completion_tokens"],
                    "calls": 1,
                }
            },
        )
    caveat = judge_caveat(cfg)
    rows = []
    for m in cfg.answer_models():
        for bench in cfg.benchmarks():
            b = bench.name
            key = (m.display_name, b)
            ans, finals = by_answers[key], by_finals[key]
            r = bench.score(
                cfg.section(bench), finals, ans, model=m.display_name, bootstrap=cfg.bootstrap, ci=cfg.ci
            )
            answer_tokens = {
                f"answer/{m.display_name}": {
                    "prompt_tokens": sum(sum(a["prompt_tokens"]) for a in ans),
                    "completion_tokens": sum(sum(a["completion_tokens"]) for a in ans),
                    "calls": sum(len(a["completion_tokens"]) for a in ans),
                }
            }
            judge_tokens = by_judge_tokens[key]
            _, usd = stage.priced({**answer_tokens, **judge_tokens}, cfg.prices)
            finals_n = len(finals)
            # the judge's caveat on the rows it judged (a benchmark scored by code has no judge)
            note = "; ".join(n for n in (r.get("note"), caveat if bench.judged else None) if n) or None
            rows.append(
                {
                    "model": m.display_name,
                    "benchmark": b,
                    "metric": r["metric"],
                    "score": r["score"],
                    "lower": r["lower"],
                    "upper": r["upper"],
                    "ci": cfg.ci,
                    "standard_error": r["standard_error"],
                    "questions": len(ans),
                    "answer_errors": sum(a["error"] is not None for a in ans),
                    "judged": r["judged"],
                    "unparsed": r["unparsed"],
                    "judge_errors": errors[key],
                    "parse_rate": (finals_n - r["unparsed"]) / finals_n if finals_n else None,
                    **bench.position_stats(finals),
                    "lc_win_rate": r.get("lc_win_rate"),
                    "answer_tokens": sum(t["completion_tokens"] for t in answer_tokens.values()),
                    "judge_tokens": sum(
                        t["prompt_tokens"] + t["completion_tokens"] for t in judge_tokens.values()
                    ),
                    "usd": usd,
                    # a benchmark scored by code says what scored it (the judge never saw its rows)
                    "judge": cfg.judge.describe()
                    if bench.judged
                    else r.get("judge") or "none (scored by code)",
                    "note": note,
                    "details": json.dumps(r["details"], sort_keys=True),
                }
            )
    return rows


def judge_caveat(cfg: EvaluateConfig) -> str | None:
    """The warning every result of a judge built on the embedded 135M model carries."""
    embedded = [m.model for m in cfg.judge.models() if is_embedded(m.model)]
    if any(posixpath.basename(p) == smollm.NAME for p in embedded):
        return (
            "judged by the embedded SmolLM2-135M, which is at chance as a judge (LLMBar): these numbers show "
            "the mechanics, not quality"
        )
    if embedded:
        return "judged by a random tiny model: its verdicts are noise, and so are these numbers"
    return None


# ------------------------------------------------------------------------------------------- driver


def plan(cfg: EvaluateConfig) -> list[shards.Shard]:
    """Shards of ``rows_per_shard`` questions per model and benchmark; the benchmark files are read and
    checked here, before anything is written or started."""
    items = benchmark_items(cfg)
    for b in cfg.benchmarks():
        b.check_files(cfg.section(b))
    sources = {b.name: b.source(cfg.section(b)) for b in cfg.benchmarks()}
    planned = []
    for m in cfg.answer_models():
        for b, rows in items.items():
            for i, start in enumerate(range(0, len(rows), cfg.rows_per_shard)):
                name = f"{b}/{m.display_name}/part-{i:05d}.parquet"
                chunk = rows[start : start + cfg.rows_per_shard]
                params = {"benchmark": b, "model": m.display_name, "items": chunk, "shard": name}
                turns = max(len(r["turns"]) for r in chunk)
                planned.append(shards.Shard(name, sources[b], rows=len(chunk), turns=turns, params=params))
    return planned


def load_items(source: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        init_state(item, params["benchmark"], params["model"], params["shard"]) for item in params["items"]
    ]


def _read_committed(out: str, manifest: dict[str, Any], folder: str) -> list[dict[str, Any]]:
    """The rows of every committed shard's file in ``folder`` (the manifest lists them)."""
    files = sorted(f for s in manifest["shards"].values() for f in s["files"] if f.startswith(folder + "/"))
    return [r for f in files for r in storage.read_parquet(storage.join(out, f)).to_pylist()]


COLUMNS = [
    ("model", "{}"),
    ("benchmark", "{}"),
    ("score", "{:.2f}"),
    ("lower", "{:.2f}"),
    ("upper", "{:.2f}"),
    ("judged", "{}"),
    ("unparsed", "{}"),
    ("parse_rate", "{:.2f}"),
    ("first_position_rate", "{:.2f}"),
    ("answer_errors", "{}"),
]


def table(rows: list[dict[str, Any]]) -> str:
    head = [c for c, _ in COLUMNS]
    body = [[fmt.format(r[c]) if r.get(c) is not None else "-" for c, fmt in COLUMNS] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    return "\n".join("  ".join(x.rjust(w) for x, w in zip(line, widths)) for line in [head, *body])


class EvaluateMetrics(ShardMetrics):
    judge_errors: int = Field(0, description="Judge calls that failed (their items count as unjudged).")
    judge: str | None = Field(None, description="The judge, in words.")
    caveat: str | None = Field(
        None, description="Why the scores may not mean quality (a tiny or chance judge)."
    )
    results: list[dict[str, Any]] = Field(
        default_factory=list,
        description="One row per model and benchmark: the columns of schemas/eval_results.json but details.",
    )


class Evaluate(Stage[EvaluateConfig, EvaluateMetrics]):
    name = NAME
    config = EvaluateConfig
    metrics = EvaluateMetrics

    def preflight(self, cfg: EvaluateConfig) -> None:
        benchmark_items(cfg)  # the benchmark files: missing ones named with the command that fetches them

    def work(self, work: Work, pools: dict[str, EnginePool] | None = None) -> Outcome:
        """Answer and judge every benchmark slice for every model (resumable shard by shard), then score them
        into one results table."""
        cfg, out = work.cfg, work.out
        assert isinstance(cfg, EvaluateConfig)
        planned = plan(cfg)  # benchmark files are checked before the output folder is touched
        benches = cfg.benchmarks()
        manifest, committed = shards.run(
            work,
            planned,
            load=load_items,
            pipeline=partial(build_pipeline, cfg=cfg, benches=benches),
            commit=partial(commit, final_role=cfg.judge.final_role(), provenance=work.provenance()),
            models=cfg.engine_models(),
            pools=pools,
        )
        answers = _read_committed(out, manifest, "answers")
        judgments = _read_committed(out, manifest, "judgments")
        rows = results_rows(cfg, answers, judgments)
        results = {
            "results": storage.join(out, "results.parquet"),
            "results_json": storage.join(out, "results.json"),
        }
        storage.write_parquet(
            schemas.to_table([{**r, **work.provenance()} for r in rows], "eval_results"), results["results"]
        )
        storage.write_json(results["results_json"], rows)
        tot = shards.totals(manifest)
        return Outcome(
            manifest,
            rows=tot["rows"],
            errors=tot["errors"],
            outputs={
                "answers": storage.join(out, "answers"),
                "judgments": storage.join(out, "judgments"),
                **results,
            },
            tokens=tot["tokens"],
            prices=cfg.prices,
            metrics=EvaluateMetrics(
                **shards.progress(manifest, committed),
                judge_errors=tot.get("judge_errors", 0),
                judge=cfg.judge.describe(),
                caveat=judge_caveat(cfg),
                results=[{k: v for k, v in r.items() if k != "details"} for r in rows],
            ),
        )

    def one_line(self, s: Summary) -> str:
        m = self.read(s)
        lines = [
            f"{NAME}: {s.rows} questions ({s.errors} answer errors, {m.judge_errors} judge errors) in "
            f"{m.shards} shards ({m.shards - m.shards_this_run} already done), judge {m.judge}, "
            f"{s.wall_s} s, ${s.usd:.2f} -> {s.outputs['results']}",
            table(m.results),
        ]
        if m.caveat:
            lines.append(f"note: {m.caveat}")
        return "\n".join(lines)

    def key_numbers(self, s: Summary) -> str:
        m = self.read(s)
        parts = []
        if m.results:
            models = sorted({str(r.get("model")) for r in m.results})
            parts.append(f"{len(m.results)} results ({len(models)} models)")
        if m.judge is not None:
            parts.append(f"judge {m.judge}")
        return ", ".join(parts)

    def brief(self, s: Summary) -> dict[str, Any]:
        m = self.read(s)
        keep = ("model", "benchmark", "score", "lower", "upper", "judged", "parse_rate")
        return {"results": [{k: r[k] for k in keep} for r in m.results], "caveat": m.caveat}


STAGE = Evaluate()
run = STAGE.run
one_line = STAGE.one_line
