"""Decontamination: 13-gram overlap on lowercased whitespace words (the n-gram test of the GPT-3 paper's
contamination study), with an index of the benchmark's n-grams so each training prompt costs one pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from moaa.benchmarks.alpaca_eval import alpaca_eval_outputs
from moaa.benchmarks.arena_hard import arena_hard_questions
from moaa.benchmarks.common import as_object, get_str, load_json_list, load_jsonl
from moaa.benchmarks.mt_bench import mt_bench_questions


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
    ``*.json`` (``instruction``) or IFEval ``input_data.jsonl`` (``prompt`` with ``instruction_id_list``)."""
    rows = load_json_list(path) if str(path).endswith(".json") else load_jsonl(path)
    if not rows:
        raise ValueError(f"{path}: no rows")
    first = as_object(rows[0][1], rows[0][0])
    if "turns" in first:
        return ["\n".join(q["turns"]) for q in mt_bench_questions(path)]
    if "prompt" in first and "instruction_id_list" in first:
        return [get_str(as_object(raw, where), "prompt", where) for where, raw in rows]
    if "prompt" in first:
        return [q["prompt"] for q in arena_hard_questions(path)]
    if "instruction" in first:
        return [o["instruction"] for o in alpaca_eval_outputs(path)]
    raise ValueError(
        f"{path}: not a benchmark layout moaa reads (MT-Bench 'turns', Arena-Hard 'prompt', AlpacaEval "
        f"'instruction', IFEval 'prompt' + 'instruction_id_list'); its first row has keys {sorted(first)}"
    )
