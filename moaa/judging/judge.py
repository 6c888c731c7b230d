"""The judge, in one place: its row functions (pure functions over one row's state, no engine, no Ray,
like ``moaa.judging.moa``), its modes, its config and its Ray Data pipeline, which generate_dpo and
judge_eval run.

A row's state (one JSON string between Ray Data stages)::

    prompt_id, source, shard     from the prompts schema (or the labeled file, for judge_eval)
    prompt                       the conversation up to the answer (TRL conversational messages)
    candidates                   answer texts; candidate_meta: {finish_reason, completion_tokens} each
    criteria                     {judge: {criteria: [...], raw}}: the criteria each judge picked
    judgments                    every judge and aggregator call: {judge, role, a, b, raw, verdict,
                                 prompt_tokens, completion_tokens}; (a, b) = candidate indexes shown as
                                 A and B; verdict 'A' | 'B' | 'tie' | None (unparsed)
    tokens                       {"<role>/<model>": {prompt_tokens, completion_tokens, calls}}
    error, error_stage           set by the first stage that failed; later stages skip the row

Modes: ``moa`` (judges evaluate, an aggregator judge decides each ordered pair), ``jury`` (the judges'
verdicts are pooled by majority or mean, PoLL), ``single`` (the first judge alone) and ``verifier`` (no
model: the candidate that follows more of the prompt's verifiable instructions wins, IFEval's strict
checks; an oracle baseline for the judges on prompts that carry instructions). Every ordered pair
(i, j), i != j, is judged once with i as A and once with i as B; a candidate's score is its share of wins
over all its comparisons (tie = half a win).
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections import Counter
from functools import partial
from typing import Any, Literal

from pydantic import Field, model_validator

from moaa.benchmarks import verifiable
from moaa.core.config import Config
from moaa.embedded import smollm
from moaa.engine.settings import Completion, ModelConfig, SamplingConfig
from moaa.judging.prompts import (
    AGGREGATE_JUDGMENTS,
    AGGREGATE_JUDGMENTS_USER,
    JUDGE_CRITERIA,
    JUDGE_PAIR,
    JUDGE_SYSTEM,
    SELECT_CRITERIA,
)

JUDGE_PROMPTS = (SELECT_CRITERIA, JUDGE_SYSTEM, JUDGE_PAIR, AGGREGATE_JUDGMENTS, AGGREGATE_JUDGMENTS_USER)

Messages = list[dict[str, str]]
Pair = tuple[int, int]
VERDICTS = ("A", "B", "tie")
VALUE = {"A": 1.0, "B": 0.0, "tie": 0.5}  # what a verdict is worth to the candidate shown as A
MIRROR = {"A": "B", "B": "A", "tie": "tie"}
MODES = ("moa", "jury", "single", "verifier")

# ----------------------------------------------------------------------------------------------- parsing


def criteria_choices(criteria: list[str] | tuple[str, ...], k: int) -> list[str]:
    """Every answer the criteria step may give: each k-subset of ``criteria`` as "a, b, c", in list
    order. Used as a vLLM ``choice`` constraint: k distinct criteria, always parseable."""
    return [", ".join(c) for c in itertools.combinations(criteria, k)]


def parse_criteria(text: str, criteria: list[str] | tuple[str, ...], k: int) -> list[str]:
    """The known criteria named in ``text`` (first k, no repeats, in the order written). Tolerant of
    case, spacing, numbering and other separators so that unconstrained output parses too."""
    found: list[tuple[int, str]] = []
    low = text.lower()
    for c in criteria:
        m = re.search(r"\b" + re.escape(c.lower()).replace(r"\ ", r"[\s_-]+") + r"\b", low)
        if m:
            found.append((m.start(), c))
    return [c for _, c in sorted(found)][:k]


def pair_regex(max_chars: int) -> str:
    """The judge's output format: a one-line evaluation of at most ``max_chars`` characters, then the
    verdict. Bounded so that generation always reaches the verdict within ``pair_max_tokens``."""
    return r"Evaluation: [^\n]{0," + str(max_chars) + r"}\nVerdict: (A|B|tie)"


def pair_max_tokens(max_chars: int) -> int:
    # A character is at most 4 tokens (a byte-level tokenizer on 4-byte UTF-8), plus the fixed text.
    return 4 * max_chars + 32


_VERDICT_PATTERNS = [
    re.compile(r"verdict\s*[:=]?\s*\**\s*\[*\s*(A|B|tie|C)\b", re.I),  # ours; MT-Bench's [[C]] is a tie
    re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.I),
    re.compile(r"^\s*(A|B|tie)\s*\.?\s*$", re.I),  # the bare choice (aggregator)
    re.compile(r"\b(?:assistant|response|output)\s*\(?(A|B)\)?\s+is\s+(?:better|preferred)", re.I),
]


def parse_verdict(text: str) -> str | None:
    """'A', 'B', 'tie' or None. The last verdict a text states wins (models sometimes restate)."""
    for pattern in _VERDICT_PATTERNS:
        hits = pattern.findall(text or "")
        if hits:
            v = hits[-1].strip().lower()
            return "tie" if v in ("tie", "c") else v.upper()
    return None


def question_text(prompt: Messages) -> str:
    """What the judges see as the question: the last user message, after the system prompt if any."""
    user = [m["content"] for m in prompt if m["role"] == "user"][-1]
    system = [m["content"] for m in prompt if m["role"] == "system"]
    return f"(System prompt: {system[0]})\n{user}" if system else user


# ----------------------------------------------------------------------------------------------- scoring


def ordered_pairs(candidates: list[str]) -> list[Pair]:
    """The ordered pairs to judge: (i, j) and (j, i) for every two candidates with different texts.
    Identical texts are a tie by definition and cost nothing."""
    n = len(candidates)
    return [(i, j) for i in range(n) for j in range(n) if i != j and candidates[i] != candidates[j]]


def combine(verdicts: list[str | None], vote: str) -> tuple[str, float]:
    """A jury's verdict from its judges' (unparsed ones abstain): ``majority`` = the most frequent
    verdict if it is the only most frequent one, else tie; ``mean`` = the mean value (A=1, tie=.5, B=0),
    kept as a fraction for scoring."""
    valid = [v for v in verdicts if v in VALUE]
    if not valid:
        return "tie", 0.5
    if vote == "mean":
        value = sum(VALUE[v] for v in valid) / len(valid)
        return ("A" if value > 0.5 else "B" if value < 0.5 else "tie"), value
    counts = Counter(valid).most_common()
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        return "tie", 0.5
    return counts[0][0], VALUE[counts[0][0]]


def mode_judges(mode: str, judges: list[str]) -> list[str]:
    """The judges whose verdicts a mode uses: all of them, or the first alone in ``single``."""
    if mode not in MODES:
        raise ValueError(f"unknown judge mode {mode!r}; one of {MODES}")
    if mode == "verifier":
        return []
    return list(judges[:1]) if mode == "single" else list(judges)


def decisive(judgments: list[dict[str, Any]], mode: str, judges: list[str]) -> list[dict[str, Any]]:
    """The judgments whose verdicts decide in ``mode``: the aggregator's (moa), the judges' votes (jury),
    the first judge's (single)."""
    if mode == "moa":
        return [j for j in judgments if j["role"] == "aggregator"]
    if mode == "verifier":
        return []
    used = mode_judges(mode, judges)
    return [j for j in judgments if j["role"] == "judge" and j["judge"] in used]


def final_verdicts(
    judgments: list[dict[str, Any]], mode: str, judges: list[str], vote: str = "majority"
) -> dict[Pair, tuple[str, float]]:
    """The deciding verdict (label, value for A) of every judged ordered pair: the aggregator's in
    ``moa``, the pooled judges' in ``jury``, the first judge's in ``single``. An unparsed decisive
    verdict counts as a tie."""
    by_pair: dict[Pair, list[str | None]] = {}
    for j in decisive(judgments, mode, judges):
        by_pair.setdefault((j["a"], j["b"]), []).append(j["verdict"])
    out: dict[Pair, tuple[str, float]] = {}
    for pair, vs in by_pair.items():
        if mode == "jury":
            out[pair] = combine(vs, vote)
        else:
            v = vs[-1] if vs[-1] in VALUE else "tie"
            out[pair] = (v, VALUE[v])
    return out


def candidate_checks(state: dict[str, Any]) -> list[list[bool]]:
    """IFEval's strict verdict on each of the prompt's instructions, per candidate (empty lists when the
    prompt carries none). Computed once per state and kept in its ``checks``: judge_eval decides the same
    state once per mode, and moa_sft states arrive with generate_sft's verdicts already there."""
    checks = state.get("checks")
    if checks is not None and len(checks) == len(state["candidates"]):
        return checks
    constraints = state.get("constraints") or []
    if not constraints:
        checks = [[] for _ in state["candidates"]]
    else:
        user = [m["content"] for m in state["prompt"] if m["role"] == "user"][-1]
        checks = [
            verifiable.check(constraints, c, state["prompt_id"], user)["strict"] for c in state["candidates"]
        ]
    state["checks"] = checks
    return checks


def verifier_verdicts(candidates: list[str], checks: list[list[bool]]) -> dict[Pair, tuple[str, float]]:
    """The verifier's verdict on every ordered pair: A wins when it follows more instructions than B, a tie
    when as many (always, on a prompt without instructions)."""
    out: dict[Pair, tuple[str, float]] = {}
    for a, b in ordered_pairs(candidates):
        fa, fb = sum(checks[a]), sum(checks[b])
        v = "A" if fa > fb else "B" if fa < fb else "tie"
        out[(a, b)] = (v, VALUE[v])
    return out


def verifiable_pairs(candidates: list[str], checks: list[list[bool]]) -> list[Pair]:
    """The unordered candidate pairs (passing, failing) where one candidate follows every instruction of the
    prompt and the other does not: pairs with a right answer, no human label needed."""
    ok = [bool(c) and all(c) for c in checks]
    return [
        (i, j) if ok[i] else (j, i)
        for i in range(len(candidates))
        for j in range(i + 1, len(candidates))
        if ok[i] != ok[j] and candidates[i] != candidates[j] and checks[i] and checks[j]
    ]


def judge_views(mode: str, judges: list[str]) -> dict[str, tuple[str, list[str]]]:
    """Every way of deciding that one run's judgments allow, as {label: (mode, judges)}: a moa run also
    holds its judges' verdicts, so the jury and each judge alone are scored on the very same calls."""
    if mode == "verifier":
        return {}
    views = {f"single:{j}": ("single", [j]) for j in mode_judges(mode, judges)}
    if mode in ("moa", "jury") and len(judges) > 1:
        views["jury"] = ("jury", list(judges))
    if mode == "moa":
        views["moa"] = ("moa", list(judges))
    return views


def verifiable_accuracy(row: dict[str, Any], judges: list[str], vote: str) -> dict[str, dict[str, int]]:
    """Per ``judge_views`` label of a decided row (``decide``'s output: its judgments are all its mode's
    calls): of the row's ``verifiable_pairs``, how many the view's final verdicts (both orders together) put
    the passing candidate above (correct), below (wrong) or level with (ties) the failing one."""
    candidates = [c["content"] for c in row["candidates"] or []]
    pairs = verifiable_pairs(candidates, [c["follows"] for c in row["candidates"] or []])
    out: dict[str, dict[str, int]] = {}
    if not pairs or row["status"] == "error":
        return out
    for label, (view, names) in judge_views(row["judge_mode"], judges).items():
        finals = final_verdicts(row["judgments"], view, names, vote)
        c = out.setdefault(label, {"pairs": 0, "correct": 0, "wrong": 0, "ties": 0})
        for p, f in pairs:
            value = (finals.get((p, f), ("tie", 0.5))[1] + 1.0 - finals.get((f, p), ("tie", 0.5))[1]) / 2
            c["pairs"] += 1
            c["correct" if value > 0.5 else "wrong" if value < 0.5 else "ties"] += 1
    return out


def scores(candidates: list[str], finals: dict[Pair, tuple[str, float]]) -> list[float]:
    """Each candidate's share of wins over its 2(n-1) comparisons (both orders of every pair; tie or
    identical texts = half a win; a pair without a verdict counts as a tie)."""
    n = len(candidates)
    if n < 2:
        return [0.5] * n
    wins = [0.0] * n
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            value = finals.get((i, j), ("tie", 0.5))[1]
            wins[i] += value
            wins[j] += 1.0 - value
    return [w / (2 * (n - 1)) for w in wins]


def select(candidates: list[str], score: list[float]) -> tuple[int | None, int | None, str]:
    """(chosen, rejected, status): chosen has the highest score, rejected the lowest among the texts that
    differ from chosen's (first index on equal scores). status 'identical' when all texts are the same,
    'tie' when no different text scores lower than chosen, else 'pair'."""
    if len(set(candidates)) < 2:
        return None, None, "identical"
    chosen = max(range(len(candidates)), key=lambda i: (score[i], -i))
    others = [i for i in range(len(candidates)) if candidates[i] != candidates[chosen]]
    rejected = min(others, key=lambda i: (score[i], i))
    if score[rejected] >= score[chosen]:
        return None, None, "tie"
    return chosen, rejected, "pair"


def position_stats(verdicts: dict[Pair, str | None]) -> dict[str, int]:
    """Position bias over the unordered pairs judged in both orders: ``consistent`` = the verdict mirrors
    when the order flips (A<->B, tie stays); ``flips`` = the same position wins both times (the verdict
    follows the position, not the answer)."""
    pairs = consistent = flips = 0
    for (a, b), v in verdicts.items():
        if a > b or (b, a) not in verdicts:
            continue
        w = verdicts[(b, a)]
        pairs += 1
        consistent += v is not None and w is not None and v == MIRROR[w]
        flips += v is not None and v == w and v in ("A", "B")
    return {"pairs": pairs, "consistent": consistent, "flips": flips}


# ------------------------------------------------------------------------------------ stages over states


def init_state(row: dict[str, Any], shard: str) -> dict[str, Any]:
    """State of a prompts-schema row (or of a labeled row that brings ``candidates``)."""
    return {
        "prompt_id": row["prompt_id"],
        "source": row.get("source"),
        "shard": shard,
        "prompt": row["messages"],
        "candidates": list(row.get("candidates") or []),
        "candidate_meta": [{"finish_reason": None, "completion_tokens": None}]
        * len(row.get("candidates") or []),
        "constraints": list(row.get("constraints") or []),
        "checks": row.get("checks"),  # candidate_checks' verdicts, once computed (or brought by the row)
        "criteria": {},
        "judgments": [],
        "tokens": {},
        "error": None,
        "error_stage": None,
    }


def _count(state: dict[str, Any], key: str, c: Completion) -> None:
    t = state["tokens"].setdefault(key, {"prompt_tokens": 0, "completion_tokens": 0, "calls": 0})
    t["prompt_tokens"] += c.prompt_tokens
    t["completion_tokens"] += sum(c.completion_tokens)
    t["calls"] += 1


def _fail(state: dict[str, Any], c: Completion, stage: str) -> bool:
    if c.error is None:
        return False
    state["error"], state["error_stage"] = c.error, stage
    return True


def build_policy(state: dict[str, Any]) -> Messages | None:
    if state["error"] is not None or state["candidates"]:
        return None
    return state["prompt"]


def apply_policy(state: dict[str, Any], c: Completion, messages: Messages, *, model: str) -> None:
    """The n samples of one request become the candidates."""
    if _fail(state, c, f"policy/{model}"):
        return
    _count(state, f"policy/{model}", c)
    state["candidates"] = list(c.texts)
    state["candidate_meta"] = [
        {"finish_reason": f, "completion_tokens": t} for f, t in zip(c.finish_reasons, c.completion_tokens)
    ]


def _needs_judging(state: dict[str, Any]) -> bool:
    return state["error"] is None and len(set(state["candidates"])) > 1


def build_criteria(state: dict[str, Any], *, judge: str, criteria: list[str], k: int) -> Messages | None:
    if not _needs_judging(state) or judge in state["criteria"]:
        return None
    text = SELECT_CRITERIA.format(criteria=", ".join(criteria), k=k, question=question_text(state["prompt"]))
    return [{"role": "user", "content": text}]


def apply_criteria(
    state: dict[str, Any], c: Completion, messages: Messages, *, judge: str, criteria: list[str], k: int
) -> None:
    if _fail(state, c, f"criteria/{judge}"):
        return
    _count(state, f"criteria/{judge}", c)
    state["criteria"][judge] = {"criteria": parse_criteria(c.text, criteria, k), "raw": c.text}


def pair_messages(state: dict[str, Any], a: int, b: int, criteria: list[str]) -> Messages:
    """Judge conversation for candidates a (shown as A) and b. System + question first: the same for
    every pair of the prompt, so the engine's prefix cache reuses them."""
    pair = JUDGE_PAIR.format(
        question=question_text(state["prompt"]),
        answer_a=state["candidates"][a],
        answer_b=state["candidates"][b],
    )
    system = JUDGE_SYSTEM.format(criteria=", ".join(criteria) or "overall quality")
    return [{"role": "system", "content": system}, {"role": "user", "content": pair}]


def _judged(state: dict[str, Any], judge: str, role: str) -> bool:
    return any(j["judge"] == judge and j["role"] == role for j in state["judgments"])


def build_pairs(state: dict[str, Any], *, judge: str) -> list[Messages] | None:
    """All ordered pairs of the row for one judge: sent together in one engine call."""
    if not _needs_judging(state) or _judged(state, judge, "judge"):
        return None
    picked = state["criteria"].get(judge, {}).get("criteria", [])
    return [pair_messages(state, a, b, picked) for a, b in ordered_pairs(state["candidates"])]


def apply_pairs(state: dict[str, Any], cs: list[Completion], convs: list[Messages], *, judge: str) -> None:
    for c in cs:
        if _fail(state, c, f"judge/{judge}"):
            return
    for (a, b), c in zip(ordered_pairs(state["candidates"]), cs):
        _count(state, f"judge/{judge}", c)
        state["judgments"].append(_judgment(judge, "judge", a, b, c))


def _judgment(judge: str, role: str, a: int, b: int, c: Completion) -> dict[str, Any]:
    return {
        "judge": judge,
        "role": role,
        "a": a,
        "b": b,
        "raw": c.text,
        "verdict": parse_verdict(c.text),
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens[0],
    }


def aggregate_messages(state: dict[str, Any], a: int, b: int, judges: list[str]) -> Messages:
    pair = JUDGE_PAIR.format(
        question=question_text(state["prompt"]),
        answer_a=state["candidates"][a],
        answer_b=state["candidates"][b],
    )
    evaluations = []
    for k, name in enumerate(judges, 1):
        crit = ", ".join(state["criteria"].get(name, {}).get("criteria", [])) or "overall quality"
        raw = next(
            (
                j["raw"]
                for j in state["judgments"]
                if (j["judge"], j["role"], j["a"], j["b"]) == (name, "judge", a, b)
            ),
            "",
        )
        evaluations.append(f"Judge {k} (criteria: {crit}):\n{raw}")
    user = AGGREGATE_JUDGMENTS_USER.format(pair=pair, evaluations="\n\n".join(evaluations))
    return [{"role": "system", "content": AGGREGATE_JUDGMENTS}, {"role": "user", "content": user}]


def build_aggregate(state: dict[str, Any], *, aggregator: str, judges: list[str]) -> list[Messages] | None:
    if not _needs_judging(state) or _judged(state, aggregator, "aggregator"):
        return None
    return [aggregate_messages(state, a, b, judges) for a, b in ordered_pairs(state["candidates"])]


def apply_aggregate(
    state: dict[str, Any], cs: list[Completion], convs: list[Messages], *, aggregator: str
) -> None:
    for c in cs:
        if _fail(state, c, f"aggregate/{aggregator}"):
            return
    for (a, b), c in zip(ordered_pairs(state["candidates"]), cs):
        _count(state, f"aggregate/{aggregator}", c)
        state["judgments"].append(_judgment(aggregator, "aggregator", a, b, c))


# ---------------------------------------------------------------------------------------------- output


def decide(state: dict[str, Any], mode: str, judges: list[str], vote: str = "majority") -> dict[str, Any]:
    """Scores, chosen/rejected, status and position statistics of a judged row (schema ``preference``
    columns, without provenance)."""
    cands = state["candidates"]
    # A state may hold more judging than this mode uses (judge_eval derives jury and single from a moa
    # run's judgments): keep only this mode's judges, aggregator and tokens.
    used = mode_judges(mode, judges)
    judgments = [
        j
        for j in state["judgments"]
        if (j["role"] == "judge" and j["judge"] in used) or (j["role"] == "aggregator" and mode == "moa")
    ]
    tokens = {
        k: t
        for k, t in state["tokens"].items()
        if k.startswith("policy/")
        or (k.startswith(("criteria/", "judge/")) and k.split("/", 1)[1] in used)
        or (k.startswith("aggregate/") and mode == "moa")
    }
    checks = candidate_checks(state)
    if mode == "verifier":
        finals = verifier_verdicts(cands, checks)
    else:
        finals = final_verdicts(judgments, mode, judges, vote)
    score = scores(cands, finals)
    if state["error"] is not None:
        chosen = rejected = None
        status = "error"
    else:
        chosen, rejected, status = select(cands, score)
    reason = {
        "identical": "no pair: all candidates are identical",
        "tie": "no pair: all candidates tie"
        if mode != "verifier" or state.get("constraints")
        else "no pair: the prompt has no verifiable instructions (judge.mode verifier decides by them alone)",
    }.get(status)
    judge_tokens = sum(
        t["prompt_tokens"] + t["completion_tokens"] for k, t in tokens.items() if not k.startswith("policy/")
    )
    pos = position_stats({p: v for p, (v, _) in finals.items()})
    return {
        "prompt_id": state["prompt_id"],
        "source": state["source"],
        "prompt": state["prompt"],
        "chosen": [{"role": "assistant", "content": cands[chosen]}] if chosen is not None else [],
        "rejected": [{"role": "assistant", "content": cands[rejected]}] if rejected is not None else [],
        # Rows without a pair carry their reason in 'error' too, so that training (which skips error rows)
        # never sees an empty or equal pair; 'status' tells a reason from a failure.
        "error": state["error"] if state["error"] is not None else reason,
        "error_stage": state["error_stage"],
        "status": status,
        "judge_mode": mode,
        "constraints": state.get("constraints") or [],
        "candidates": [
            {
                "index": i,
                "content": t,
                "score": score[i],
                **(state["candidate_meta"][i] if i < len(state["candidate_meta"]) else {}),
                "follows": checks[i],
            }
            for i, t in enumerate(cands)
        ],
        "chosen_index": chosen,
        "rejected_index": rejected,
        "chosen_score": score[chosen] if chosen is not None else None,
        "rejected_score": score[rejected] if rejected is not None else None,
        "score_margin": score[chosen] - score[rejected] if chosen is not None else None,
        "criteria": [{"judge": k, **v} for k, v in state["criteria"].items() if k in used],
        "judgments": judgments,
        "final_verdicts": [
            {"a": a, "b": b, "verdict": v, "value": x} for (a, b), (v, x) in sorted(finals.items())
        ],
        "position_pairs": pos["pairs"],
        "position_consistent": pos["consistent"],
        "position_flips": pos["flips"],
        "tokens": [
            {"role": k.split("/", 1)[0], "model": k.split("/", 1)[1], **t} for k, t in sorted(tokens.items())
        ],
        "judge_tokens": judge_tokens,
    }


# ------------------------------------------------------------------------------------- config + pipeline


class JudgeAccuracy(Config):
    """How often a way of judging put the candidate that follows every verifiable instruction above one that
    does not (``verifiable_accuracy``), with the 95% Wilson interval of the accuracy (ties as half)."""

    pairs: int = Field(0, description="Verifiable pairs (one candidate passes every check, the other not).")
    correct: int = Field(0, description="Pairs where the passing candidate won (both orders together).")
    wrong: int = Field(0, description="Pairs where the failing candidate won.")
    ties: int = Field(0, description="Pairs judged level.")
    accuracy: float | None = Field(None, description="correct / pairs (ties as wrong).")
    accuracy_ties_half: float | None = Field(None, description="(correct + ties / 2) / pairs.")
    lower: float | None = Field(None, description="95% Wilson interval of accuracy_ties_half, lower end.")
    upper: float | None = Field(None, description="95% Wilson interval of accuracy_ties_half, upper end.")
    above_chance: bool | None = Field(
        None, description="The interval lies above 0.5: better than a coin flip, measured (null: no pairs)."
    )

    @classmethod
    def of(cls, c: dict[str, int]) -> JudgeAccuracy:
        n = c.get("pairs", 0)
        if not n:
            return cls()
        half = c.get("correct", 0) + 0.5 * c.get("ties", 0)
        low, high = verifiable.wilson(round(half), n)
        return cls(
            pairs=n,
            correct=c.get("correct", 0),
            wrong=c.get("wrong", 0),
            ties=c.get("ties", 0),
            accuracy=round(c.get("correct", 0) / n, 4),
            accuracy_ties_half=round(half / n, 4),
            lower=None if low is None else round(low, 4),
            upper=None if high is None else round(high, 4),
            above_chance=low is not None and low > 0.5,
        )

    def text(self) -> str:
        if not self.pairs or self.accuracy_ties_half is None:
            return "-"
        return f"{self.accuracy_ties_half:.2f} [{self.lower:.2f}, {self.upper:.2f}] on {self.pairs} pairs" + (
            " (above chance)" if self.above_chance else " (not above chance)"
        )


class JudgeConfig(Config):
    """Who judges and how. Defaults: the embedded tiny CPU setup, MoA mode."""

    mode: Literal["moa", "jury", "single", "verifier"] = Field(
        "moa",
        description="moa: judges + aggregator judge; jury: judges vote (PoLL); single: judges[0] alone; "
        "verifier: no model, the candidate following more of the prompt's verifiable instructions wins "
        "(prepare's constraints; an oracle baseline on those prompts, no pair on the others).",
    )
    judges: list[ModelConfig] = Field(
        # Sampled, not greedy: a greedy 135M judge gives every pair the same position's verdict, which scores
        # every candidate the same (no pairs); sampled verdicts at least separate them (at chance level).
        default_factory=lambda: [
            smollm.engine("smollm2-judge-t0.7", 0.7, 1),
            smollm.engine("smollm2-judge-t1.0", 1.0, 1),
        ],
        description="Judge models (their sampling's temperature/top_p/seed are used; max_tokens is set "
        "from max_evaluation_chars).",
    )
    aggregator: ModelConfig | None = Field(
        default_factory=lambda: smollm.engine("smollm2-judge-aggregator", 1.0, 8),
        description="Aggregator judge (mode moa): reads the judges' evaluations, gives the final verdict.",
    )
    criteria: list[str] = Field(
        default_factory=lambda: list(JUDGE_CRITERIA), description="The fixed list of criteria."
    )
    n_criteria: int = Field(3, description="Criteria each judge picks per prompt (constrained choice).")
    vote: Literal["majority", "mean"] = Field(
        "majority", description="Jury pooling: majority verdict (no majority = tie) or mean value."
    )
    max_evaluation_chars: int = Field(
        96, ge=1, description="Longest evaluation line a judge may write before its verdict (regex bound)."
    )

    @model_validator(mode="after")
    def _check(self) -> JudgeConfig:
        names = [m.display_name for m in self.judges]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"need at least one judge, with distinct names (got {names}); set 'name'")
        if not 1 <= self.n_criteria <= len(self.criteria):
            raise ValueError(f"n_criteria must be between 1 and {len(self.criteria)}")
        return self

    def check_modes(self, modes: list[str]) -> None:
        """Refuse modes this config cannot run (moa needs an aggregator)."""
        if "moa" in modes and self.aggregator is None:
            raise ValueError("mode moa needs judge.aggregator (or use mode jury or single)")

    def judge_names(self) -> list[str]:
        """Every judge's display name, in order (what ``decide`` and ``final_verdicts`` take)."""
        return [m.display_name for m in self.judges]

    def active_judges(self) -> list[ModelConfig]:
        used = mode_judges(self.mode, self.judge_names())
        return [m for m in self.judges if m.display_name in used]

    def models(self) -> list[ModelConfig]:
        """Every model this mode calls."""
        return self.active_judges() + ([self.aggregator] if self.mode == "moa" and self.aggregator else [])

    def fingerprint_data(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "judges": [m.output_settings() for m in self.active_judges()],
            "aggregator": self.aggregator.output_settings()
            if self.mode == "moa" and self.aggregator
            else None,
            "criteria": self.criteria,
            "n_criteria": self.n_criteria,
            "vote": self.vote if self.mode == "jury" else None,
            "max_evaluation_chars": self.max_evaluation_chars,
            "prompts": hashlib.sha256("".join(JUDGE_PROMPTS).encode()).hexdigest(),
        }


def _sampling(m: ModelConfig, max_tokens: int) -> SamplingConfig:
    return m.sampling.model_copy(update={"max_tokens": max_tokens})


def build_judge_pipeline(ds, jc: JudgeConfig, pools: dict[str, Any]):
    """The judge steps of ``jc.mode`` over a Ray dataset of states that hold their candidates:

    criteria, per judge (a constrained choice of k criteria) -> pairs, per judge (all ordered pairs of a row
    in one engine call, regex-constrained "Evaluation: ...\\nVerdict: A|B|tie") -> aggregate (moa: a choice
    A|B|tie per ordered pair)."""
    from moaa.engine.shards import engine_stage

    choices = criteria_choices(jc.criteria, jc.n_criteria)
    choice_tokens = 4 * max(len(c) for c in choices) + 8
    for m in jc.active_judges():
        kw = {"judge": m.display_name, "criteria": jc.criteria, "k": jc.n_criteria}
        ds = engine_stage(
            ds,
            pools,
            m,
            partial(build_criteria, **kw),
            partial(apply_criteria, **kw),
            structured={"choice": choices},
            sampling=_sampling(m, choice_tokens),
        )
    for m in jc.active_judges():
        ds = engine_stage(
            ds,
            pools,
            m,
            partial(build_pairs, judge=m.display_name),
            partial(apply_pairs, judge=m.display_name),
            multi=True,
            structured={"regex": pair_regex(jc.max_evaluation_chars)},
            sampling=_sampling(m, pair_max_tokens(jc.max_evaluation_chars)),
        )
    if jc.mode == "moa":
        agg = jc.aggregator
        assert agg is not None
        ds = engine_stage(
            ds,
            pools,
            agg,
            partial(build_aggregate, aggregator=agg.display_name, judges=jc.judge_names()),
            partial(apply_aggregate, aggregator=agg.display_name),
            multi=True,
            structured={"choice": list(VERDICTS)},
            sampling=_sampling(agg, 8),
        )
    return ds
