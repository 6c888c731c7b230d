"""AlpacaEval 2 (tatsu-lab/alpaca_eval): 805 instructions, each answer judged against a reference model's.

The benchmark as the evaluate stage runs it (``AlpacaEvalBenchmark``, config section ``alpaca_eval:``): each
answer against the reference model's answer, judged with the ``alpaca_eval_clf`` prompt in a seeded random
order; the preference comes from the judge's first-token logprobs of ``m`` and ``M``
(weighted_alpaca_eval_gpt4_turbo), or from its choice when neither is among them; the score is the win rate
(ties 0.5) with its standard error. The length-controlled win rate needs AlpacaEval's own GLM data (see
``AlpacaEval.lc_data``); without it the result says "LC not computed" and why.

Read from the reference implementation, not re-derived: tatsu-lab/alpaca_eval @ cd543a1,
``src/alpaca_eval/metrics/winrate.py`` (``get_winrate``) and ``src/alpaca_eval/metrics/helpers.py``
(``AbsoluteScoringRule.describe_head2head``: win rate = mean of ``preference - 1``, standard error = its
sample standard error, ``ZeroOneScoringRule`` for the discrete win rate),
``src/alpaca_eval/completion_parsers.py`` (``logprob_parser``) and
``src/alpaca_eval/annotators/pairwise_evaluator.py`` (``3 - preference`` when the order was switched); the
length-controlled win rate from ``src/alpaca_eval/metrics/glm_winrate.py`` (``get_length_controlled_winrate``,
GLM ``length_controlled_v1``; see ``alpaca_lc_win_rate``).
"""

from __future__ import annotations

import csv
import hashlib
import math
import re
import statistics
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
    local_copy,
    read_file,
)
from moaa.benchmarks.common import (
    as_object,
    get_str,
    load_json_list,
    sigmoid,
)
from moaa.benchmarks.files import SAMPLE_DIR
from moaa.core import storage
from moaa.core.config import Config, InputPath
from moaa.engine.settings import Completion, SamplingConfig

# ---------------------------------------------------------------------------------------- judge prompt
# AlpacaEval 2 judge (annotator weighted_alpaca_eval_gpt4_turbo: gpt-4-1106-preview, max_tokens 1,
# top_logprobs 5; the preference is read from the logprobs of "m" and "M", see
# alpaca_preference). Verbatim from tatsu-lab/alpaca_eval,
# src/alpaca_eval/evaluators_configs/alpaca_eval_clf_gpt4_turbo/alpaca_eval_clf.txt at commit
# cd543a149df89434d8a54582c0151c0b945c3d20 (Apache-2.0). A ChatML text, system turn included. The braces
# around the placeholders are literal, so fill {instruction}, {output_1} (model "m", the reference) and
# {output_2} ("M") with str.replace, as alpaca_eval's utils.make_prompts does, not with str.format.
ALPACA_EVAL_CLF = '''<|im_start|>system
You are a highly efficient assistant, who evaluates and selects the best large language model (LLMs) based on the quality of their responses to a given instruction. This process will be used to create a leaderboard reflecting the most accurate and human-preferred answers.
<|im_end|>
<|im_start|>user
I require a leaderboard for various large language models. I'll provide you with prompts given to these models and their corresponding outputs. Your task is to assess these responses, and select the model that produces the best output from a human perspective.

## Instruction

{
    "instruction": """{instruction}""",
}

## Model Outputs

Here are the unordered outputs from the models. Each output is associated with a specific model, identified by a unique model identifier.

{
    {
        "model_identifier": "m",
        "output": """{output_1}"""
    },
    {
        "model_identifier": "M",
        "output": """{output_2}"""
    }
}

## Task

Evaluate the models based on the quality and relevance of their outputs, and select the model that generated the best output. Answer by providing the model identifier of the best model. We will use your output as the name of the best model, so make sure your output only contains one of the following model identifiers and nothing else (no quotes, no spaces, no new lines, ...): m or M.

## Best Model Identifier
<|im_end|>'''  # noqa: E501


def _chatml(text: str) -> Messages:
    """Messages of a ChatML text (AlpacaEval's prompt files are ChatML, system turn included)."""
    found = re.findall(r"<\|im_start\|>(system|user|assistant)\n(.*?)\n?<\|im_end\|>", text, re.S)
    return [{"role": role, "content": content} for role, content in found]


ALPACA_MESSAGES = _chatml(ALPACA_EVAL_CLF)
# The judge reads the first token's top logprobs (weighted_alpaca_eval_gpt4_turbo asks for 5; vLLM gives up
# to 20 by default, and more of them makes it likelier that both "m" and "M" are there).
ALPACA_TOP_LOGPROBS = 20


def alpaca_eval_outputs(path: str | Path) -> list[dict[str, str]]:
    """An AlpacaEval ``model_outputs.json`` (a JSON list) in file order, as
    ``{instruction, output, generator, dataset}``."""
    keys = ("instruction", "output", "generator", "dataset")
    rows = load_json_list(path)
    return [{key: get_str(as_object(row, where), key, where) for key in keys} for where, row in rows]


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
    2 - P(m) / (P(m) + P(M)), where "m" names output_1 in ``ALPACA_EVAL_CLF``. None when neither
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
        s = sigmoid(x @ w)
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
            q = np.clip(sigmoid(x[test] @ w), _LOG_CLIP, 1.0 - _LOG_CLIP)
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
        row = as_object(row, where)
        instruction = get_str(row, "instruction", where)
        len_1[i] = len(get_str(row, "output_1", where))
        len_2[i] = len(get_str(row, "output_2", where))
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
        predicted = sigmoid(x_test @ coef)
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


# ------------------------------------------------------------------------ the benchmark, as evaluate runs it


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


def alpaca_switched(instruction: str, seed: int) -> bool:
    """Whether the model's output is shown first (as "m"): AlpacaEval randomizes the order per instruction
    with a seeded draw, so that a judge's position bias spreads over both sides."""
    return hashlib.sha256(f"{seed}\0{instruction}".encode()).digest()[0] % 2 == 1


class AlpacaEvalBenchmark(Benchmark[AlpacaEval]):
    """One comparison per instruction, the two outputs in the row's seeded order."""

    name = "alpaca_eval"
    config = AlpacaEval
    description = "AlpacaEval 2; null: skip."
    pipeline_slice = {"limit": 4}
    judged = True
    judge_prompts = (ALPACA_EVAL_CLF,)
    judge_logprobs = ALPACA_TOP_LOGPROBS

    def items(self, section: AlpacaEval) -> list[dict[str, Any]]:
        """The first ``limit`` instructions; ``reference``: the reference model's output."""
        outs = read_file(alpaca_eval_outputs, section.reference_outputs, "alpaca_eval.reference_outputs")
        check_enough(
            "alpaca_eval.reference_outputs",
            section.reference_outputs,
            section.limit,
            len(outs),
            "instructions",
        )
        outs = outs[: section.limit] if section.limit else outs
        return [
            {
                "question_id": f"{i:04d}",
                "category": o["dataset"],
                "turns": [o["instruction"]],
                "reference": [o["output"]],
                "switched": alpaca_switched(o["instruction"], section.seed),
            }
            for i, o in enumerate(outs)
        ]

    def source(self, section: AlpacaEval) -> str:
        return section.reference_outputs

    def check_files(self, section: AlpacaEval) -> None:
        if section.lc_data and not storage.exists(section.lc_data):
            raise BenchmarkFileError(
                f"alpaca_eval.lc_data: {section.lc_data} not found: give the df_gamed.csv of the "
                "tatsu-lab/alpaca_eval dataset on the Hugging Face Hub, or lc_data=null (LC not computed)"
            )

    def order_switched(self, instruction: str, seed: int) -> bool:
        return alpaca_switched(instruction, seed)

    def answer_sampling(
        self, section: AlpacaEval, state: dict[str, Any], base: SamplingConfig
    ) -> SamplingConfig:
        return base.model_copy(update={"max_tokens": section.max_tokens} if section.max_tokens else {})

    def judge_keys(self, state: dict[str, Any]) -> list[Key]:
        return [(1, 0)]

    def shown_first(self, state: dict[str, Any], game: int) -> str | None:
        """The reference as "m" unless the row's order is switched."""
        return "model" if state["switched"] else "reference"

    def judge_messages(self, state: dict[str, Any], turn: int, game: int) -> Messages:
        q, a, ref = state["turns"], state["answers"], state["reference"]
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

    def parse(self, c: Completion, switched: bool) -> Verdict:
        """The choice m/M and the preference in [1, 2] (2 = the model preferred) from the first-token
        logprobs, else from the choice."""
        text = c.text
        choice = text.strip() if text.strip() in ("m", "M") else None
        pref = alpaca_preference(c.first_logprobs, switched) if c.first_logprobs else None
        if pref is not None:
            return choice, pref, "logprobs"
        if choice is None:
            return None, None, None
        # "m" names output_1: the reference, or the model when the order is switched.
        raw = 1.0 if choice == "m" else 2.0
        return choice, (3.0 - raw if switched else raw), "choice"

    def judge_format(self, max_chars: int) -> tuple[dict[str, Any], int]:
        """One token, m or M (the judge's answer is its first token)."""
        return {"choice": ["m", "M"]}, 1

    def free_format(self, max_tokens: int) -> tuple[dict[str, Any] | None, int]:
        # Even a free judge answers with one token: the preference is read from its logprobs.
        return self.judge_format(0)

    def winner(self, judgment: dict[str, Any]) -> str | None:
        if judgment["score"] is None:
            return None
        return "model" if judgment["score"] > 1.5 else "reference" if judgment["score"] < 1.5 else "tie"

    def score(
        self,
        section: AlpacaEval,
        finals: list[dict[str, Any]],
        answers: list[dict[str, Any]],
        *,
        model: str,
        bootstrap: int,
        ci: float,
    ) -> dict[str, Any]:
        """AlpacaEval's win rate and standard error over the final preferences; LC only with its GLM data."""
        w = alpaca_win_rate([j["score"] for j in finals])
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
            "note": LC_NOT_COMPUTED,
        }
        if section.lc_data is not None and answers:
            lc = self.lc(section, finals, answers)
            out["lc_win_rate"] = lc.pop("lc_win_rate")
            out["note"] = (
                None
                if section.limit is None
                else f"LC on the first {len(answers)} instructions of 805: not comparable with the "
                "leaderboard"
            )
            out["details"].update(lc)
        return out

    def lc(
        self, section: AlpacaEval, finals: list[dict[str, Any]], answers: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """AlpacaEval's length-controlled win rate (``alpaca_lc_win_rate``) over this model's rows, in the
        reference file's order: its GLM matches each row to its instruction's difficulty by position."""
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
        outs = read_file(alpaca_eval_outputs, section.reference_outputs, "alpaca_eval.reference_outputs")
        try:
            r = alpaca_lc_win_rate(
                annotations,
                local_copy(section.lc_data),
                eval_set_instructions=[o["instruction"] for o in outs],
            )
        except ValueError as e:
            raise BenchmarkFileError(f"alpaca_eval.lc_data: {e}") from None
        return {
            "lc_win_rate": r["length_controlled_winrate"],
            "lc_standard_error": r["lc_standard_error"],
            "lc_glm_weights": r["glm_weights"],
            "lc_instructions": len(annotations),
        }


BENCHMARK = AlpacaEvalBenchmark()
