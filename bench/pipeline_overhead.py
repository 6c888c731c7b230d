"""Wall time of the pipeline job vs the sum of the same stages run as separate jobs, in one run.

    python bench/pipeline_overhead.py [--rounds 1] [--repeats 1] [--data ../shared/data] [key=value ...]

Both sides run the tiny models (configs/pipeline/tiny.yaml, 8 + 2 prompts, a thin benchmark slice) as a user
would, each command in its own process from a cold start: the pipeline as ``python -m jobs.pipeline`` (report
off), the stages as ``python -m jobs.<stage> --config <that stage's config>``, where each stage's config is
the one the pipeline itself builds for that round (``PipelineConfig.stage_config``), written to YAML, so both
sides do exactly the same work into two run ids. Overhead = pipeline / sum of stages - 1 (target < 5%); with
--repeats > 1 the sides alternate and the best time of each counts. Writes bench/out/pipeline_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
# where the numbers go: bench/out/, or MOAA_BENCH_OUT (tests/test_bench.py runs every script at a tiny size)
OUT = Path(os.environ.get("MOAA_BENCH_OUT") or ROOT / "bench" / "out")
sys.path.insert(0, str(ROOT))

from moaa.core.config import load_config  # noqa: E402
from moaa.stages.pipeline import PipelineConfig  # noqa: E402


def overrides(data: str, rounds: int) -> list[str]:
    return [
        f"rounds={rounds}",
        "report=false",
        "prepare.ultrafeedback.subset=8",
        "prepare.ultrachat.subset=2",
        "evaluate.mt_bench=null",
        "evaluate.arena_hard.limit=1",
        "evaluate.alpaca_eval.limit=1",
        f"evaluate.arena_hard.questions={data}/arena_hard/question.jsonl",
        f"evaluate.arena_hard.baseline_answers={data}/arena_hard/model_answer_gpt-4-0314.jsonl",
        f"evaluate.alpaca_eval.reference_outputs={data}/alpaca_eval/gpt4_1106_preview.model_outputs.json",
    ]


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"), help="benchmark files folder")
    ap.add_argument(
        "overrides",
        nargs="*",
        help="more pipeline overrides, both sides (e.g. stages=[prepare,generate_sft])",
    )
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="moaa-bench-pipeline-"))
    try:
        measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(args: argparse.Namespace, work: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    tiny = ROOT / "configs/pipeline/tiny.yaml"
    best = {"pipeline": float("inf"), "stages": float("inf")}
    per_stage: dict[str, float] = {}
    for k in range(args.repeats):
        runs = work / f"runs-{k}"
        ov = [*overrides(args.data, args.rounds), *args.overrides]
        cfg = load_config(PipelineConfig, tiny, [*ov, f"runs_dir={runs}", "run_id=stages"])
        times = {}
        for r, name in cfg.plan():
            path = work / f"{name}-r{r}-{k}.yaml"
            path.write_text(yaml.safe_dump(cfg.stage_config(name, r).model_dump(mode="json")))
            times[f"round {r} {name}"] = timed(
                [sys.executable, "-m", f"jobs.{name}", "--config", str(path)], env
            )
        pipeline = timed(
            [
                sys.executable,
                "-m",
                "jobs.pipeline",
                "--config",
                str(tiny),
                *ov,
                f"runs_dir={runs}",
                "run_id=pipe",
            ],
            env,
        )
        if sum(times.values()) < best["stages"]:
            best["stages"], per_stage = sum(times.values()), times
        best["pipeline"] = min(best["pipeline"], pipeline)
    overhead = best["pipeline"] / best["stages"] - 1
    print(f"pipeline overhead, tiny models, {args.rounds} round(s), best of {args.repeats}:")
    for name, t in per_stage.items():
        print(f"  {name:<24} {t:8.1f} s")
    print(f"  {'sum of separate jobs':<24} {best['stages']:8.1f} s")
    print(f"  {'pipeline job':<24} {best['pipeline']:8.1f} s")
    print(f"  overhead {100 * overhead:+.1f}% (target < 5%)")
    out = OUT / "pipeline_overhead.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"args": vars(args), "stages_s": per_stage, **best, "overhead": overhead}
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
