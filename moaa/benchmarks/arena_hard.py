"""Arena-Hard v0.1 (lmarena/arena-hard-auto): 500 hard prompts, each judged against a baseline's answer.

The benchmark as the evaluate stage runs it (``ArenaHardBenchmark``, config section ``arena_hard:``): two
games per question against the baseline's answer (the baseline as A, then as B), verdicts ``A>>B .. B>>A``
from ``[[...]]``, a strong verdict is 3 battles; the score is the Bradley-Terry win rate against the baseline
with a bootstrap interval (``ci``), optionally with style control. A free (unconstrained) judgment without a
label is sent back once to be finished, as in v0.1.

Read from the reference implementation, not re-derived: lmarena/arena-hard-auto @ 3071ef9 (the last commit
with the v0.1 pipeline), ``gen_judgment.py`` (``get_score``: every ``[[...]]`` match must agree, otherwise no
verdict; game 1 shows the baseline as A, game 2 swaps the answers), ``show_result.py``
(``get_battles_from_row``: a strong verdict is 3 battles, ``A=B`` is a tie, an unparsed game is dropped) and
``utils_math.py`` (``compute_mle_elo``: unpenalized logistic regression where a tie counts as one win each
way, scale 400, base 10, baseline anchored at 1000; ``get_bootstrap_result``: 100 resamples of the battles;
``predict_win_rate``/``get_win_rate_column``: the score is the predicted win rate against the baseline, the
interval is the 2.5th/97.5th percentile of the bootstrap ratings). The v2.0 rewrite at arena-hard-auto @
196f6b8 (``show_result.py``, ``utils/math_utils.py``) reports a 90% interval (5th/95th percentile) instead;
``arena_score(ci=0.90)`` gives that. Style control follows v2.0's ``--control-features length markdown``
(``print_leaderboard_with_style_features``) and its markdown counter ``utils/add_markdown_info.py``.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from moaa.benchmarks.base import (
    Benchmark,
    BenchmarkFileError,
    Key,
    Messages,
    Verdict,
    check_enough,
    explained,
    read_file,
)
from moaa.benchmarks.common import (
    as_object,
    get_str,
    load_jsonl,
    sigmoid,
)
from moaa.benchmarks.files import SAMPLE_DIR
from moaa.core.config import Config, InputPath
from moaa.engine.settings import Completion, SamplingConfig

# ---------------------------------------------------------------------------------------- judge prompt
# Arena-Hard v0.1 judge (gpt-4-1106-preview, temperature 0, max_tokens 4096, baseline gpt-4-0314). System
# prompt and the one prompt template verbatim from lmarena/arena-hard-auto, config/judge_config.yaml at
# commit 3071ef95d913bb5cd632641db336a3b6c7fe4bdd (the last commit with that file; Apache-2.0). In game 1
# {answer_1} is the baseline's answer and {answer_2} the model's; game 2 swaps them (gen_judgment.py).
ARENA_HARD_SYSTEM = """Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants to the user prompt displayed below. You will be given assistant A's answer and assistant B's answer. Your job is to evaluate which assistant's answer is better.

Begin your evaluation by generating your own answer to the prompt. You must provide your answers before judging any answers.

When evaluating the assistants' answers, compare both assistants' answers with your answer. You must identify and correct any mistakes or inaccurate information.

Then consider if the assistant's answers are helpful, relevant, and concise. Helpful means the answer correctly responds to the prompt or follows the instructions. Note when user prompt has any ambiguity or more than one interpretation, it is more helpful and appropriate to ask for clarifications or more information from the user than providing an answer based on assumptions. Relevant means all parts of the response closely connect or are appropriate to what is being asked. Concise means the response is clear and not verbose or excessive.

Then consider the creativity and novelty of the assistant's answers when needed. Finally, identify any missing important information in the assistants' answers that would be beneficial to include when responding to the user prompt.

After providing your explanation, you must output only one of the following choices as your final verdict with a label:

1. Assistant A is significantly better: [[A>>B]]
2. Assistant A is slightly better: [[A>B]]
3. Tie, relatively the same: [[A=B]]
4. Assistant B is slightly better: [[B>A]]
5. Assistant B is significantly better: [[B>>A]]

Example output: "My final verdict is tie: [[A=B]]"."""  # noqa: E501

ARENA_HARD_TEMPLATE = """<|User Prompt|>
{question_1}

<|The Start of Assistant A's Answer|>
{answer_1}
<|The End of Assistant A's Answer|>

<|The Start of Assistant B's Answer|>
{answer_2}
<|The End of Assistant B's Answer|>"""

# Arena-Hard v0.1: the user turn sent when a judgment has no verdict label (number_of_judgment_attempts: 2);
# the verdict is then parsed from both replies together. Verbatim from lmarena/arena-hard-auto,
# gen_judgment.py at commit 3071ef95d913bb5cd632641db336a3b6c7fe4bdd (Apache-2.0).
ARENA_HARD_CONTINUE = "continue your judgment and finish by outputting a final verdict label"


def arena_hard_questions(path: str | Path) -> list[dict[str, str]]:
    """Arena-Hard questions (``question.jsonl``, layout of arena-hard-auto @ 196f6b8) in file order, as
    ``{uid, category, cluster, prompt}``."""
    out: list[dict[str, str]] = []
    seen: set[str] = set()
    for where, row in load_jsonl(path):
        obj = as_object(row, where)
        item = {key: get_str(obj, key, where) for key in ("uid", "category", "cluster", "prompt")}
        if item["uid"] in seen:
            raise ValueError(f"{where}: duplicate uid {item['uid']!r}")
        seen.add(item["uid"])
        out.append(item)
    return out


def arena_hard_answers(path: str | Path) -> dict[str, str]:
    """One model's Arena-Hard answers (``model_answer/<model>.jsonl``): uid -> the final answer text, read
    from ``messages[-1]["content"]["answer"]``."""
    out: dict[str, str] = {}
    for where, row in load_jsonl(path):
        obj = as_object(row, where)
        uid = get_str(obj, "uid", where)
        messages = obj.get("messages")
        if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
            raise ValueError(f"{where}: 'messages' must be a non-empty list of objects")
        content = messages[-1].get("content")
        if not isinstance(content, dict) or not isinstance(content.get("answer"), str):
            raise ValueError(f"{where}: messages[-1]['content']['answer'] must be a string")
        if uid in out:
            raise ValueError(f"{where}: duplicate uid {uid!r}")
        out[uid] = content["answer"]
    return out


ARENA_LABELS = ("A>>B", "A>B", "A=B", "B>A", "B>>A")
ARENA_VERDICT_PATTERN = re.compile(r"\[\[([AB<>=]+)\]\]")
ARENA_BASELINE = "gpt-4-0314"
ARENA_STRONG_WEIGHT = 3
ARENA_STYLE_CONTROLS = ("length", "markdown")
_WINNERS = ("model_a", "model_b", "tie", "tie (bothbad)")


def parse_arena_verdict(text: str) -> str | None:
    """The verdict label in a judgment, as v0.1's ``get_score``: all ``[[...]]`` matches must be the same
    label (repeating it is fine); none, or two different ones, give None. A match that is not one of
    ARENA_LABELS (say ``[[A<B]]``) is None too, since show_result.py gives such a game no battles.

    In v0.1 a judgment without a verdict is sent back once ("continue your judgment ...",
    ``ARENA_HARD_CONTINUE``) and the two replies are parsed together: pass their concatenation.
    """
    matches = [m for m in ARENA_VERDICT_PATTERN.findall(text) if m != ""]
    if len(set(matches)) != 1:
        return None
    label = matches[0]
    return label if label in ARENA_LABELS else None


def battles(
    games: Iterable[Mapping[str, Any]],
    baseline: str = ARENA_BASELINE,
    weight: int = ARENA_STRONG_WEIGHT,
) -> list[dict[str, str]]:
    """Battle rows ``{uid, model_a, model_b, winner}`` from judged games ``{uid, model, game, verdict}``.

    As show_result.py's ``get_battles_from_row``: ``model_a`` is always the baseline; in game 1 the judge
    saw the baseline as A, in game 2 the answers were swapped, so a verdict's A is the model there. A strong
    verdict (``>>``) is ``weight`` identical rows, ``A=B`` is a ``tie`` row, and a game with no verdict
    (None) adds nothing while its other game still counts.
    """
    rows: list[dict[str, str]] = []
    for i, g in enumerate(games):
        uid, model, game, verdict = g.get("uid"), g.get("model"), g.get("game"), g.get("verdict")
        if not isinstance(uid, str) or not isinstance(model, str):
            raise ValueError(f"game {i}: 'uid' and 'model' must be strings")
        if game not in (1, 2):
            raise ValueError(f"game {i}: 'game' must be 1 or 2, got {game!r}")
        if verdict is None:
            continue
        if verdict not in ARENA_LABELS:
            raise ValueError(f"game {i}: verdict {verdict!r} is not one of {ARENA_LABELS}")
        if verdict == "A=B":
            winner = "tie"
        else:
            a_won = verdict.startswith("A")
            # In game 2 the judge's A is the model, i.e. model_b.
            winner = "model_a" if a_won == (game == 1) else "model_b"
        copies = weight if ">>" in verdict else 1
        row = {"uid": uid, "model_a": baseline, "model_b": model, "winner": winner}
        rows.extend(dict(row) for _ in range(copies))
    return rows


def _fit_logistic(
    x: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None, max_iter: int = 100
) -> np.ndarray:
    """Unpenalized logistic regression without intercept on soft labels y in [0, 1], by Newton's method with
    step halving. Soft labels are how ties enter: arena-hard-auto duplicates every battle and labels a tie
    once as an A win and once as a B win, which is the same likelihood as one battle labelled 0.5."""
    w = np.ones(len(y)) if weights is None else weights.astype(float)
    beta = np.zeros(x.shape[1])

    def loss(b: np.ndarray) -> float:
        z = x @ b
        return float(np.sum(w * (y * np.logaddexp(0.0, -z) + (1.0 - y) * np.logaddexp(0.0, z))))

    current = loss(beta)
    scale = max(1.0, float(w.sum()))
    for _ in range(max_iter):
        p = sigmoid(x @ beta)
        grad = x.T @ (w * (p - y))
        if np.max(np.abs(grad), initial=0.0) <= 1e-11 * scale:
            break
        hess = x.T @ (x * (w * p * (1.0 - p))[:, None])
        # lstsq, not solve: a column can be all zero in a bootstrap sample (a model that drew no battles).
        step = np.linalg.lstsq(hess, grad, rcond=None)[0]
        # Near the optimum a Newton step changes the loss by less than its rounding error, so a step
        # is accepted unless it makes the loss worse by more than that.
        slack = 1e-13 * max(1.0, abs(current))
        t = 1.0
        while True:
            candidate = beta - t * step
            new = loss(candidate)
            if new <= current + slack or t < 1e-10:
                break
            t /= 2.0
        if new > current + slack:
            break
        beta, current = candidate, new
    return beta


def _design(rows: Sequence[Mapping[str, Any]], baseline: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Model columns (+1 for model_a, -1 for model_b) and soft outcomes (1 = model_a won). The baseline's
    column is left out, which anchors its rating at 0: the source fits every column and shifts the ratings
    so the baseline is at 1000 afterwards, and the shift cancels in every win rate."""
    names: set[str] = set()
    for i, r in enumerate(rows):
        a, b, winner = r.get("model_a"), r.get("model_b"), r.get("winner")
        if not isinstance(a, str) or not isinstance(b, str) or a == b:
            raise ValueError(f"battle {i}: 'model_a' and 'model_b' must be two different model names")
        if winner not in _WINNERS:
            raise ValueError(f"battle {i}: 'winner' must be one of {_WINNERS}, got {winner!r}")
        names.update((a, b))
    if baseline not in names:
        raise ValueError(f"the baseline {baseline!r} plays in none of the {len(rows)} battles")
    models = sorted(names - {baseline})
    column = {m: j for j, m in enumerate(models)}
    x = np.zeros((len(rows), len(models)))
    y = np.empty(len(rows))
    for i, r in enumerate(rows):
        if r["model_a"] != baseline:
            x[i, column[r["model_a"]]] = 1.0
        if r["model_b"] != baseline:
            x[i, column[r["model_b"]]] = -1.0
        y[i] = {"model_a": 1.0, "model_b": 0.0}.get(r["winner"], 0.5)
    return models, x, y


def bt_ratings(
    battles_rows: Sequence[Mapping[str, Any]],
    baseline: str = ARENA_BASELINE,
    scale: float = 400.0,
    base: float = 10.0,
    init: float = 1000.0,
) -> dict[str, float]:
    """Bradley-Terry ratings on the Elo scale, as ``compute_mle_elo``: the baseline is at ``init`` and
    P(a beats b) = 1 / (1 + base ** ((R_b - R_a) / scale))."""
    rows = list(battles_rows)
    models, x, y = _design(rows, baseline)
    beta = _fit_logistic(x, y)
    ratings = {baseline: init}
    ratings.update({m: init + scale * float(b) / math.log(base) for m, b in zip(models, beta)})
    return ratings


def _feature_value(value: Any, where: str) -> float:
    # header/list/bold counts are per-kind dicts ({"h1": 2, ...}); the source sums them.
    if isinstance(value, Mapping):
        return float(sum(value.values()))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"{where}: expected a count or a dict of counts, got {type(value).__name__}")


def _style_matrix(
    rows: Sequence[Mapping[str, Any]],
    style: Mapping[str, Mapping[str, Mapping[str, Any]]],
    control: Sequence[str],
) -> tuple[list[str], np.ndarray]:
    """Standardized style differences of model_a's answer against model_b's, per battle, as v2.0's
    ``print_leaderboard_with_style_features``: length (a - b) / (a + b) in tokens; for headers, lists and
    bold, the density count / (tokens + 1) and then (da - db) / (da + db + 1)."""
    unknown = set(control) - set(ARENA_STYLE_CONTROLS)
    if unknown or not control:
        raise ValueError(f"control must name some of {ARENA_STYLE_CONTROLS}, got {list(control)}")
    keys = ("token_len", "header_count", "list_count", "bold_count")
    raw = np.zeros((len(rows), 2, 4))
    for i, r in enumerate(rows):
        uid = r.get("uid")
        for side, model in enumerate((r["model_a"], r["model_b"])):
            where = f"battle {i}: style[{model!r}][{uid!r}]"
            meta = style.get(model, {}).get(uid) if isinstance(uid, str) else None
            if not isinstance(meta, Mapping):
                raise ValueError(f"{where}: no style features for this answer")
            for k, key in enumerate(keys):
                if key not in meta:
                    raise ValueError(f"{where}: missing {key!r}")
                raw[i, side, k] = _feature_value(meta[key], f"{where}[{key!r}]")
    tok_a, tok_b = raw[:, 0, 0], raw[:, 1, 0]
    total = tok_a + tok_b
    # Two empty answers would be 0/0 in the source (it asserts); they differ in nothing, so 0.
    length = np.divide(tok_a - tok_b, total, out=np.zeros(len(rows)), where=total > 0)
    dens_a = raw[:, 0, 1:] / (tok_a[:, None] + 1.0)
    dens_b = raw[:, 1, 1:] / (tok_b[:, None] + 1.0)
    markdown = (dens_a - dens_b) / (dens_a + dens_b + 1.0)
    names, columns = [], []
    if "length" in control:
        names.append("length")
        columns.append(length[:, None])
    if "markdown" in control:
        names += ["header_count", "list_count", "bold_count"]
        columns.append(markdown)
    feats = np.hstack(columns)
    std = feats.std(axis=0, ddof=1) if len(rows) > 1 else np.zeros(feats.shape[1])
    # The source divides by the std and asserts no NaN; a feature that never varies carries nothing and
    # would only make the fit singular, so it is left out instead.
    keep = std > 0
    feats = (feats[:, keep] - feats[:, keep].mean(axis=0)) / std[keep]
    return [n for n, k in zip(names, keep) if k], feats


def arena_score(
    battles_rows: Sequence[Mapping[str, Any]],
    baseline: str = ARENA_BASELINE,
    bootstrap: int = 100,
    seed: int = 0,
    style: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    *,
    model: str | None = None,
    control: Sequence[str] = ARENA_STYLE_CONTROLS,
    ci: float = 0.95,
) -> dict[str, Any]:
    """Arena-Hard score of ``model`` (default: the only non-baseline model in the battles).

    ``score`` is the Bradley-Terry fit's predicted win rate against the baseline, in percent; ``lower`` and
    ``upper`` are the ``(1 - ci) / 2`` and ``(1 + ci) / 2`` percentiles of the same quantity over
    ``bootstrap`` fits on battles resampled with replacement (v0.1: ci 0.95; v2.0 reports 0.90). The
    resampling uses ``numpy.random.default_rng(seed)``, so the interval is reproducible but not the
    source's draw. When every battle is model vs baseline, the fit is the plain weighted mean: score =
    100 * (wins + ties / 2) / battles, strong verdicts counted 3 times.

    ``style`` (model -> uid -> ``{token_len, header_count, list_count, bold_count}``, the answer files'
    ``metadata``, see ``style_features``) turns on style control: the ``control`` features enter the
    regression as extra columns, and the score is the win rate at the average style difference. The
    fitted coefficients come back as ``style_coefficients`` (positive: the side with more of it wins more).
    v2.0 reports the median of its bootstrap win rates as the score (and, without style control, the mean of
    per-resample means); this returns the fit on all battles, as v0.1 does. v2.0's optimizer (torch LBFGS,
    50 iterations, lr 0.1) also stops short of the optimum that this Newton fit reaches.
    """
    rows = list(battles_rows)
    if not rows:
        raise ValueError("no battles to score")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be between 0 and 1, got {ci}")
    models, x, y = _design(rows, baseline)
    if model is None:
        if len(models) != 1:
            raise ValueError(f"the battles have several models {models}: name the one to score")
        model = models[0]
    if model not in models:
        raise ValueError(f"model {model!r} plays in none of the battles (models: {models})")
    col = models.index(model)
    style_names: list[str] = []
    if style is not None:
        style_names, feats = _style_matrix(rows, style, control)
        x = np.hstack([x, feats])

    beta = _fit_logistic(x, y)
    # Row orientation is baseline-as-model_a or model-as-model_a; the column sign says which, and
    # P(model beats baseline) = sigmoid(model's rating - baseline's rating) = sigmoid(beta[col]).
    result: dict[str, Any] = {
        "model": model,
        "score": 100.0 * float(sigmoid(beta[col])),
        "lower": None,
        "upper": None,
        "battles": len(rows),
    }
    if style is not None:
        result["style_coefficients"] = {n: float(b) for n, b in zip(style_names, beta[len(models) :])}
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        n = len(rows)
        logits = np.empty(bootstrap)
        for r in range(bootstrap):
            # Counts of each row in a resample of n rows with replacement: the same likelihood as
            # fitting the resampled rows themselves.
            counts = np.bincount(rng.integers(0, n, size=n), minlength=n)
            logits[r] = _fit_logistic(x, y, counts)[col]
        # Percentiles of the ratings, then mapped to win rates, as the source does (interpolating
        # between ratings, not between win rates).
        low, high = np.percentile(logits, [50.0 * (1.0 - ci), 50.0 * (1.0 + ci)])
        result["lower"] = 100.0 * float(sigmoid(low))
        result["upper"] = 100.0 * float(sigmoid(high))
    return result


_CODE_BLOCK = re.compile(r"```([^`]*)```")


def style_features(answer: str, token_len: int) -> dict[str, Any]:
    """An answer's style metadata as arena-hard-auto's ``utils/add_markdown_info.py`` writes it.

    ``token_len`` is the caller's (the source counts tiktoken's gpt-4o encoding). Code blocks are removed
    first the way the source does it: it deletes the text between the fences (every occurrence of it
    anywhere in the answer) and leaves the fences.
    """
    for block in _CODE_BLOCK.findall(answer):
        answer = answer.replace(block, "")
    return {
        "token_len": token_len,
        "header_count": {
            f"h{k}": len(re.findall(rf"^#{{{k}}}\s", answer, re.MULTILINE)) for k in range(1, 7)
        },
        "list_count": {
            "ordered": len(re.findall(r"^\s*\d+\.\s", answer, re.MULTILINE)),
            "unordered": len(re.findall(r"^\s*[-*+]\s", answer, re.MULTILINE)),
        },
        "bold_count": {
            "**": len(re.findall(r"\*\*[^*\n]+\*\*", answer)),
            "__": len(re.findall(r"__[^_\n]+__", answer)),
        },
    }


# ------------------------------------------------------------------------ the benchmark, as evaluate runs it


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
    baseline: str = Field(ARENA_BASELINE, description="The baseline's name in the results.")
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


class ArenaHardBenchmark(Benchmark[ArenaHard]):
    """Game 1 shows the baseline's answer as A, game 2 the model's (gen_judgment.py)."""

    name = "arena_hard"
    config = ArenaHard
    description = "Arena-Hard; null: skip it."
    pipeline_slice = {"limit": 2}
    judged = True
    judge_prompts = (ARENA_HARD_SYSTEM, ARENA_HARD_TEMPLATE)
    continuation = ARENA_HARD_CONTINUE

    def items(self, section: ArenaHard) -> list[dict[str, Any]]:
        """The first ``limit`` questions; ``reference``: the baseline's answer."""
        qs = read_file(arena_hard_questions, section.questions, "arena_hard.questions")
        base = read_file(arena_hard_answers, section.baseline_answers, "arena_hard.baseline_answers")
        check_enough("arena_hard.questions", section.questions, section.limit, len(qs), "questions")
        qs = qs[: section.limit] if section.limit else qs
        missing = [q["uid"] for q in qs if q["uid"] not in base]
        if missing:
            raise BenchmarkFileError(
                f"arena_hard.baseline_answers: {section.baseline_answers} has no answer for {len(missing)} "
                f"question(s), e.g. uid {missing[0]!r}: use the answers file of the same Arena-Hard version"
            )
        return [
            {
                "question_id": q["uid"],
                "category": q["cluster"],
                "turns": [q["prompt"]],
                "reference": [base[q["uid"]]],
                "switched": False,
            }
            for q in qs
        ]

    def source(self, section: ArenaHard) -> str:
        return section.questions

    def taken_names(self, section: ArenaHard) -> set[str]:
        return {section.baseline}

    def answer_sampling(
        self, section: ArenaHard, state: dict[str, Any], base: SamplingConfig
    ) -> SamplingConfig:
        """``max_tokens`` and ``temperature`` (arena-hard-auto answers greedily)."""
        update: dict[str, Any] = {}
        if section.max_tokens:
            update["max_tokens"] = section.max_tokens
        if section.temperature is not None:
            update["temperature"] = section.temperature
        return base.model_copy(update=update)

    def judge_keys(self, state: dict[str, Any]) -> list[Key]:
        """The two games."""
        return [(1, 1), (1, 2)]

    def shown_first(self, state: dict[str, Any], game: int) -> str | None:
        return "reference" if game == 1 else "model"

    def judge_messages(self, state: dict[str, Any], turn: int, game: int) -> Messages:
        q, a, ref = state["turns"], state["answers"], state["reference"]
        first, second = (ref[0], a[0]) if game == 1 else (a[0], ref[0])
        user = ARENA_HARD_TEMPLATE.format(question_1=q[0], answer_1=first, answer_2=second)
        return [{"role": "system", "content": ARENA_HARD_SYSTEM}, {"role": "user", "content": user}]

    def parse(self, c: Completion, switched: bool) -> Verdict:
        """The label (no score: the battles are counted from the labels)."""
        return parse_arena_verdict(c.text), None, None

    def judge_format(self, max_chars: int) -> tuple[dict[str, Any], int]:
        return explained(r"\[\[(A>>B|A>B|A=B|B>A|B>>A)\]\]", max_chars)

    def unfinished(self, raw: str) -> bool:
        """No verdict label at all: v0.1 sends those back once (number_of_judgment_attempts: 2). Two
        different labels are not sent back (inconsistent, as v0.1)."""
        return not [m for m in ARENA_VERDICT_PATTERN.findall(raw) if m]

    def winner(self, judgment: dict[str, Any]) -> str | None:
        v = judgment["verdict"]
        if v is None:
            return None
        if v == "A=B":
            return "tie"
        first = judgment["shown_first"]
        other = "model" if first == "reference" else "reference"
        return first if v.startswith("A") else other

    def position_stats(self, finals: list[dict[str, Any]]) -> dict[str, float | None]:
        """Also ``position_consistency``: of the questions with both games parsed, the share whose two games
        name the same winner."""
        out = super().position_stats(finals)
        games: dict[str, dict[int, str | None]] = defaultdict(dict)
        for j in finals:
            games[j["question_id"]][j["game"]] = self.winner(j)
        both = [g for g in games.values() if g.get(1) is not None and g.get(2) is not None]
        out["position_consistency"] = sum(g[1] == g[2] for g in both) / len(both) if both else None
        return out

    def score(
        self,
        section: ArenaHard,
        finals: list[dict[str, Any]],
        answers: list[dict[str, Any]],
        *,
        model: str,
        bootstrap: int,
        ci: float,
    ) -> dict[str, Any]:
        """Battles from the final verdicts (as show_result.py), Bradley-Terry win rate against the baseline
        with a bootstrap interval; with style control, the same fit with length and markdown features."""
        games = [
            {"uid": j["question_id"], "model": model, "game": j["game"], "verdict": j["verdict"]}
            for j in finals
        ]
        rows = battles(games, baseline=section.baseline)
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
        r = arena_score(rows, baseline=section.baseline, bootstrap=bootstrap, ci=ci, model=model)
        out.update(score=r["score"], lower=r["lower"], upper=r["upper"])
        if section.style_control:
            # token_len in whitespace words for both sides (arena-hard-auto counts gpt-4o tokens): the length
            # feature is the ratio (a - b) / (a + b), so any unit used for both answers serves.
            style: dict[str, dict[str, Any]] = {model: {}, section.baseline: {}}
            for a in answers:
                if a["answers"]:
                    style[model][a["question_id"]] = style_features(
                        a["answers"][0], len(a["answers"][0].split())
                    )
                    ref = a["reference"][0]
                    style[section.baseline][a["question_id"]] = style_features(ref, len(ref.split()))
            try:
                sc = arena_score(
                    rows, baseline=section.baseline, bootstrap=bootstrap, ci=ci, model=model, style=style
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


BENCHMARK = ArenaHardBenchmark()
