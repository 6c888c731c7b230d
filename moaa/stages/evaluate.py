"""Evaluation: AlpacaEval 2, Arena-Hard and MT-Bench style scores for any set of models, with any judge.

Input: the benchmarks' own files (``moaa fetch-benchmarks`` puts them in ``data/benchmarks/``; a config names
any path or URI) and a list of models: hub ids, local folders or models of this run (``run:train_sft``,
``run:train_dpo@1``). Output, in ``<out>/``:

    answers/<benchmark>/<model>/part-*.parquet      schema eval_answers: every answer, turn by turn
    judgments/<benchmark>/<model>/part-*.parquet    schema eval_judgments: every judge and aggregator call
    results.parquet, results.json                   schema eval_results: one row per model and benchmark
    manifest.json, summary.json

How it runs (``moaa.engine.shards`` is the engine; a shard is one slice of one benchmark for one model): each
model answers its rows (MT-Bench's second turn is a second pass that holds the model's own first answer),
then the judge steps score what is answered. The judge is one engine (``judge.judges: [one model]``) or the
MoA judge (several judges, then ``judge.aggregator`` reads their outputs and gives the final judgment), so
MoA-as-evaluator is measured exactly like a single judge. Judges that are our engines are constrained to the
benchmark's output format (vLLM structured outputs), so that every verdict parses; ``constrained: false``
lets a strong judge write freely, and unparsed verdicts are then counted (an Arena-Hard judgment without a
label is first sent back once to be finished, as in v0.1).

What each benchmark does (the formulas are in ``moaa.benchmarks``, each read from its reference code):
- ``mt_bench``: two turns per question, answer temperature per category (FastChat's ``temperature_config``),
  each turn graded 1-10 with FastChat's ``single-v1`` prompts (``single-math-v1`` with the GPT-4 reference for
  math, reasoning and coding), rating parsed from ``[[x]]`` then ``[x]``; mean per turn and overall.
- ``arena_hard``: two games per question against the baseline's answer (baseline as A, then as B), verdicts
  ``A>>B .. B>>A`` from ``[[...]]``, a strong verdict is 3 battles; score = the Bradley-Terry win rate
  against the baseline with a bootstrap interval (``ci``), optionally with style control.
- ``alpaca_eval``: each answer against the reference model's answer, judged with the ``alpaca_eval_clf``
  prompt in a seeded random order; the preference comes from the judge's first-token logprobs of ``m`` and
  ``M`` (weighted_alpaca_eval_gpt4_turbo), or from its choice when neither is among them; win rate (ties
  0.5) with its standard error. The length-controlled win rate needs AlpacaEval's own GLM data (see
  ``AlpacaEval.lc_data``); without it the result says "LC not computed" and why.
"""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
import re
import statistics
import tempfile
from collections import defaultdict
from functools import partial
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, field_validator, model_validator

from moaa.benchmarks import alpaca_eval, arena_hard, mt_bench
from moaa.benchmarks.files import DEFAULT_DIR, SAMPLE_DIR, fetch_command
from moaa.core import layout, schemas, stage, storage
from moaa.core.config import Config, InputPath, UserError
from moaa.core.stage import Outcome, Price, ShardMetrics, Stage, StageConfig, Summary, Work
from moaa.embedded import is_embedded, smollm
from moaa.engine import shards
from moaa.engine.settings import Completion, ModelConfig, SamplingConfig
from moaa.engine.vllm import EnginePool
from moaa.judging import prompts

NAME = "evaluate"
BENCHMARKS = ("mt_bench", "arena_hard", "alpaca_eval")
Messages = list[dict[str, str]]
Key = tuple[int, int]  # (turn, game) of one judgment; game 0 where a benchmark has one game per turn


class MTBench(Config):
    """MT-Bench (lm-sys/FastChat llm_judge): 80 two-turn questions in 8 categories."""

    questions: InputPath = Field(
        f"{SAMPLE_DIR}/mt_bench/question.jsonl",
        description="FastChat question.jsonl; the default is the shipped excerpt (2 per category), "
        "`moaa fetch-benchmarks` puts all 80 in data/benchmarks/.",
    )
    references: InputPath | None = Field(
        f"{SAMPLE_DIR}/mt_bench/reference_answer_gpt-4.jsonl",
        description="FastChat reference_answer/gpt-4.jsonl (math, reasoning, coding are graded against it); "
        "null: the questions' own 'reference' fields.",
    )
    per_category: int | None = Field(
        1, ge=1, description="Questions per category (file order); null: all 80 (10 per category)."
    )
    max_tokens: int | None = Field(
        None,
        ge=1,
        description="Most tokens per answer (FastChat: 1024); null: each model's sampling.max_tokens.",
    )
    category_temperature: bool = Field(
        True,
        description="Answer with FastChat's temperature per category (0.7 writing/roleplay, 0.0 extraction/"
        "math/coding/reasoning, 0.1 stem/humanities); false: each model's own temperature.",
    )


class ArenaHard(Config):
    """Arena-Hard v0.1 (lmarena/arena-hard-auto): 500 hard prompts judged against a baseline's answers."""

    questions: InputPath = Field(
        f"{SAMPLE_DIR}/arena_hard/question.jsonl",
        description="question.jsonl; the default is the shipped excerpt (8 questions), "
        "`moaa fetch-benchmarks` puts all 500 in data/benchmarks/.",
    )
    baseline_answers: InputPath = Field(
        f"{SAMPLE_DIR}/arena_hard/model_answer_gpt-4-0314.jsonl",
        description="The baseline's model_answer/<model>.jsonl.",
    )
    baseline: str = Field(arena_hard.ARENA_BASELINE, description="The baseline's name in the results.")
    limit: int | None = Field(4, ge=1, description="First N questions; null: all 500.")
    max_tokens: int | None = Field(
        None, ge=1, description="Most tokens per answer (arena-hard-auto: 4096); null: the model's own."
    )
    temperature: float | None = Field(
        0.0, ge=0, description="Answer temperature (arena-hard-auto: 0.0); null: each model's own."
    )
    style_control: bool = Field(
        False,
        description="Also fit length and markdown features in the Bradley-Terry model (arena-hard-auto "
        "--control-features length markdown) and report that score as style_controlled_score.",
    )


class AlpacaEval(Config):
    """AlpacaEval 2 (tatsu-lab/alpaca_eval): 805 instructions against a reference model's outputs."""

    reference_outputs: InputPath = Field(
        f"{SAMPLE_DIR}/alpaca_eval/gpt4_1106_preview.model_outputs.json",
        description="The reference model's model_outputs.json (AlpacaEval 2: gpt4_1106_preview); the "
        "default is the shipped excerpt (16 instructions), `moaa fetch-benchmarks` puts all 805 in "
        "data/benchmarks/.",
    )
    limit: int | None = Field(8, ge=1, description="First N instructions; null: all 805.")
    max_tokens: int | None = Field(None, ge=1, description="Most tokens per answer; null: the model's own.")
    seed: int = Field(0, description="Seed of the per-instruction random order of the two outputs.")
    lc_data: InputPath | None = Field(
        None,
        description="AlpacaEval's GLM data for the length-controlled win rate; null: LC is not computed "
        "(the result says why).",
    )


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


class EvaluateConfig(StageConfig):
    """Benchmarks for a list of models. Defaults: the embedded SmolLM2 against this run's DPO model on a
    slice of each benchmark, judged by SmolLM2 (the mechanics, not quality: a 135M judge is at chance)."""

    models: list[ModelConfig] = Field(
        default_factory=_default_models,
        description="Models to evaluate: hub ids, folders, or models of this run (run:train_sft, "
        "run:train_dpo@1); their sampling is used except where a benchmark sets its own.",
    )
    mt_bench: MTBench | None = Field(default_factory=MTBench, description="MT-Bench; null: skip it.")
    arena_hard: ArenaHard | None = Field(default_factory=ArenaHard, description="Arena-Hard; null: skip it.")
    alpaca_eval: AlpacaEval | None = Field(
        default_factory=AlpacaEval, description="AlpacaEval 2; null: skip."
    )
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

    @field_validator("models")
    @classmethod
    def _some_models(cls, v: list[ModelConfig]) -> list[ModelConfig]:
        if not v:
            raise ValueError("models must name at least one model to evaluate")
        return v

    @model_validator(mode="after")
    def _check(self) -> EvaluateConfig:
        if not self.benchmarks():
            raise ValueError(
                "every benchmark is null: keep at least one of mt_bench, arena_hard, alpaca_eval"
            )
        names = [m.display_name for m in self.answer_models()]
        others = {self.arena_hard.baseline} if self.arena_hard else set()
        if len(set(names)) != len(names) or others & set(names):
            raise ValueError(
                f"models need distinct display names, none equal to the baseline's (got {names}); set 'name'"
            )
        return self

    def benchmarks(self) -> list[str]:
        return [b for b in BENCHMARKS if getattr(self, b) is not None]

    def answer_models(self) -> list[ModelConfig]:
        """The models to evaluate, ``run:`` references resolved (display name e.g. ``train_dpo-r1``)."""
        return [layout.resolve_engine(m, self.runs_dir, self.run_id, self.round) for m in self.models]

    def engine_models(self) -> list[ModelConfig]:
        return [*self.answer_models(), *self.judge.models()]

    def fingerprint_data(self) -> Any:
        judge_prompts = [
            alpaca_eval.ALPACA_EVAL_CLF,
            arena_hard.ARENA_HARD_SYSTEM,
            arena_hard.ARENA_HARD_TEMPLATE,
            json.dumps([mt_bench.MT_BENCH_SINGLE_V1, mt_bench.MT_BENCH_SINGLE_MATH_V1]),
            json.dumps([mt_bench.MT_BENCH_SINGLE_V1_MULTI_TURN, mt_bench.MT_BENCH_SINGLE_MATH_V1_MULTI_TURN]),
            prompts.AGGREGATE_BENCHMARK_JUDGMENTS,
        ]
        data = {
            "models": [m.output_settings() for m in self.answer_models()],
            "judges": [m.output_settings() for m in self.judge.judges],
            "aggregator": self.judge.aggregator.output_settings() if self.judge.aggregator else None,
            "constrained": self.judge.constrained,
            "max_explanation_chars": self.judge.max_explanation_chars,
            **{b: getattr(self, b).model_dump(mode="json") if getattr(self, b) else None for b in BENCHMARKS},
            "rows_per_shard": self.rows_per_shard,
            "prompts": hashlib.sha256("".join(judge_prompts).encode()).hexdigest(),
        }
        return data


# ------------------------------------------------------------------------------------ benchmark items


class BenchmarkFileError(UserError, ValueError):
    """A benchmark file that is missing or not in its published layout; the message names it and the fix."""


def _local_copy(path: str) -> str:
    """A local path for a local file; a URI's (small) file copied next to the driver (the readers take
    local files)."""
    if not storage.is_uri(path):
        return path
    fs, p = storage.resolve(path)
    with (
        fs.open_input_stream(p) as f,
        tempfile.NamedTemporaryFile(delete=False, suffix=posixpath.basename(p)) as t,
    ):
        t.write(f.read())
    return t.name


def _read(reader, path: str, key: str, *args: Any):
    """Run a ``moaa.benchmarks`` reader on a local path or a URI, turning failures into messages that name
    the setting and the fix."""
    if not storage.exists(path):
        raise BenchmarkFileError(
            f"{key}: benchmark file {path} not found: `{fetch_command(path)}` fetches the published files "
            f"(pinned, sha256-checked; --from <folder> copies them from a mirror), or set {key}=<path or "
            f"URI>; {key.split('.')[0]}=null skips that benchmark"
        )
    try:
        return reader(_local_copy(path), *args)
    except (ValueError, KeyError, TypeError) as e:
        raise BenchmarkFileError(
            f"{key}: {e} (expected the published layout, see moaa/benchmarks/)"
        ) from None


def _enough(key: str, path: str, asked: int | None, got: int, unit: str) -> None:
    """A selection larger than its file is an error rather than a silently smaller benchmark; the shipped
    excerpt holds a few questions, and the message says how to get the published files instead."""
    rel = path.replace("\\", "/")
    excerpt = f"{SAMPLE_DIR}/" in rel or rel.startswith(f"{SAMPLE_DIR}/")
    if got >= (asked or 0) and not (asked is None and excerpt):
        return
    wanted = "all of them" if asked is None else f"{asked} asked"
    if excerpt:
        full = f"{DEFAULT_DIR}/{rel.split(SAMPLE_DIR + '/', 1)[-1]}"
        fix = (
            "it is the shipped excerpt: `moaa fetch-benchmarks` puts the published files in "
            f"{DEFAULT_DIR}/, then set {key}={full}"
        )
    else:
        fix = "ask for fewer"
    raise BenchmarkFileError(f"{key}: {path} holds {got} {unit}, {wanted}: {fix}")


def alpaca_switched(instruction: str, seed: int) -> bool:
    """Whether the model's output is shown first (as "m"): AlpacaEval randomizes the order per instruction
    with a seeded draw, so that a judge's position bias spreads over both sides."""
    return hashlib.sha256(f"{seed}\0{instruction}".encode()).digest()[0] % 2 == 1


def benchmark_items(cfg: EvaluateConfig) -> dict[str, list[dict[str, Any]]]:
    """Every benchmark's questions, read and checked in the driver: ``{question_id, category, turns,
    reference, switched}`` (``reference``: MT-Bench's reference answers, Arena-Hard's baseline answer,
    AlpacaEval's reference output)."""
    items: dict[str, list[dict[str, Any]]] = {}
    if (mt := cfg.mt_bench) is not None:
        qs = _read(mt_bench.mt_bench_questions, mt.questions, "mt_bench.questions", mt.references)
        per_category = (
            min(sum(q["category"] == c for q in qs) for c in {q["category"] for q in qs}) if qs else 0
        )
        _enough("mt_bench.questions", mt.questions, mt.per_category, per_category, "questions per category")
        taken: dict[str, int] = defaultdict(int)
        items["mt_bench"] = []
        for q in qs:
            if mt.per_category is not None and taken[q["category"]] >= mt.per_category:
                continue
            taken[q["category"]] += 1
            items["mt_bench"].append(
                {
                    "question_id": str(q["question_id"]),
                    "category": q["category"],
                    "turns": q["turns"],
                    "reference": q["reference"],
                    "switched": False,
                }
            )
    if (ah := cfg.arena_hard) is not None:
        qs = _read(arena_hard.arena_hard_questions, ah.questions, "arena_hard.questions")
        base = _read(arena_hard.arena_hard_answers, ah.baseline_answers, "arena_hard.baseline_answers")
        _enough("arena_hard.questions", ah.questions, ah.limit, len(qs), "questions")
        qs = qs[: ah.limit] if ah.limit else qs
        missing = [q["uid"] for q in qs if q["uid"] not in base]
        if missing:
            raise BenchmarkFileError(
                f"arena_hard.baseline_answers: {ah.baseline_answers} has no answer for {len(missing)} "
                f"question(s), e.g. uid {missing[0]!r}: use the answers file of the same Arena-Hard version"
            )
        items["arena_hard"] = [
            {
                "question_id": q["uid"],
                "category": q["cluster"],
                "turns": [q["prompt"]],
                "reference": [base[q["uid"]]],
                "switched": False,
            }
            for q in qs
        ]
    if (ae := cfg.alpaca_eval) is not None:
        outs = _read(alpaca_eval.alpaca_eval_outputs, ae.reference_outputs, "alpaca_eval.reference_outputs")
        _enough("alpaca_eval.reference_outputs", ae.reference_outputs, ae.limit, len(outs), "instructions")
        outs = outs[: ae.limit] if ae.limit else outs
        items["alpaca_eval"] = [
            {
                "question_id": f"{i:04d}",
                "category": o["dataset"],
                "turns": [o["instruction"]],
                "reference": [o["output"]],
                "switched": alpaca_switched(o["instruction"], ae.seed),
            }
            for i, o in enumerate(outs)
        ]
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
    switched = row["benchmark"] == "alpaca_eval" and alpaca_switched(row["turns"][0], seed)
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


def answer_sampling(state: dict[str, Any], *, base: SamplingConfig, rules: dict[str, dict[str, Any]]):
    """A row's answer sampling: the model's own, with the benchmark's max_tokens and temperature (MT-Bench:
    FastChat's temperature per category)."""
    rule = rules[state["benchmark"]]
    update: dict[str, Any] = {}
    if rule.get("max_tokens"):
        update["max_tokens"] = rule["max_tokens"]
    if rule.get("category_temperature"):
        update["temperature"] = mt_bench.MT_BENCH_TEMPERATURE.get(state["category"], base.temperature)
    if rule.get("temperature") is not None:
        update["temperature"] = rule["temperature"]
    return base.model_copy(update=update)


# -------------------------------------------------------------------------------- row functions: judge


def judge_keys(state: dict[str, Any]) -> list[Key]:
    """The judgments a row needs now: every answered MT-Bench turn; Arena-Hard's two games; AlpacaEval's
    one comparison."""
    if state["error"] is not None or not state["answers"]:
        return []
    if state["benchmark"] == "mt_bench":
        return [(t, 0) for t in range(1, len(state["answers"]) + 1)]
    if state["benchmark"] == "arena_hard":
        return [(1, 1), (1, 2)]
    return [(1, 0)]


def shown_first(state: dict[str, Any], game: int) -> str | None:
    """Whose answer the judge reads first: Arena-Hard game 1 shows the baseline as A, game 2 the model;
    AlpacaEval shows the reference as "m" unless the row's order is switched."""
    if state["benchmark"] == "arena_hard":
        return "reference" if game == 1 else "model"
    if state["benchmark"] == "alpaca_eval":
        return "model" if state["switched"] else "reference"
    return None


def _chatml(text: str) -> Messages:
    """Messages of a ChatML text (AlpacaEval's prompt files are ChatML, system turn included)."""
    found = re.findall(r"<\|im_start\|>(system|user|assistant)\n(.*?)\n?<\|im_end\|>", text, re.S)
    return [{"role": role, "content": content} for role, content in found]


ALPACA_MESSAGES = _chatml(alpaca_eval.ALPACA_EVAL_CLF)


def judge_messages(state: dict[str, Any], turn: int, game: int) -> Messages:
    """The benchmark's own judge prompt for one judgment."""
    b, q, a, ref = state["benchmark"], state["turns"], state["answers"], state["reference"]
    if b == "mt_bench":
        math_like = state["category"] in mt_bench.NEED_REFERENCE and bool(ref)
        refs = {f"ref_answer_{i + 1}": r for i, r in enumerate(ref or [])} if math_like else {}
        if turn == 1:
            p = mt_bench.MT_BENCH_SINGLE_MATH_V1 if math_like else mt_bench.MT_BENCH_SINGLE_V1
            user = p["template"].format(question=q[0], answer=a[0], **refs)
        else:
            p = (
                mt_bench.MT_BENCH_SINGLE_MATH_V1_MULTI_TURN
                if math_like
                else mt_bench.MT_BENCH_SINGLE_V1_MULTI_TURN
            )
            user = p["template"].format(
                question_1=q[0], question_2=q[1], answer_1=a[0], answer_2=a[1], **refs
            )
        return [{"role": "system", "content": p["system"]}, {"role": "user", "content": user}]
    if b == "arena_hard":
        first, second = (ref[0], a[0]) if game == 1 else (a[0], ref[0])
        user = arena_hard.ARENA_HARD_TEMPLATE.format(question_1=q[0], answer_1=first, answer_2=second)
        return [
            {"role": "system", "content": arena_hard.ARENA_HARD_SYSTEM},
            {"role": "user", "content": user},
        ]
    out_1, out_2 = (a[0], ref[0]) if state["switched"] else (ref[0], a[0])
    # str.replace, as alpaca_eval fills its templates: the braces around the placeholders are literal.
    fill = {"{instruction}": q[0], "{output_1}": out_1, "{output_2}": out_2}
    messages = []
    for m in ALPACA_MESSAGES:
        content = m["content"]
        for k, v in fill.items():
            content = content.replace(k, v)
        messages.append({"role": m["role"], "content": content})
    return messages


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


def parse_judgment(
    benchmark: str, c: Completion, switched: bool
) -> tuple[str | None, float | None, str | None]:
    """(verdict, score, score_from) of one judge output: MT-Bench the rating (score = rating); Arena-Hard the
    label; AlpacaEval the choice m/M and the preference in [1, 2] (2 = the model preferred) from the
    first-token logprobs, else from the choice."""
    text = c.text
    if benchmark == "mt_bench":
        rating = mt_bench.parse_rating(text)
        return (None, None, None) if rating is None else (f"{rating:g}", rating, "text")
    if benchmark == "arena_hard":
        return arena_hard.parse_arena_verdict(text), None, None
    choice = text.strip() if text.strip() in ("m", "M") else None
    pref = alpaca_eval.alpaca_preference(c.first_logprobs, switched) if c.first_logprobs else None
    if pref is not None:
        return choice, pref, "logprobs"
    if choice is None:
        return None, None, None
    # "m" names output_1: the reference, or the model when the order is switched.
    raw = 1.0 if choice == "m" else 2.0
    return choice, (3.0 - raw if switched else raw), "choice"


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
    for (turn, game), c in zip(pending(state, who, role, judges), cs):
        verdict = score = score_from = None
        if c.error is None:
            _count(state, f"{'aggregate' if role == 'aggregator' else 'judge'}/{who}", c)
            verdict, score, score_from = parse_judgment(benchmark, c, state["switched"])
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
                "shown_first": shown_first(state, game),
                "prompt_tokens": c.prompt_tokens,
                "completion_tokens": c.completion_tokens[0] if c.completion_tokens else 0,
                "attempts": 1,
                "error": c.error,
            }
        )


def _unfinished(state: dict[str, Any], who: str, role: str) -> list[dict[str, Any]]:
    """Arena-Hard judgments of ``who`` with no verdict label at all, not yet sent back: v0.1 sends those back
    once (number_of_judgment_attempts: 2). Two different labels are not sent back (inconsistent, as v0.1)."""
    return [
        j
        for j in state["judgments"]
        if j["judge"] == who
        and j["role"] == role
        and j["error"] is None
        and j["attempts"] == 1
        and not [m for m in arena_hard.ARENA_VERDICT_PATTERN.findall(j["raw"]) if m]
    ]


def build_continuation(state: dict[str, Any], *, benchmark: str, who: str, role: str, judges: list[str]):
    """Arena-Hard v0.1's second attempt: the same conversation, the judge's first reply, then
    ``arena_hard.ARENA_HARD_CONTINUE``."""
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
                {"role": "user", "content": arena_hard.ARENA_HARD_CONTINUE},
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
    """The two replies are parsed together, as v0.1 does (its judgment is their concatenation)."""
    for j, c in zip(_unfinished(state, who, role), cs):
        j["attempts"] = 2
        if c.error is not None:
            j["error"] = f"continuation: {c.error}"
            continue
        _count(state, f"{'aggregate' if role == 'aggregator' else 'judge'}/{who}", c)
        j["raw"] = f"{j['raw']}\n{c.texts[0]}"
        j["verdict"] = arena_hard.parse_arena_verdict(j["raw"])
        j["prompt_tokens"] += c.prompt_tokens
        j["completion_tokens"] += c.completion_tokens[0] if c.completion_tokens else 0


def judge_format(benchmark: str, max_chars: int) -> tuple[dict[str, Any], int]:
    """(vLLM structured-output constraint, max_tokens) of a constrained judge: a bounded explanation
    without brackets, then the benchmark's own verdict syntax (so the parsers always find it)."""
    if benchmark == "alpaca_eval":
        return {"choice": ["m", "M"]}, 1
    tail = r"Rating: \[\[(10|[1-9])\]\]" if benchmark == "mt_bench" else r"\[\[(A>>B|A>B|A=B|B>A|B>>A)\]\]"
    # A character is at most 4 tokens (byte-level BPE on 4-byte UTF-8), plus the fixed text.
    return {"regex": r"[^\[\]]{0," + str(max_chars) + "}" + tail}, 4 * max_chars + 32


# AlpacaEval's judge reads the first token's top logprobs (weighted_alpaca_eval_gpt4_turbo asks for 5; vLLM
# gives up to 20 by default, and more of them makes it likelier that both "m" and "M" are there).
ALPACA_TOP_LOGPROBS = 20


def build_pipeline(ds, turn: int, pools: dict[str, EnginePool], cfg: EvaluateConfig, benches: list[str]):
    """One pass: every model answers its rows' turn ``turn``, then every judge (and the aggregator) judges
    what is answered and not yet judged, one step per judge and benchmark (each has its own format)."""
    rules = {b: getattr(cfg, b).model_dump() for b in benches}
    for m in cfg.answer_models():
        name = m.display_name
        ds = shards.engine_stage(
            ds,
            pools,
            m,
            partial(build_answer, model=name, turn=turn),
            partial(apply_answer, model=name),
            sampling_of=partial(answer_sampling, base=m.sampling, rules=rules),
        )
    return judge_steps(ds, pools, cfg.judge, benches)


def judge_steps(ds, pools: dict[str, EnginePool], jc: EvalJudge, benches: list[str]):
    """The judge steps: every judge, then the aggregator (MoA judge), one step per benchmark, each
    constrained to that benchmark's format."""
    names = [m.display_name for m in jc.judges]
    steps = [(m, "judge") for m in jc.judges] + ([(jc.aggregator, "aggregator")] if jc.aggregator else [])
    for m, role in steps:
        for b in benches:
            kw = {"benchmark": b, "who": m.display_name, "role": role, "judges": names}
            structured, max_tokens = judge_format(b, jc.max_explanation_chars)
            if not jc.constrained:
                structured = {"choice": ["m", "M"]} if b == "alpaca_eval" else None
                max_tokens = 1 if b == "alpaca_eval" else m.sampling.max_tokens
            ds = shards.engine_stage(
                ds,
                pools,
                m,
                partial(build_judge, **kw),
                partial(apply_judge, **kw),
                multi=True,
                structured=structured,
                sampling=m.sampling.model_copy(update={"max_tokens": max_tokens}),
                logprobs=ALPACA_TOP_LOGPROBS if b == "alpaca_eval" else None,
            )
            if b == "arena_hard" and not jc.constrained:  # a constrained judge always writes its label
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


def _percentile_interval(values: np.ndarray, ci: float) -> tuple[float, float]:
    low, high = np.percentile(values, [50.0 * (1.0 - ci), 50.0 * (1.0 + ci)])
    return float(low), float(high)


def score_mt_bench(finals: list[dict[str, Any]], bootstrap: int, ci: float, seed: int = 0) -> dict[str, Any]:
    """FastChat's show_result over the final ratings, with a bootstrap interval of the overall mean."""
    ratings = [{"turn": j["turn"], "score": j["score"]} for j in finals]
    s = mt_bench.mt_bench_summary(ratings)
    judged = np.array([j["score"] for j in finals if j["score"] is not None], dtype=float)
    lower = upper = None
    if bootstrap > 0 and len(judged) > 1:
        rng = np.random.default_rng(seed)
        means = judged[rng.integers(0, len(judged), size=(bootstrap, len(judged)))].mean(axis=1)
        lower, upper = _percentile_interval(means, ci)
    return {
        "metric": "mt_bench_rating",
        "score": s["overall"],
        "lower": lower,
        "upper": upper,
        "standard_error": float(judged.std(ddof=1) / math.sqrt(len(judged))) if len(judged) > 1 else None,
        "judged": s["judged"],
        "unparsed": s["unparsed"],
        "details": {"turn_1": s["turn_1"], "turn_2": s["turn_2"]},
    }


def _winner(benchmark: str, j: dict[str, Any]) -> str | None:
    """'model', 'reference' or 'tie' for a parsed final judgment (None: no verdict)."""
    if benchmark == "alpaca_eval":
        if j["score"] is None:
            return None
        return "model" if j["score"] > 1.5 else "reference" if j["score"] < 1.5 else "tie"
    v = j["verdict"]
    if v is None:
        return None
    if v == "A=B":
        return "tie"
    first = j["shown_first"]
    other = "model" if first == "reference" else "reference"
    return first if v.startswith("A") else other


def position_stats(benchmark: str, finals: list[dict[str, Any]]) -> dict[str, float | None]:
    """``first_position_rate``: of the decisive final judgments, the share won by the answer shown first (0.5
    for a judge without position bias, since the order is balanced or random); ``position_consistency``
    (Arena-Hard): of the questions with both games parsed, the share whose two games name the same winner."""
    if benchmark == "mt_bench":  # one answer graded at a time: no position to prefer
        return {"first_position_rate": None, "position_consistency": None}
    decided = [(j, w) for j in finals if (w := _winner(benchmark, j)) in ("model", "reference")]
    first = sum(w == j["shown_first"] for j, w in decided)
    out: dict[str, float | None] = {"first_position_rate": first / len(decided) if decided else None}
    if benchmark == "arena_hard":
        games: dict[str, dict[int, str | None]] = defaultdict(dict)
        for j in finals:
            games[j["question_id"]][j["game"]] = _winner(benchmark, j)
        both = [g for g in games.values() if g.get(1) is not None and g.get(2) is not None]
        out["position_consistency"] = sum(g[1] == g[2] for g in both) / len(both) if both else None
    else:
        out["position_consistency"] = None
    return out


def score_arena(
    finals: list[dict[str, Any]],
    answers: list[dict[str, Any]],
    model: str,
    cfg: ArenaHard,
    bootstrap: int,
    ci: float,
) -> dict[str, Any]:
    """Battles from the final verdicts (as show_result.py), Bradley-Terry win rate against the baseline with a
    bootstrap interval; with style control, the same fit with length and markdown features."""
    games = [
        {"uid": j["question_id"], "model": model, "game": j["game"], "verdict": j["verdict"]} for j in finals
    ]
    rows = arena_hard.battles(games, baseline=cfg.baseline)
    out: dict[str, Any] = {
        "metric": "arena_hard_score",
        "score": None,
        "lower": None,
        "upper": None,
        "standard_error": None,
        "judged": sum(j["verdict"] is not None for j in finals),
        "unparsed": sum(j["verdict"] is None for j in finals),
        "details": {"battles": len(rows)},
    }
    if not rows:
        out["note"] = "no parsed verdicts: no battles to score"
        return out
    r = arena_hard.arena_score(rows, baseline=cfg.baseline, bootstrap=bootstrap, ci=ci, model=model)
    out.update(score=r["score"], lower=r["lower"], upper=r["upper"])
    if cfg.style_control:
        # token_len in whitespace words for both sides (arena-hard-auto counts gpt-4o tokens): the length
        # feature is the ratio (a - b) / (a + b), so any unit used for both answers serves.
        style: dict[str, dict[str, Any]] = {model: {}, cfg.baseline: {}}
        for a in answers:
            if a["answers"]:
                style[model][a["question_id"]] = arena_hard.style_features(
                    a["answers"][0], len(a["answers"][0].split())
                )
                ref = a["reference"][0]
                style[cfg.baseline][a["question_id"]] = arena_hard.style_features(ref, len(ref.split()))
        try:
            sc = arena_hard.arena_score(
                rows, baseline=cfg.baseline, bootstrap=bootstrap, ci=ci, model=model, style=style
            )
            out["details"].update(
                style_controlled_score=sc["score"],
                style_controlled_lower=sc["lower"],
                style_controlled_upper=sc["upper"],
                style_coefficients=sc["style_coefficients"],
            )
        except ValueError as e:  # e.g. a single battle: no variance to fit the style on
            out["details"]["style_control"] = f"not fitted: {e}"
    return out


def score_alpaca(
    finals: list[dict[str, Any]], answers: list[dict[str, Any]], cfg: AlpacaEval, ci: float
) -> dict[str, Any]:
    """AlpacaEval's win rate and standard error over the final preferences; LC only with its GLM data."""
    w = alpaca_eval.alpaca_win_rate([j["score"] for j in finals])
    se = w["standard_error"]
    z = statistics.NormalDist().inv_cdf((1.0 + ci) / 2.0)
    ok = w["n_total"] > 0
    out: dict[str, Any] = {
        "metric": "alpaca_eval_win_rate",
        "score": w["win_rate"] if ok else None,
        "lower": w["win_rate"] - z * se if ok and not math.isnan(se) else None,
        "upper": w["win_rate"] + z * se if ok and not math.isnan(se) else None,
        "standard_error": None if math.isnan(se) else se,
        "judged": w["n_total"],
        "unparsed": sum(j["score"] is None for j in finals),
        "details": {
            "n_wins": w["n_wins"],
            "n_wins_base": w["n_wins_base"],
            "n_draws": w["n_draws"],
            "discrete_win_rate": w["discrete_win_rate"] if ok else None,
            "preference_from_logprobs": sum(j["score_from"] == "logprobs" for j in finals),
        },
        "lc_win_rate": None,
        "note": alpaca_eval.LC_NOT_COMPUTED,
    }
    if cfg.lc_data is not None and answers:
        lc = alpaca_lc(finals, answers, cfg)
        out["lc_win_rate"] = lc.pop("lc_win_rate")
        out["note"] = (
            None
            if cfg.limit is None
            else f"LC on the first {len(answers)} instructions of 805: not comparable with the leaderboard"
        )
        out["details"].update(lc)
    return out


def alpaca_lc(finals: list[dict[str, Any]], answers: list[dict[str, Any]], cfg: AlpacaEval) -> dict[str, Any]:
    """AlpacaEval's length-controlled win rate (``alpaca_eval.alpaca_lc_win_rate``) over this model's rows, in
    the reference file's order: its GLM matches each row to its instruction's difficulty by position."""
    pref = {j["question_id"]: j["score"] for j in finals}
    rows = sorted(answers, key=lambda a: a["question_id"])
    annotations = [
        {
            "instruction": a["turns"][0],
            "output_1": a["reference"][0],
            "output_2": a["answers"][0] if a["answers"] else "",
            "preference": pref.get(a["question_id"]),
        }
        for a in rows
    ]
    outs = _read(alpaca_eval.alpaca_eval_outputs, cfg.reference_outputs, "alpaca_eval.reference_outputs")
    try:
        r = alpaca_eval.alpaca_lc_win_rate(
            annotations, _local_copy(cfg.lc_data), eval_set_instructions=[o["instruction"] for o in outs]
        )
    except ValueError as e:
        raise BenchmarkFileError(f"alpaca_eval.lc_data: {e}") from None
    return {
        "lc_win_rate": r["length_controlled_winrate"],
        "lc_standard_error": r["lc_standard_error"],
        "lc_glm_weights": r["glm_weights"],
        "lc_instructions": len(annotations),
    }


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
        for b in cfg.benchmarks():
            key = (m.display_name, b)
            ans, finals = by_answers[key], by_finals[key]
            if b == "mt_bench":
                r = score_mt_bench(finals, cfg.bootstrap, cfg.ci)
            elif b == "arena_hard":
                r = score_arena(finals, ans, m.display_name, cfg.arena_hard, cfg.bootstrap, cfg.ci)
            else:
                r = score_alpaca(finals, ans, cfg.alpaca_eval, cfg.ci)
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
            note = "; ".join(n for n in (r.get("note"), caveat) if n) or None
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
                    **position_stats(b, finals),
                    "lc_win_rate": r.get("lc_win_rate"),
                    "answer_tokens": sum(t["completion_tokens"] for t in answer_tokens.values()),
                    "judge_tokens": sum(
                        t["prompt_tokens"] + t["completion_tokens"] for t in judge_tokens.values()
                    ),
                    "usd": usd,
                    "judge": cfg.judge.describe(),
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
    if (
        cfg.alpaca_eval is not None
        and cfg.alpaca_eval.lc_data
        and not storage.exists(cfg.alpaca_eval.lc_data)
    ):
        raise BenchmarkFileError(
            f"alpaca_eval.lc_data: {cfg.alpaca_eval.lc_data} not found: give the df_gamed.csv of the "
            "tatsu-lab/alpaca_eval dataset on the Hugging Face Hub, or lc_data=null (LC not computed)"
        )
    sources = {
        "mt_bench": cfg.mt_bench.questions if cfg.mt_bench else "",
        "arena_hard": cfg.arena_hard.questions if cfg.arena_hard else "",
        "alpaca_eval": cfg.alpaca_eval.reference_outputs if cfg.alpaca_eval else "",
    }
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
