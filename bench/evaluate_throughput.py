"""Judged answers per minute and judge tokens per decision, single judge vs the MoA judge, on the same
answers, in one run, side by side.

    python bench/evaluate_throughput.py [--model tiny|smollm2] [--rounds 1] [--data DIR] [key=value ...]

One model answers a slice of each benchmark once (evaluate's answer steps); then the same answers are judged
by each judge, alternating over --rounds (the best round counts): ``single`` = one judge, ``moa`` = two judges
+ an aggregator judge (3 judge calls per decision). Every engine starts once before anything is timed, so a
judge's time is its judge steps alone (Ray Data pipeline over the answers, constrained outputs, parsing).
``tiny``: the tiny random models (3 engines); ``smollm2``: the embedded SmolLM2 for every role (one engine,
judges sampled at 0.7 and 1.0, aggregator greedy). Writes bench/out/evaluate_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moaa.core import storage  # noqa: E402
from moaa.core.config import load_config  # noqa: E402
from moaa.embedded.tiny import make_tiny_models  # noqa: E402
from moaa.engine import shards, vllm  # noqa: E402
from moaa.stages import evaluate  # noqa: E402
from moaa.stages.evaluate import EvaluateConfig  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# where the numbers go: bench/out/, or MOAA_BENCH_OUT (tests/test_bench.py runs every script at a tiny size)
OUT = Path(os.environ.get("MOAA_BENCH_OUT") or ROOT / "bench" / "out")


def _engine(model: str, name: str, temperature: float, tiny: bool) -> str:
    if tiny:
        extra = "dtype: float32, max_model_len: 4096, num_cpus: 0.4"
    else:
        extra = "dtype: bfloat16, max_model_len: 4096, num_cpus: 0.5, batch_size: 32"
    return (
        f"{{model: {model}, name: {name}, enforce_eager: true, kv_cache_space_gb: 1, {extra}, "
        f"sampling: {{temperature: {temperature}, max_tokens: 64}}}}"
    )


def _load_answers(path: str, params: dict) -> list[dict]:
    """An answers shard as states ready for judging (runs in a Ray task)."""
    return [evaluate.state_from_answers(r) for r in storage.read_parquet(path).to_pylist()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"), help="benchmark files folder")
    ap.add_argument("overrides", nargs="*", help="more evaluate overrides, both judges (e.g. mt_bench=null)")
    args = ap.parse_args()

    import ray

    work = Path(tempfile.mkdtemp(prefix="moaa-bench-eval-"))
    tiny = args.model == "tiny"
    if tiny:
        models = work / "models"
        make_tiny_models(models)
        a, b, c = (f"{models}/{n}" for n in ("tiny-qwen2-a", "tiny-llama-b", "tiny-qwen2-c"))
    else:
        from moaa.embedded import smollm

        a = b = c = smollm.PATH
    d = args.data
    files = [
        f"mt_bench.questions={d}/mt_bench/question.jsonl",
        f"mt_bench.references={d}/mt_bench/reference_answer_gpt-4.jsonl",
        f"arena_hard.questions={d}/arena_hard/question.jsonl",
        f"arena_hard.baseline_answers={d}/arena_hard/model_answer_gpt-4-0314.jsonl",
        f"alpaca_eval.reference_outputs={d}/alpaca_eval/gpt4_1106_preview.model_outputs.json",
        # the tiny tokenizer is byte-level: these slices fit its 4096-token context
        "arena_hard.limit=2" if tiny else "arena_hard.limit=4",
        "alpaca_eval.limit=1" if tiny else "alpaca_eval.limit=8",
        "mt_bench.per_category=1",
    ]
    judges = {
        "single": [f"judge.judges=[{_engine(c, 'judge-1', 0.7, tiny)}]", "judge.aggregator=null"],
        "moa": [
            f"judge.judges=[{_engine(c, 'judge-1', 0.7, tiny)}, {_engine(b, 'judge-2', 1.0, tiny)}]",
            f"judge.aggregator={_engine(a, 'aggregator', 0.0, tiny)}",
        ],
    }

    def config(judge: str) -> EvaluateConfig:
        return load_config(
            EvaluateConfig,
            ROOT / "configs/evaluate/tiny.yaml",
            [
                f"models=[{_engine(a, 'answerer', 0.7, tiny)}]",
                "models.0.sampling.max_tokens=32" if tiny else "models.0.sampling.max_tokens=128",
                *files,
                *judges[judge],
                "judge.max_explanation_chars=24" if tiny else "judge.max_explanation_chars=120",
                f"output_dir={work / 'answers'}",
                *args.overrides,
            ],
        )

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    moa = config("moa")
    pools = vllm.start_pools(moa.engine_models())
    results: dict[str, dict] = {}
    try:
        answered = evaluate.run(config("single"), pools=pools)  # answers (and a first single judging)
        files_ = sorted(
            f for s in json.loads((work / "answers/manifest.json").read_text())["shards"].values()
            for f in s["files"] if f.startswith("answers/")
        )  # fmt: skip
        items = [{"shard": f, "source": str(work / "answers" / f), "turn": 1, "params": "{}"} for f in files_]
        load = _load_answers
        for _ in range(args.rounds):
            for judge in ("single", "moa"):
                cfg = config(judge)
                t0 = time.perf_counter()
                ds = evaluate.judge_steps(shards.read(items, load), pools, cfg.judge, cfg.benchmarks())
                states = [json.loads(s) for batch in ds.iter_batches(batch_size=None) for s in batch["state"]]
                wall = time.perf_counter() - t0
                calls = [j for s in states for j in s["judgments"]]
                # a call that failed (a prompt longer than the judge's context) has nothing to parse
                finals = [j for j in calls if j["role"] == cfg.judge.final_role() and j["error"] is None]
                tokens = sum(j["prompt_tokens"] + j["completion_tokens"] for j in calls)
                row = {
                    "answers": len(states),
                    "decisions": len(finals),
                    "judge_calls": len(calls),
                    "judge_errors": sum(j["error"] is not None for j in calls),
                    "wall_s": round(wall, 2),
                    "answers_per_min": round(len(states) / wall * 60, 1),
                    "decisions_per_min": round(len(finals) / wall * 60, 1),
                    "judge_tokens_per_decision": round(tokens / max(len(finals), 1), 1),
                    "parse_rate": round(
                        sum(j["verdict"] is not None or j["score"] is not None for j in finals)
                        / max(len(finals), 1),
                        3,
                    ),
                }
                if judge not in results or row["wall_s"] < results[judge]["wall_s"]:
                    results[judge] = row
    finally:
        vllm.stop_pools(pools)
        ray.shutdown()

    print(
        f"evaluate judging, {args.model}: {results['single']['answers']} answers "
        f"({answered.metrics['shards']} shards), same answers for both judges"
    )
    print(f"{'':28}{'single':>12}{'moa':>12}{'moa/single':>12}")
    for key in results["single"]:
        s, m = results["single"][key], results["moa"][key]
        ratio = f"{m / s:.2f}" if isinstance(s, (int, float)) and s else ""
        print(f"{key:28}{s!s:>12}{m!s:>12}{ratio:>12}")
    out = OUT / "evaluate_throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "judges": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
