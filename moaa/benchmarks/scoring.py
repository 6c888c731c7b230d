"""Benchmark scoring for the ``evaluate`` job, without engines: readers of the published benchmark files and
the formulas that turn judge outputs into AlpacaEval 2, Arena-Hard and MT-Bench numbers.

Everything here is a pure function (plain ``json``/``re``/``numpy``; no Ray, vLLM, pandas or scikit-learn).
Each formula was read from the reference implementation, not re-derived:

- MT-Bench: lm-sys/FastChat @ 0e6d3e4, ``fastchat/llm_judge/common.py`` (``temperature_config``,
  ``NEED_REF_CATS``, ``one_score_pattern`` + ``one_score_pattern_backup`` in ``run_judge_single``: the
  first ``[[x]]`` match, else the first ``[x]``, else -1) and ``fastchat/llm_judge/show_result.py``
  (``display_result_single``: rows with score -1 are dropped, then the mean per turn and the mean of all
  remaining rows).
- Arena-Hard v0.1 (the benchmark whose questions, gpt-4-0314 baseline and judge prompt are in
  ``shared/data/arena_hard``): lmarena/arena-hard-auto @ 3071ef9 (the last commit with the v0.1 pipeline),
  ``gen_judgment.py`` (``get_score``: every ``[[...]]`` match must agree, otherwise no verdict; game 1
  shows the baseline as A, game 2 swaps the answers), ``show_result.py`` (``get_battles_from_row``: a
  strong verdict is 3 battles, ``A=B`` is a tie, an unparsed game is dropped) and ``utils_math.py``
  (``compute_mle_elo``: unpenalized logistic regression where a tie counts as one win each way, scale 400,
  base 10, baseline anchored at 1000; ``get_bootstrap_result``: 100 resamples of the battles;
  ``predict_win_rate``/``get_win_rate_column``: the score is the predicted win rate against the baseline,
  the interval is the 2.5th/97.5th percentile of the bootstrap ratings). The v2.0 rewrite at
  arena-hard-auto @ 196f6b8 (``show_result.py``, ``utils/math_utils.py``) reports a 90% interval
  (5th/95th percentile) instead; ``arena_score(ci=0.90)`` gives that. Style control follows v2.0's
  ``--control-features length markdown`` (``print_leaderboard_with_style_features``) and its markdown
  counter ``utils/add_markdown_info.py``.
- AlpacaEval 2: tatsu-lab/alpaca_eval @ cd543a1, ``src/alpaca_eval/metrics/winrate.py`` (``get_winrate``)
  and ``src/alpaca_eval/metrics/helpers.py`` (``AbsoluteScoringRule.describe_head2head``: win rate = mean
  of ``preference - 1``, standard error = its sample standard error, ``ZeroOneScoringRule`` for the
  discrete win rate), ``src/alpaca_eval/completion_parsers.py`` (``logprob_parser``) and
  ``src/alpaca_eval/annotators/pairwise_evaluator.py`` (``3 - preference`` when the order was switched);
  the length-controlled win rate from ``src/alpaca_eval/metrics/glm_winrate.py``
  (``get_length_controlled_winrate``, GLM ``length_controlled_v1``; see ``alpaca_lc_win_rate``).
- Decontamination: 13-gram overlap on lowercased whitespace words (the n-gram test of the GPT-3 paper's
  contamination study), with an index of the benchmark's n-grams so each training prompt costs one pass.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# ----------------------------------------------------------------------------------------------- readers


def _load_jsonl(path: str | Path) -> list[tuple[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}: line {n}"
            try:
                rows.append((where, json.loads(line)))
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
    return rows


def _load_json_list(path: str | Path) -> list[tuple[str, Any]]:
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of rows, got {type(data).__name__}")
    return [(f"{path}: row {i}", row) for i, row in enumerate(data)]


def _object(row: Any, where: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected an object, got {type(row).__name__}")
    return row


def _str(row: Mapping[str, Any], key: str, where: str) -> str:
    value = row.get(key)
    if not isinstance(value, str):
        raise ValueError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    return value


def _str_list(value: Any, key: str, where: str, length: int | None = None) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: {key!r} must be a non-empty list of strings")
    if length is not None and len(value) != length:
        raise ValueError(f"{where}: {key!r} must have {length} entries, got {len(value)}")
    return list(value)


def _int(row: Mapping[str, Any], key: str, where: str) -> int:
    value = row.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{where}: {key!r} must be an integer, got {type(value).__name__}")
    return value


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
        for where, row in _load_jsonl(reference_path):
            obj = _object(row, where)
            qid = _int(obj, "question_id", where)
            choices = obj.get("choices")
            if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
                raise ValueError(f"{where}: 'choices' must be a non-empty list of objects")
            if qid in file_refs:
                raise ValueError(f"{where}: duplicate question_id {qid}")
            file_refs[qid] = (where, _str_list(choices[0].get("turns"), "choices[0].turns", where))

    questions: list[dict[str, Any]] = []
    seen: set[int] = set()
    for where, row in _load_jsonl(question_path):
        obj = _object(row, where)
        qid = _int(obj, "question_id", where)
        if qid in seen:
            raise ValueError(f"{where}: duplicate question_id {qid}")
        seen.add(qid)
        category = _str(obj, "category", where)
        turns = _str_list(obj.get("turns"), "turns", where, length=2)
        own = obj.get("reference")
        reference = None if own is None else _str_list(own, "reference", where)
        if qid in file_refs:
            reference = file_refs[qid][1]
        elif reference_path is not None and category in NEED_REFERENCE:
            raise ValueError(f"{where}: question {qid} ({category}) has no reference in {reference_path}")
        questions.append({"question_id": qid, "category": category, "turns": turns, "reference": reference})

    for qid, (where, _) in file_refs.items():
        if qid not in seen:
            raise ValueError(f"{where}: reference for question_id {qid}, which is not in {question_path}")
    return questions


def arena_hard_questions(path: str | Path) -> list[dict[str, str]]:
    """Arena-Hard questions (``question.jsonl``, layout of arena-hard-auto @ 196f6b8) in file order, as
    ``{uid, category, cluster, prompt}``."""
    out: list[dict[str, str]] = []
    seen: set[str] = set()
    for where, row in _load_jsonl(path):
        obj = _object(row, where)
        item = {key: _str(obj, key, where) for key in ("uid", "category", "cluster", "prompt")}
        if item["uid"] in seen:
            raise ValueError(f"{where}: duplicate uid {item['uid']!r}")
        seen.add(item["uid"])
        out.append(item)
    return out


def arena_hard_answers(path: str | Path) -> dict[str, str]:
    """One model's Arena-Hard answers (``model_answer/<model>.jsonl``): uid -> the final answer text, read
    from ``messages[-1]["content"]["answer"]``."""
    out: dict[str, str] = {}
    for where, row in _load_jsonl(path):
        obj = _object(row, where)
        uid = _str(obj, "uid", where)
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


def alpaca_eval_outputs(path: str | Path) -> list[dict[str, str]]:
    """An AlpacaEval ``model_outputs.json`` (a JSON list) in file order, as
    ``{instruction, output, generator, dataset}``."""
    keys = ("instruction", "output", "generator", "dataset")
    rows = _load_json_list(path)
    return [{key: _str(_object(row, where), key, where) for key in keys} for where, row in rows]


# ---------------------------------------------------------------------------------------------- MT-Bench

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


# -------------------------------------------------------------------------------------------- Arena-Hard

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
    ``prompts.ARENA_HARD_CONTINUE``) and the two replies are parsed together: pass their concatenation.
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


def _sigmoid(z: np.ndarray | float) -> np.ndarray | float:
    return np.exp(-np.logaddexp(0.0, -z))


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
        p = _sigmoid(x @ beta)
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
        "score": 100.0 * float(_sigmoid(beta[col])),
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
        result["lower"] = 100.0 * float(_sigmoid(low))
        result["upper"] = 100.0 * float(_sigmoid(high))
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


# ------------------------------------------------------------------------------------------- AlpacaEval

LC_NOT_COMPUTED = (
    "length-controlled win rate not computed: no df_gamed.csv configured. alpaca_eval's LC "
    "(length_controlled_v1 in src/alpaca_eval/metrics/glm_winrate.py) fits its GLM with each instruction's "
    "difficulty and the annotations of the two gamed baselines (gpt4_1106_preview_verbose/_concise), which "
    "are in df_gamed.csv of the tatsu-lab/alpaca_eval dataset on the Hugging Face Hub, not in the GitHub "
    "repository; set alpaca_eval.lc_data to that file to compute it (benchmarks.alpaca_lc_win_rate). A "
    "substitute would not be comparable with the leaderboard."
)

# glm_winrate.py GLM_INFO: the design columns (named as patsy names them) and regularize_to_baseline_lambda;
# every one uses kwargs {"n_splits": 5}.
LC_GLMS: dict[str, tuple[tuple[str, ...], float | None]] = {
    "length_controlled_v1": (
        ("np.tanh(std_delta_len)", "instruction_difficulty", "not_gamed_baseline.astype(float)"),
        0.2,
    ),
    "length_controlled_noreg": (
        ("np.tanh(std_delta_len)", "instruction_difficulty", "not_gamed_baseline.astype(float)"),
        None,
    ),
    "length_controlled_minimal": (("np.tanh(std_delta_len)", "not_gamed_baseline.astype(float)"), None),
}
LC_N_SPLITS = 5
LC_CS = np.logspace(-4, 4, 10)  # LogisticRegressionCV's default Cs=10
LC_FILE_COLUMNS = (
    "model",
    "index",
    "preference",
    "std_delta_len",
    "instruction_difficulty",
    "not_gamed_baseline",
)
_LOG_CLIP = 1e-15  # glm_winrate.logloss's epsilon


def _preference(value: Any, i: int) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool):
        raise ValueError(f"preference {i}: expected a number, got a bool")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"preference {i}: {value!r} is not a number") from None
    raise ValueError(f"preference {i}: expected a number, got {type(value).__name__}")


def alpaca_win_rate(preferences: Iterable[float | str | None]) -> dict[str, Any]:
    """AlpacaEval's head-to-head metrics from ``preference`` values, as ``get_winrate``.

    A preference is in [1, 2]: 1 the reference (output_1) is preferred, 2 the model (output_2), 1.5 a
    draw, continuous values in between for the weighted (logprob) annotators; 0 is an old spelling of a
    draw. ``win_rate`` is 100 * mean(preference - 1) and ``standard_error`` 100 * its sample standard
    error (ddof 1), over the values in [1, 2] (None, NaN and out-of-range values are dropped, as the
    source drops non-preferences). ``n_wins``/``n_wins_base`` count values above/below 1.5, ``n_draws``
    the exact 1.5s. ``discrete_win_rate`` rounds each preference first (``ZeroOneScoringRule``).
    """
    raw = np.array([_preference(p, i) for i, p in enumerate(preferences)], dtype=float)
    prefs = np.where(raw == 0.0, 1.5, raw)
    valid = prefs[(prefs >= 1.0) & (prefs <= 2.0)] - 1.0
    n = len(valid)
    # ZeroOneScoringRule: 1.5 -> 0 (draw), round half to even, then 0 -> 1.5 again before scoring; so a
    # value outside [1, 2] can round into range and count, as in the source.
    rounded = np.where(raw == 1.5, 0.0, np.round(raw))
    rounded = np.where(rounded == 0.0, 1.5, rounded)
    discrete = rounded[(rounded >= 1.0) & (rounded <= 2.0)] - 1.0
    return {
        "win_rate": float(valid.mean() * 100) if n else math.nan,
        "standard_error": float(valid.std(ddof=1) / math.sqrt(n) * 100) if n > 1 else math.nan,
        "n_wins": int(np.sum(valid > 0.5)),
        "n_wins_base": int(np.sum(valid < 0.5)),
        "n_draws": int(np.sum(prefs == 1.5)),
        "n_total": n,
        "discrete_win_rate": float(discrete.mean() * 100) if len(discrete) else math.nan,
    }


def alpaca_preference(top_logprobs: Mapping[str, float], switched: bool = False) -> float | None:
    """The weighted_alpaca_eval_gpt4_turbo preference from the judge's first-token top logprobs, as
    ``logprob_parser(numerator_token="m", denominator_tokens=["m", "M"], is_binarize=False)``:
    2 - P(m) / (P(m) + P(M)), where "m" names output_1 in ``prompts.ALPACA_EVAL_CLF``. None when neither
    token is among the top logprobs (the source's NaN). ``switched``: the two outputs were shown in the
    other order, so the preference is mapped back with 3 - x, as the pairwise annotator does."""
    lp_m, lp_big = top_logprobs.get("m"), top_logprobs.get("M")
    if lp_m is None and lp_big is None:
        return None
    lp_m = -math.inf if lp_m is None else float(lp_m)
    lp_big = -math.inf if lp_big is None else float(lp_big)
    denominator = float(np.logaddexp(lp_m, lp_big))
    preference = 2.0 - math.exp(lp_m - denominator)
    return 3.0 - preference if switched else preference


def _lc_number(text: str | None, where: str, key: str, allow_nan: bool = False) -> float:
    text = (text or "").strip()
    if not text and allow_nan:
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: {key} {text!r} is not a number") from None
    if not math.isfinite(value) and not (allow_nan and math.isnan(value)):
        raise ValueError(f"{where}: {key} must be finite, got {text!r}")
    return value


def _lc_file(path: str | Path) -> dict[str, Any]:
    """df_gamed.csv as glm_winrate.py reads it (``pd.read_csv``): its rows, numbered from 0 as pandas does."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in LC_FILE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{path}: not alpaca_eval's df_gamed.csv: columns {missing} missing (it needs "
                f"{', '.join(LC_FILE_COLUMNS)}); get df_gamed.csv from the tatsu-lab/alpaca_eval dataset"
            )
        rows = list(reader)
    if not rows:
        raise ValueError(f"{path}: no rows")
    index, pref, sdl, diff, not_gamed, instr = [], [], [], [], [], []
    for n, row in enumerate(rows):
        where = f"{path}: row {n} (line {n + 2})"
        try:
            index.append(int(row["index"]))
        except (TypeError, ValueError):
            raise ValueError(f"{where}: index {row['index']!r} is not an integer") from None
        p = _lc_number(row["preference"], where, "preference", allow_nan=True)
        if not (math.isnan(p) or 0.0 <= p <= 1.0):
            raise ValueError(
                f"{where}: preference {p} is outside [0, 1] (df_gamed.csv stores preference - 1)"
            )
        pref.append(p)
        sdl.append(_lc_number(row["std_delta_len"], where, "std_delta_len"))
        diff.append(_lc_number(row["instruction_difficulty"], where, "instruction_difficulty"))
        flag = (row["not_gamed_baseline"] or "").strip().lower()
        if flag not in ("true", "false"):
            raise ValueError(f"{where}: not_gamed_baseline {row['not_gamed_baseline']!r} is not True/False")
        not_gamed.append(flag == "true")
        instr.append(row.get("instruction"))
    # df_gamed.drop_duplicates("index")["instruction_difficulty"] keeps the row labels of first occurrences.
    first: dict[int, int] = {}
    for n, i in enumerate(index):
        first.setdefault(i, n)
    return {
        "index": np.array(index),
        "preference": np.array(pref),
        "std_delta_len": np.array(sdl),
        "instruction_difficulty": np.array(diff),
        "not_gamed_baseline": np.array(not_gamed),
        "instruction": instr if "instruction" in rows[0] else None,
        "labels": set(first.values()),
    }


def _lc_features(
    columns: Sequence[str], sdl: np.ndarray, diff: np.ndarray, not_gamed: np.ndarray
) -> np.ndarray:
    values = {
        "np.tanh(std_delta_len)": np.tanh(sdl),
        "instruction_difficulty": diff,
        "not_gamed_baseline.astype(float)": not_gamed.astype(float),
    }
    return np.column_stack([values[c] for c in columns])


def _l1_logistic(x: np.ndarray, p: np.ndarray, a: np.ndarray, c: float, max_iter: int = 200) -> np.ndarray:
    """liblinear's L1-regularized logistic regression (solver L1R_LR, no intercept), solved to convergence:
    minimize ||w||_1 + c * sum_j a_j * (p_j * log(1 + e^-z_j) + (1 - p_j) * log(1 + e^z_j)), z = x @ w. This
    is what ``fit_LogisticRegressionCV(is_ytrue_proba=True)`` asks of it: each row twice, labelled 1 with
    sample weight a*p and 0 with a*(1-p). Proximal Newton: a lasso subproblem solved by coordinate descent,
    then a backtracking step."""
    k = x.shape[1]
    w = np.zeros(k)

    def objective(v: np.ndarray) -> float:
        z = x @ v
        return float(np.abs(v).sum() + c * np.sum(a * (np.logaddexp(0.0, z) - p * z)))

    current = objective(w)
    for _ in range(max_iter):
        s = _sigmoid(x @ w)
        grad = c * (x.T @ (a * (s - p)))
        hess = c * ((x * (a * s * (1.0 - s))[:, None]).T @ x)
        d = np.zeros(k)
        for _sweep in range(10_000):
            change = 0.0
            for j in range(k):
                if hess[j, j] <= 0.0:  # an all-zero column: its gradient is 0 too, the L1 term keeps it at 0
                    continue
                target = w[j] + d[j] - (grad[j] + hess[j] @ d) / hess[j, j]
                u = math.copysign(max(abs(target) - 1.0 / hess[j, j], 0.0), target)
                change = max(change, abs(u - w[j] - d[j]))
                d[j] = u - w[j]
            if change <= 1e-15 * (1.0 + float(np.abs(w + d).max())):
                break
        if float(np.abs(d).max()) <= 1e-13 * (1.0 + float(np.abs(w).max())):
            break
        slack = 1e-13 * max(1.0, abs(current))
        t = 1.0
        while True:
            new = objective(w + t * d)
            if new <= current + slack or t < 1e-10:
                break
            t /= 2.0
        if new > current + slack:
            break
        w, current = w + t * d, new
    return w


def _group_k_folds(n_groups: int, n_splits: int) -> np.ndarray:
    """The fold of each group under sklearn's GroupKFold (1.4): groups sorted by size with np.argsort (the
    default, unstable kind), largest first, each to the lightest fold. All groups here have 2 rows, so this
    is a round robin over that argsort order, which depends on numpy's sort for ties, as in the source."""
    order = np.argsort(np.full(n_groups, 2, dtype=np.intp))[::-1]
    folds = np.empty(n_groups, dtype=int)
    folds[order] = np.arange(n_groups) % n_splits
    return folds


def _lc_fit(x: np.ndarray, p: np.ndarray, a: np.ndarray | None, n_splits: int) -> tuple[np.ndarray, float]:
    """``fit_LogisticRegressionCV(..., is_ytrue_proba=True, n_splits)``: LogisticRegressionCV(cv=GroupKFold,
    penalty="l1", solver="liblinear", fit_intercept=False) over LC_CS, scored by ``logloss_continuous``
    (minus the mean over the fold's duplicated rows of true_sample_weight * log loss, predictions clipped to
    [1e-15, 1 - 1e-15]); the C with the best summed score (first on ties) is refitted on all rows."""
    weights = np.ones(len(p)) if a is None else a
    folds = _group_k_folds(len(p), n_splits)
    scores = np.zeros(len(LC_CS))
    for f in range(n_splits):
        train, test = folds != f, folds == f
        for i, c in enumerate(LC_CS):
            w = _l1_logistic(x[train], p[train], weights[train], float(c))
            q = np.clip(_sigmoid(x[test] @ w), _LOG_CLIP, 1.0 - _LOG_CLIP)
            # Each row appears twice in the fold, both times with y_true = p, so the mean over the
            # duplicated rows is the mean over the rows.
            scores[i] += float(
                np.mean(weights[test] * (p[test] * np.log(q) + (1.0 - p[test]) * np.log(1.0 - q)))
            )
    best = float(LC_CS[int(np.argmax(scores))])
    return _l1_logistic(x, p, weights, best), best


def alpaca_lc_win_rate(
    annotations: Sequence[Mapping[str, Any]],
    difficulty_path: str | Path,
    glm_name: str = "length_controlled_v1",
    eval_set_instructions: Sequence[str] | None = None,
) -> dict[str, Any]:
    """AlpacaEval 2's length-controlled win rate, as ``get_length_controlled_winrate(annotations, glm_name)``
    in tatsu-lab/alpaca_eval @ cd543a1, ``src/alpaca_eval/metrics/glm_winrate.py``.

    ``annotations``: one model's annotations.json rows against the reference, in the order of the
    AlpacaEval set: ``instruction``, ``output_1`` (reference), ``output_2`` (model), ``preference`` (in
    [1, 2], 0 for a draw, None/NaN when unannotated); ``generator_1``/``generator_2`` when present.
    ``difficulty_path``: the ``df_gamed.csv`` that ``_get_featurized_data`` downloads from the
    tatsu-lab/alpaca_eval dataset on the Hugging Face Hub (it is not in the GitHub repository): per row
    ``model``, ``index`` (instruction position), ``preference`` (minus 1), ``std_delta_len``,
    ``instruction_difficulty`` and ``not_gamed_baseline`` (False: the gamed gpt4_1106_preview baselines).

    What it computes (line numbers of glm_winrate.py at that commit):

    - L21-37 ``GLM_INFO``: formula ``np.tanh(std_delta_len) + instruction_difficulty +
      not_gamed_baseline.astype(float) - 1`` (no intercept), regularize_to_baseline_lambda 0.2, 5 splits
      (``LC_GLMS``; ``length_controlled_noreg``/``_minimal`` are the other two entries).
    - L218-239 ``_get_featurized_data``: std_delta_len = (len(output_1) - len(output_2)) / its sample std
      (ddof 1, over all rows), preference - 1 with 0 read as a draw, and the difficulty of annotation row g
      is ``df_gamed.drop_duplicates("index")["instruction_difficulty"][g]``: a label lookup, so row g of the
      file (which must be the first row of its ``index``). Rows are matched by position, never by text.
    - L245-252: the model's rows are appended to all of df_gamed's; sample weight 1 for a
      not_gamed_baseline row, lambda / 2 for a gamed one. L100-103: rows without a preference are not fitted.
    - L303-360 ``fit_LogisticRegressionCV(is_ytrue_proba=True, n_splits=5)``: see ``_lc_fit``.
    - L241-243, L108, L117-118: the prediction for every annotation row at std_delta_len = 0 and
      not_gamed_baseline = 1, i.e. logistic(w_difficulty * difficulty + w_not_gamed);
      ``length_controlled_winrate`` = 100 * its mean and ``lc_standard_error`` = 100 * its ``sem`` (ddof 1),
      a spread of the predictions, not a sampling error of the preferences.
    - L89-112: when the model is the baseline (generator_2 == generator_1) the weights are 0 and LC is 50
      (the file is still read and checked here, where the source skips it).
    - L142, L186-193: ``lc_extreme_change`` is the condition under which the source warns that the GLM may
      have failed.

    The result also has ``alpaca_win_rate``'s keys (the source starts from ``get_winrate``), the fitted
    ``glm_weights`` (named as the source saves them) and the chosen ``glm_C``. liblinear stops at a
    tolerance of 1e-4 where this solves to convergence, and GroupKFold's split of the rows follows numpy's
    unstable argsort as in the source, so the last digits can differ from a run of the source.

    ``eval_set_instructions``: the AlpacaEval instructions in the order the file's rows follow (the
    reference model_outputs.json); given, annotation row i must carry instruction i. Raises ValueError,
    naming the row or file, on anything the source would fail on or silently misread.
    """
    if glm_name not in LC_GLMS:
        raise ValueError(f"glm_name must be one of {sorted(LC_GLMS)}, got {glm_name!r}")
    columns, reg_lambda = LC_GLMS[glm_name]
    n = len(annotations)
    if n < 2:
        raise ValueError(f"need at least 2 annotation rows, got {n}")
    if eval_set_instructions is not None and len(eval_set_instructions) < n:
        raise ValueError(f"{n} annotation rows but only {len(eval_set_instructions)} eval_set_instructions")
    gamed = _lc_file(difficulty_path)
    len_1, len_2, prefs, gens = np.zeros(n), np.zeros(n), np.zeros(n), set()
    for i, row in enumerate(annotations):
        where = f"annotation row {i}"
        row = _object(row, where)
        instruction = _str(row, "instruction", where)
        len_1[i] = len(_str(row, "output_1", where))
        len_2[i] = len(_str(row, "output_2", where))
        value = _preference(row.get("preference"), i)
        value = 1.5 if value == 0.0 else value
        if not (math.isnan(value) or 1.0 <= value <= 2.0):
            raise ValueError(
                f"{where}: preference {value} is outside [1, 2] (0 for a draw, None when missing)"
            )
        prefs[i] = value - 1.0
        if "generator_2" in row:
            gens.add(row["generator_2"])
        if eval_set_instructions is not None and instruction != eval_set_instructions[i]:
            raise ValueError(
                f"{where}: instruction differs from eval set instruction {i}: the GLM reads the "
                "difficulty of row i by position, so pass the annotations of the whole set in its order"
            )
        if i not in gamed["labels"]:
            raise ValueError(
                f"{where}: {difficulty_path} has no difficulty for it: alpaca_eval reads the difficulty "
                f"of annotation row i from row i of df_gamed.csv, which has {len(gamed['index'])} rows, and "
                f"row {i} is missing or repeats an earlier index; pass one model's annotations of the "
                "AlpacaEval set, in its order"
            )
        if gamed["instruction"] is not None and gamed["instruction"][i] != instruction:
            raise ValueError(f"{where}: instruction differs from row {i} of {difficulty_path}")
    if len(gens) > 1:
        raise ValueError(f"annotations of more than one model (generator_2 {sorted(map(str, gens))})")
    if np.isnan(prefs).all():
        raise ValueError("no annotation row has a preference")

    metrics = alpaca_win_rate(row.get("preference") for row in annotations)
    first = annotations[0]
    difficulty = gamed["instruction_difficulty"][:n]  # row g of the file for annotation row g (checked above)
    if "generator_1" in first and first.get("generator_1") == first.get("generator_2"):
        weights = {c: 0.0 for c in columns}
        predicted, best_c = np.full(n, 0.5), math.nan
    else:
        delta = len_1 - len_2
        spread = float(delta.std(ddof=1))
        if not spread > 0.0:
            raise ValueError(
                "every annotation row has the same len(output_1) - len(output_2): std_delta_len divides by "
                "their standard deviation, which is 0"
            )
        std_delta_len = delta / spread
        x_model = _lc_features(columns, std_delta_len, difficulty, np.ones(n, dtype=bool))
        if reg_lambda:
            ng = gamed["not_gamed_baseline"]
            x_gamed = _lc_features(columns, gamed["std_delta_len"], gamed["instruction_difficulty"], ng)
            x = np.vstack([x_gamed, x_model])
            p = np.concatenate([gamed["preference"], prefs])
            a = np.concatenate([ng.astype(float) + reg_lambda * (~ng) / 2.0, np.ones(n)])
        else:
            x, p, a = x_model, prefs, None
        keep = ~np.isnan(p)
        if int(keep.sum()) < LC_N_SPLITS:
            raise ValueError(f"need at least {LC_N_SPLITS} rows with a preference to fit the GLM")
        coef, best_c = _lc_fit(x[keep], p[keep], None if a is None else a[keep], LC_N_SPLITS)
        weights = {c: float(v) for c, v in zip(columns, coef)}
        x_test = _lc_features(columns, np.zeros(n), difficulty, np.ones(n, dtype=bool))
        predicted = _sigmoid(x_test @ coef)
    lc = float(predicted.mean() * 100)
    win_rate = metrics["win_rate"]
    too_small = lc < min(win_rate - win_rate / 4, win_rate - 10)
    too_large = lc > max(win_rate + (100 - win_rate) / 4, win_rate + 10)
    metrics.update(
        {
            "length_controlled_winrate": lc,
            "lc_standard_error": float(predicted.std(ddof=1) / math.sqrt(n) * 100),
            "glm_weights": weights,
            "glm_C": best_c,
            "lc_extreme_change": bool(too_small or too_large),
        }
    )
    return metrics


# ------------------------------------------------------------------------------------- decontamination


def ngrams(text: str, n: int = 13) -> set[tuple[str, ...]]:
    """The word n-grams of ``text``, lowercased and split on whitespace. A text shorter than n words has
    none, so it can never be flagged."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    words = text.lower().split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


NgramIndex = dict[tuple[str, ...], list[int]]


def ngram_index(benchmark_prompts: Sequence[str], n: int = 13) -> NgramIndex:
    """Every word n-gram of the benchmark prompts -> the indexes of the prompts that hold it."""
    index: NgramIndex = {}
    for j, prompt in enumerate(benchmark_prompts):
        for gram in ngrams(prompt, n):
            index.setdefault(gram, []).append(j)
    return index


def matches(index: NgramIndex, text: str, n: int = 13) -> list[int]:
    """The benchmark prompts (indexes, sorted) that share at least one word n-gram with ``text``."""
    hits: set[int] = set()
    for gram in ngrams(text, n):
        hits.update(index.get(gram, ()))
    return sorted(hits)


def overlaps(
    train_prompts: Iterable[str], benchmark_prompts: Sequence[str], n: int = 13
) -> list[tuple[int, int]]:
    """(train_index, benchmark_index) pairs that share at least one word n-gram, sorted. The benchmark's
    n-grams are indexed once, so the cost is one pass over each training prompt's n-grams."""
    index = ngram_index(benchmark_prompts, n)
    return [(i, j) for i, prompt in enumerate(train_prompts) for j in matches(index, prompt, n)]


def benchmark_prompts(path: str | Path) -> list[str]:
    """The prompts of a benchmark file in its published layout, for decontamination: MT-Bench
    ``question.jsonl`` (both turns), Arena-Hard ``question.jsonl`` (``prompt``) or AlpacaEval
    ``*.json`` (``instruction``)."""
    rows = _load_json_list(path) if str(path).endswith(".json") else _load_jsonl(path)
    if not rows:
        raise ValueError(f"{path}: no rows")
    first = _object(rows[0][1], rows[0][0])
    if "turns" in first:
        return ["\n".join(q["turns"]) for q in mt_bench_questions(path)]
    if "prompt" in first:
        return [q["prompt"] for q in arena_hard_questions(path)]
    if "instruction" in first:
        return [o["instruction"] for o in alpaca_eval_outputs(path)]
    raise ValueError(
        f"{path}: not a benchmark layout moaa reads (MT-Bench 'turns', Arena-Hard 'prompt', AlpacaEval "
        f"'instruction'); its first row has keys {sorted(first)}"
    )
