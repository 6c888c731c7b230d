"""The benchmarks the evaluate stage knows, in report order: a benchmark is its module (``base.Benchmark``)
plus its entry here."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from moaa.benchmarks import alpaca_eval, arena_hard, ifeval, mt_bench
from moaa.benchmarks.base import Benchmark

BENCHMARKS: tuple[Benchmark, ...] = (
    mt_bench.BENCHMARK,
    arena_hard.BENCHMARK,
    alpaca_eval.BENCHMARK,
    ifeval.BENCHMARK,
)
NAMES: tuple[str, ...] = tuple(b.name for b in BENCHMARKS)
_BY_NAME = {b.name: b for b in BENCHMARKS}


def get(name: str) -> Benchmark:
    """The benchmark of a row's or a config section's name."""
    return _BY_NAME[name]


def config_fields() -> dict[str, Any]:
    """One optional config section per benchmark, under its name, defaulting to its section's defaults and
    null to skip it (``pydantic.create_model`` field definitions, in registry order)."""
    return {
        b.name: (b.config | None, Field(default_factory=b.config, description=b.description))
        for b in BENCHMARKS
    }
