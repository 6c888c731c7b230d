"""Preference pairs per minute and judge tokens per pair of the three judge modes (moa, jury, single) on
the same prompts in one run, side by side.

    python bench/judge_throughput.py [--prompts 12] [--n 3] [--rounds 1]

The tiny CPU setup of configs/generate_dpo/tiny.yaml (policy + 2 judges + aggregator judge, 3 engines),
built in a temporary folder. The engines start once and serve every mode, so engine start-up is not in
any mode's time; the policy samples with a fixed seed, so every mode judges the same candidates. A mode's
time is its whole generate_dpo pipeline (policy sampling included, the same for all modes). pairs/min
counts usable pairs (random tiny judges give many ties: compare ``prompts/min`` for the judging cost and
``judge tok/pair`` for the token cost). With --rounds > 1 the modes alternate and the best round counts.
Writes bench/out/judge_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moaa.core import schemas, storage  # noqa: E402
from moaa.core.config import load_config  # noqa: E402
from moaa.core.stage import EmptyResultError  # noqa: E402
from moaa.embedded.tiny import make_tiny_models  # noqa: E402
from moaa.engine import vllm  # noqa: E402
from moaa.stages import generate_dpo  # noqa: E402
from moaa.stages.generate_dpo import GenerateDPOConfig  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# where the numbers go: bench/out/, or MOAA_BENCH_OUT (tests/test_bench.py runs every script at a tiny size)
OUT = Path(os.environ.get("MOAA_BENCH_OUT") or ROOT / "bench" / "out")
MODES = ("moa", "jury", "single")
QUESTIONS = ["Name a red fruit.", "What is 2+2?", "Say hi.", "Pick a color.", "Count to 3.", "Name a dog."]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--n", type=int, default=3, help="candidates per prompt (pairs judged: n(n-1))")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()

    import ray

    work = Path(tempfile.mkdtemp(prefix="moaa-bench-judge-"))
    models = work / "models"
    make_tiny_models(models)
    rows = [
        {"prompt_id": f"p{i:03d}", "source": "bench", "n_turns": 1,
         "messages": [{"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} ({i})"}]}
        for i in range(args.prompts)
    ]  # fmt: skip
    storage.write_parquet(schemas.to_table(rows, "prompts"), str(work / "prompts" / "part-00000.parquet"))

    def config(mode: str, k: int) -> GenerateDPOConfig:
        return load_config(
            GenerateDPOConfig,
            ROOT / "configs/generate_dpo/tiny.yaml",
            [
                f"policy.model={models}/tiny-qwen2-a",
                "policy.sampling.seed=0",
                f"judge.judges.0.model={models}/tiny-llama-b",
                f"judge.judges.1.model={models}/tiny-qwen2-c",
                f"judge.aggregator.model={models}/tiny-qwen2-a",
                f"judge.mode={mode}",
                f"n={args.n}",
                f"input_dir={work / 'prompts'}",
                f"output_dir={work / 'out' / f'{mode}-{k}'}",
            ],
        )

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    moa = config("moa", 0)
    pools = vllm.start_pools(moa.engine_models())
    results: dict[str, dict] = {}
    try:
        for k in range(args.rounds):
            for mode in MODES:
                try:
                    summary = generate_dpo.run(config(mode, k), pools=pools)
                except EmptyResultError as e:  # every prompt tied: no pairs, but the judging was timed
                    summary = e.summary
                s = {**summary.metrics, "rows": summary.rows, "wall_s": summary.wall_s}
                best = results.get(mode)
                if best is None or s["wall_s"] < best["wall_s"]:
                    results[mode] = s
    finally:
        vllm.stop_pools(pools)
        ray.shutdown()

    table = {
        mode: {
            "prompts": s["rows"],
            "pairs": s["pairs"],
            "ties": s["ties"] + s["identical"],
            "wall_s": s["wall_s"],
            "pairs_per_min": s["pairs_per_min"],
            "prompts_per_min": round(s["rows"] / s["wall_s"] * 60, 2),
            "judge_tokens": s["judge_tokens"],
            "judge_tokens_per_pair": s["judge_tokens_per_pair"],
            "judge_tokens_per_prompt": round(s["judge_tokens"] / max(s["rows"], 1), 1),
            "verdict_parse_rate": s["verdict_parse_rate"],
            "position_consistency": s["position_consistency"],
        }
        for mode, s in results.items()
    }
    keys = list(next(iter(table.values())))
    print(
        f"judge throughput: {args.prompts} prompts, n={args.n} ({args.n * (args.n - 1)} ordered pairs each)"
    )
    print(f"{'':26}" + "".join(f"{m:>12}" for m in table))
    for key in keys:
        print(f"{key:26}" + "".join(f"{str(table[m][key]):>12}" for m in table))
    out = OUT / "judge_throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "modes": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
