"""The ``moaa`` console script: ``moaa <job> [--config FILE] [key=value ...]`` runs ``python -m jobs.<job>``;
``moaa make-models DIR`` builds the embedded models (SmolLM2-135M-Instruct and the tiny ones),
``moaa make-tiny-models DIR`` the tiny ones only; ``moaa fetch-benchmarks [DIR] [--from SOURCE ...]`` puts the
public benchmark files ``evaluate`` reads into DIR (default data/benchmarks), pinned and checked by sha256."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

JOBS = sorted(
    p.stem
    for p in Path(__file__).parent.glob("*.py")
    if p.stem not in {"__init__", "cli"} and not p.stem.startswith("_")
)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in {"-h", "--help"}:
        print(
            "usage: moaa <command> [--config FILE] [key=value ...]\n\ncommands:\n  make-models DIR\n"
            "  make-tiny-models DIR\n  fetch-benchmarks [DIR] [--from SOURCE ...]"
        )
        for job in JOBS:
            print(f"  {job.replace('_', '-')}")
        raise SystemExit(0 if len(sys.argv) >= 2 else 2)
    name = sys.argv[1].replace("-", "_")
    if name == "make_models":
        from moaa.models import main as models_main

        models_main(sys.argv[2:])
        return
    if name == "make_tiny_models":
        from moaa.tiny import main as tiny_main

        tiny_main(sys.argv[2:])
        return
    if name == "fetch_benchmarks":
        from moaa.benchmark_files import main as fetch_main

        fetch_main(sys.argv[2:])
        return
    if name not in JOBS:
        known = ", ".join(["make-models", "make-tiny-models", "fetch-benchmarks", *JOBS])
        raise SystemExit(f"moaa: unknown command {sys.argv[1]!r}; known: {known}")
    sys.argv = [f"jobs.{name}", *sys.argv[2:]]
    runpy.run_module(f"jobs.{name}", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
