"""MT-Bench (lm-sys/FastChat llm_judge): 80 two-turn questions in 8 categories, each turn graded 1-10.

The benchmark as the evaluate stage runs it (``MTBenchBenchmark``, config section ``mt_bench:``): two turns
per question, the second asked on the model's own first answer, with the answer temperature per category
(FastChat's ``temperature_config``); each turn graded with FastChat's ``single-v1`` prompts
(``single-math-v1`` with the GPT-4 reference for math, reasoning and coding), the rating parsed from ``[[x]]``
then ``[x]``; the score is the mean per turn and overall, with a bootstrap interval.

Read from the reference implementation, not re-derived: lm-sys/FastChat @ 0e6d3e4,
``fastchat/llm_judge/common.py`` (``temperature_config``, ``NEED_REF_CATS``, ``one_score_pattern`` +
``one_score_pattern_backup`` in ``run_judge_single``: the first ``[[x]]`` match, else the first ``[x]``, else
-1) and ``fastchat/llm_judge/show_result.py`` (``display_result_single``: rows with score -1 are dropped, then
the mean per turn and the mean of all remaining rows).
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from moaa.benchmarks.base import Benchmark, Key, Messages, Verdict, check_enough, explained, read_file
from moaa.benchmarks.common import (
    as_object,
    get_int,
    get_str,
    get_str_list,
    load_jsonl,
)
from moaa.benchmarks.files import SAMPLE_DIR
from moaa.core.config import Config, InputPath
from moaa.engine.settings import Completion, SamplingConfig

# ---------------------------------------------------------------------------------------- judge prompt
# MT-Bench single-answer grading (judge gpt-4, temperature 0, max_tokens 2048), one dict per FastChat prompt
# name: "system" is the system message, "template" the user message. Verbatim (system_prompt and
# prompt_template) from lm-sys/FastChat, fastchat/llm_judge/data/judge_prompts.jsonl at commit
# 0e6d3e4beaab66f4d3f93db72541a4abab8af28d (Apache-2.0). The *_MATH_* prompts are for the categories in
# NEED_REFERENCE and take the reference answer ({ref_answer_1}, {ref_answer_2}); the
# *_MULTI_TURN prompts grade turn 2 with the whole conversation. Fill with str.format.
MT_BENCH_SINGLE_V1 = {
    "system": """You are a helpful assistant.""",
    "template": """[Instruction]
Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to the user question displayed below. Your evaluation should consider factors such as the helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response. Begin your evaluation by providing a short explanation. Be as objective as possible. After providing your explanation, you must rate the response on a scale of 1 to 10 by strictly following this format: "[[rating]]", for example: "Rating: [[5]]".

[Question]
{question}

[The Start of Assistant's Answer]
{answer}
[The End of Assistant's Answer]""",  # noqa: E501
}

MT_BENCH_SINGLE_MATH_V1 = {
    "system": """You are a helpful assistant.""",
    "template": """[Instruction]
Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to the user question displayed below. Your evaluation should consider correctness and helpfulness. You will be given a reference answer and the assistant's answer. Begin your evaluation by comparing the assistant's answer with the reference answer. Identify and correct any mistakes. Be as objective as possible. After providing your explanation, you must rate the response on a scale of 1 to 10 by strictly following this format: "[[rating]]", for example: "Rating: [[5]]".

[Question]
{question}

[The Start of Reference Answer]
{ref_answer_1}
[The End of Reference Answer]

[The Start of Assistant's Answer]
{answer}
[The End of Assistant's Answer]""",  # noqa: E501
}

MT_BENCH_SINGLE_V1_MULTI_TURN = {
    "system": """Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to the user question displayed below. Your evaluation should consider factors such as the helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response. You evaluation should focus on the assistant's answer to the second user question. Begin your evaluation by providing a short explanation. Be as objective as possible. After providing your explanation, you must rate the response on a scale of 1 to 10 by strictly following this format: "[[rating]]", for example: "Rating: [[5]]".

""",  # noqa: E501
    "template": """<|The Start of Assistant A's Conversation with User|>

### User:
{question_1}

### Assistant A:
{answer_1}

### User:
{question_2}

### Assistant A:
{answer_2}

<|The End of Assistant A's Conversation with User|>""",
}

MT_BENCH_SINGLE_MATH_V1_MULTI_TURN = {
    "system": """Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to the user question. Your evaluation should consider correctness and helpfulness. You will be given a reference answer and the assistant's answer. You evaluation should focus on the assistant's answer to the second question. Begin your evaluation by comparing the assistant's answer with the reference answer. Identify and correct any mistakes. Be as objective as possible. After providing your explanation, you must rate the response on a scale of 1 to 10 by strictly following this format: "[[rating]]", for example: "Rating: [[5]]".

""",  # noqa: E501
    "template": """<|The Start of Reference Answer|>

### User:
{question_1}

### Reference answer:
{ref_answer_1}

### User:
{question_2}

### Reference answer:
{ref_answer_2}

<|The End of Reference Answer|>


<|The Start of Assistant A's Conversation with User|>

### User:
{question_1}

### Assistant A:
{answer_1}

### User:
{question_2}

### Assistant A:
{answer_2}

<|The End of Assistant A's Conversation with User|>""",
}


def mt_bench_questions(
    question_path: str | Path, reference_path: str | Path | None = None
) -> list[dict[str, Any]]:
    """MT-Bench questions (FastChat's ``question.jsonl``) in file order, as
    ``{question_id, category, turns: [str, str], reference: list[str] | None}``.

    ``reference`` is the answer in ``reference_path`` (FastChat's ``reference_answer/gpt-4.jsonl``:
    ``choices[0].turns``) when that file has the question, else the question's own ``reference`` field,
    else None. As FastChat's ``check_data`` does, every question of a NEED_REFERENCE category must then
    have a reference, and a reference for an unknown question is an error.
    """
    file_refs: dict[int, tuple[str, list[str]]] = {}
    if reference_path is not None:
        for where, row in load_jsonl(reference_path):
            obj = as_object(row, where)
            qid = get_int(obj, "question_id", where)
            choices = obj.get("choices")
            if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
                raise ValueError(f"{where}: 'choices' must be a non-empty list of objects")
            if qid in file_refs:
                raise ValueError(f"{where}: duplicate question_id {qid}")
            file_refs[qid] = (where, get_str_list(choices[0].get("turns"), "choices[0].turns", where))

    questions: list[dict[str, Any]] = []
    seen: set[int] = set()
    for where, row in load_jsonl(question_path):
        obj = as_object(row, where)
        qid = get_int(obj, "question_id", where)
        if qid in seen:
            raise ValueError(f"{where}: duplicate question_id {qid}")
        seen.add(qid)
        category = get_str(obj, "category", where)
        turns = get_str_list(obj.get("turns"), "turns", where, length=2)
        own = obj.get("reference")
        reference = None if own is None else get_str_list(own, "reference", where)
        if qid in file_refs:
            reference = file_refs[qid][1]
        elif reference_path is not None and category in NEED_REFERENCE:
            raise ValueError(f"{where}: question {qid} ({category}) has no reference in {reference_path}")
        questions.append({"question_id": qid, "category": category, "turns": turns, "reference": reference})

    for qid, (where, _) in file_refs.items():
        if qid not in seen:
            raise ValueError(f"{where}: reference for question_id {qid}, which is not in {question_path}")
    return questions


# FastChat's temperature_config, entry for entry: the answer-generation temperature per category.
# "arena-hard-200" is FastChat's own extra category, kept so the table is the source's.
MT_BENCH_TEMPERATURE: dict[str, float] = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
    "arena-hard-200": 0.0,
}

# FastChat's NEED_REF_CATS: these categories are judged with the reference-based prompts (single-math-v1*).
NEED_REFERENCE: tuple[str, ...] = ("math", "reasoning", "coding", "arena-hard-200")

_ONE_SCORE = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_ONE_SCORE_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


def parse_rating(text: str) -> float | None:
    """The judge's rating as FastChat reads it: the first ``[[x]]``, else the first ``[x]``, else None
    (FastChat's -1). FastChat's ``ast.literal_eval`` would raise on a leading zero such as ``[[07]]``;
    ``float`` reads it as 7. Out-of-scale numbers are returned as they are, as in FastChat."""
    match = _ONE_SCORE.search(text) or _ONE_SCORE_BACKUP.search(text)
    return float(match.group(1)) if match else None


def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def mt_bench_summary(ratings: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """One model's MT-Bench result from ``{question_id, turn, category, score}`` records.

    As FastChat's show_result.py: unparsed ratings (None, or FastChat's -1) are left out, ``turn_1`` and
    ``turn_2`` are the means per turn, and ``overall`` is the mean of every judged turn (not the mean of the
    two turn means, which differs when a turn has unparsed ratings). A mean with nothing judged is None.
    """
    scores: dict[int, list[float]] = {1: [], 2: []}
    unparsed = 0
    for i, record in enumerate(ratings):
        turn = record.get("turn")
        if turn not in (1, 2):
            raise ValueError(f"rating {i}: 'turn' must be 1 or 2, got {turn!r}")
        score = record.get("score")
        if score is None or score == -1:
            unparsed += 1
            continue
        scores[turn].append(float(score))
    every = scores[1] + scores[2]
    return {
        "turn_1": _mean(scores[1]),
        "turn_2": _mean(scores[2]),
        "overall": _mean(every),
        "judged": len(every),
        "unparsed": unparsed,
    }


# ------------------------------------------------------------------------ the benchmark, as evaluate runs it


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


def _percentile_interval(values: np.ndarray, ci: float) -> tuple[float, float]:
    low, high = np.percentile(values, [50.0 * (1.0 - ci), 50.0 * (1.0 + ci)])
    return float(low), float(high)


class MTBenchBenchmark(Benchmark[MTBench]):
    """Two turns per question, each graded alone (single-answer grading: no position to prefer)."""

    name = "mt_bench"
    config = MTBench
    description = "MT-Bench; null: skip it."
    judged = True
    judge_prompts = (
        json.dumps([MT_BENCH_SINGLE_V1, MT_BENCH_SINGLE_MATH_V1]),
        json.dumps([MT_BENCH_SINGLE_V1_MULTI_TURN, MT_BENCH_SINGLE_MATH_V1_MULTI_TURN]),
    )

    def items(self, section: MTBench) -> list[dict[str, Any]]:
        """The first ``per_category`` questions of each category, in file order; ``reference``: the
        reference answers (FastChat's GPT-4 ones)."""
        qs = read_file(mt_bench_questions, section.questions, "mt_bench.questions", section.references)
        per_category = (
            min(sum(q["category"] == c for q in qs) for c in {q["category"] for q in qs}) if qs else 0
        )
        check_enough(
            "mt_bench.questions",
            section.questions,
            section.per_category,
            per_category,
            "questions per category",
        )
        taken: dict[str, int] = defaultdict(int)
        items = []
        for q in qs:
            if section.per_category is not None and taken[q["category"]] >= section.per_category:
                continue
            taken[q["category"]] += 1
            items.append(
                {
                    "question_id": str(q["question_id"]),
                    "category": q["category"],
                    "turns": q["turns"],
                    "reference": q["reference"],
                    "switched": False,
                }
            )
        return items

    def source(self, section: MTBench) -> str:
        return section.questions

    def answer_sampling(
        self, section: MTBench, state: dict[str, Any], base: SamplingConfig
    ) -> SamplingConfig:
        """``max_tokens``, and FastChat's temperature per category."""
        update: dict[str, Any] = {}
        if section.max_tokens:
            update["max_tokens"] = section.max_tokens
        if section.category_temperature:
            update["temperature"] = MT_BENCH_TEMPERATURE.get(state["category"], base.temperature)
        return base.model_copy(update=update)

    def judge_keys(self, state: dict[str, Any]) -> list[Key]:
        """Every answered turn."""
        return [(t, 0) for t in range(1, len(state["answers"]) + 1)]

    def judge_messages(self, state: dict[str, Any], turn: int, game: int) -> Messages:
        """``single-v1`` (``single-math-v1`` with the reference for NEED_REFERENCE), ``*-multi-turn`` for
        turn 2."""
        q, a, ref = state["turns"], state["answers"], state["reference"]
        math_like = state["category"] in NEED_REFERENCE and bool(ref)
        refs = {f"ref_answer_{i + 1}": r for i, r in enumerate(ref or [])} if math_like else {}
        if turn == 1:
            p = MT_BENCH_SINGLE_MATH_V1 if math_like else MT_BENCH_SINGLE_V1
            user = p["template"].format(question=q[0], answer=a[0], **refs)
        else:
            p = MT_BENCH_SINGLE_MATH_V1_MULTI_TURN if math_like else MT_BENCH_SINGLE_V1_MULTI_TURN
            user = p["template"].format(
                question_1=q[0], question_2=q[1], answer_1=a[0], answer_2=a[1], **refs
            )
        return [{"role": "system", "content": p["system"]}, {"role": "user", "content": user}]

    def parse(self, c: Completion, switched: bool) -> Verdict:
        """The rating (score = rating)."""
        rating = parse_rating(c.text)
        return (None, None, None) if rating is None else (f"{rating:g}", rating, "text")

    def judge_format(self, max_chars: int) -> tuple[dict[str, Any], int]:
        return explained(r"Rating: \[\[(10|[1-9])\]\]", max_chars)

    def score(
        self,
        section: MTBench,
        finals: list[dict[str, Any]],
        answers: list[dict[str, Any]],
        *,
        model: str,
        bootstrap: int,
        ci: float,
    ) -> dict[str, Any]:
        """FastChat's show_result over the final ratings, with a bootstrap interval of the overall mean."""
        ratings = [{"turn": j["turn"], "score": j["score"]} for j in finals]
        s = mt_bench_summary(ratings)
        judged = np.array([j["score"] for j in finals if j["score"] is not None], dtype=float)
        lower = upper = None
        if bootstrap > 0 and len(judged) > 1:
            rng = np.random.default_rng(0)
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


BENCHMARK = MTBenchBenchmark()
