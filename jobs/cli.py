"""The ``moaa`` console script: ``moaa <job> [--config FILE] [key=value ...]`` runs ``python -m jobs.<job>``;
``moaa make-tiny-models DIR`` builds the tiny local models."""

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
        print("usage: moaa <command> [--config FILE] [key=value ...]\n\ncommands:\n  make-tiny-models DIR")
        for job in JOBS:
            print(f"  {job.replace('_', '-')}")
        raise SystemExit(0 if len(sys.argv) >= 2 else 2)
    name = sys.argv[1].replace("-", "_")
    if name == "make_tiny_models":
        from moaa.tiny import main as tiny_main

        tiny_main(sys.argv[2:])
        return
    if name not in JOBS:
        raise SystemExit(f"moaa: unknown command {sys.argv[1]!r}; known: make-tiny-models, {', '.join(JOBS)}")
    sys.argv = [f"jobs.{name}", *sys.argv[2:]]
    runpy.run_module(f"jobs.{name}", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
