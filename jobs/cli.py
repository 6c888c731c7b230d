"""The ``moaa`` console script: ``moaa <job> [--config FILE] [key=value ...]`` runs ``python -m jobs.<job>``.

The tools beside the jobs (``TOOLS``):
- ``moaa make-models DIR``: the embedded models (SmolLM2-135M-Instruct and the tiny ones);
- ``moaa make-tiny-models DIR``: the tiny ones only;
- ``moaa fetch-benchmarks [DIR] [--from SOURCE ...]``: the public benchmark files ``evaluate`` reads, into DIR
  (default data/benchmarks), pinned and checked by sha256;
- ``moaa submit JOB --address URL ...``: a job on a Ray cluster, through Ray's job API.
"""

from __future__ import annotations

import importlib
import runpy
import sys
from pathlib import Path

JOBS = sorted(
    p.stem
    for p in Path(__file__).parent.glob("*.py")
    if p.stem not in {"__init__", "cli"} and not p.stem.startswith("_")
)
# command -> (module whose main(argv) runs it, its arguments for the usage text)
TOOLS = {
    "make-models": ("moaa.embedded.models", "DIR"),
    "make-tiny-models": ("moaa.embedded.tiny", "DIR"),
    "fetch-benchmarks": ("moaa.benchmarks.files", "[DIR] [--from SOURCE ...]"),
    "submit": ("moaa.core.submit", "JOB --address URL [--config FILE] [--no-wait] [key=value ...]"),
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in {"-h", "--help"}:
        print("usage: moaa <command> [--config FILE] [key=value ...]\n\ncommands:")
        for tool, (_, usage) in TOOLS.items():
            print(f"  {tool} {usage}")
        for job in JOBS:
            print(f"  {job.replace('_', '-')}")
        raise SystemExit(0 if len(sys.argv) >= 2 else 2)
    command = sys.argv[1].replace("_", "-")
    if command in TOOLS:
        importlib.import_module(TOOLS[command][0]).main(sys.argv[2:])
        return
    name = command.replace("-", "_")
    if name not in JOBS:
        known = ", ".join([*TOOLS, *JOBS])
        raise SystemExit(f"moaa: unknown command {sys.argv[1]!r}; known: {known}")
    sys.argv = [f"jobs.{name}", *sys.argv[2:]]
    runpy.run_module(f"jobs.{name}", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
