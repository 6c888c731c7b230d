"""generate_sft throughput and scale, measured side by side in one run.

    .venv/bin/python bench/generate_throughput.py            # both parts, both models
    .venv/bin/python bench/generate_throughput.py --part throughput --model smollm2 --prompts 256
    .venv/bin/python bench/generate_throughput.py --part scale --rows 1000 20000

Part 1 (throughput): completion tokens/s of the generate_sft job (2 proposers + aggregator, vLLM CPU build,
on engines started beforehand) vs. the same engines called back to back in one plain Python process without
Ray, on the same prompts with the same sampling; engine start-up is excluded on both sides. Two models: the
embedded SmolLM2-135M-Instruct (configs/generate_sft/demo.yaml: one engine serves the three roles; its
engine work resembles a real run's; target >= 0.9) and the tiny random models (configs/generate_sft/
tiny.yaml: three engines; 0.34M parameters make per-batch overhead look larger than it is).

Part 2 (scale): the whole generate_sft job with the engines replaced by an instant stub, at each row count
(each in a fresh process): per-row overhead and the driver's peak memory. Target: peak at 20k within 1.3x
of 1k.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from moaa.core import schemas, storage  # noqa: E402
from moaa.core.config import load_config  # noqa: E402
from moaa.engine import settings, shards, vllm  # noqa: E402
from moaa.engine.settings import Completion  # noqa: E402
from moaa.judging import moa  # noqa: E402
from moaa.stages import generate_sft  # noqa: E402
from moaa.stages.generate_sft import GenerateSFTConfig  # noqa: E402


def write_prompts(out: Path, n: int, rows_per_shard: int) -> None:
    rows = [
        {
            "prompt_id": f"bench-{i:06d}",
            "source": "bench",
            "messages": [{"role": "user", "content": f"Question {i}: name three uses of item {i % 97}."}],
            "n_turns": 1,
        }
        for i in range(n)
    ]
    for s in range(0, n, rows_per_shard):
        table = schemas.to_table(rows[s : s + rows_per_shard], "prompts")
        storage.write_parquet(table, str(out / f"part-{s // rows_per_shard:05d}.parquet"))


CONFIGS = {"smollm2": "configs/generate_sft/demo.yaml", "tiny": "configs/generate_sft/tiny.yaml"}


def bench_config(prompts: Path, out: Path, *extra: str, model: str = "tiny") -> GenerateSFTConfig:
    return load_config(
        GenerateSFTConfig,
        ROOT / CONFIGS[model],
        [f"input_dir={prompts}", f"output_dir={out}", "run_id=bench", *extra],
    )


# ------------------------------------------------------------------------------------------ throughput


def plain_round(engines: dict, cfg: GenerateSFTConfig, rows: list[dict]) -> tuple[float, int]:
    """The same engines back to back in this process: proposers over all prompts, then the aggregator."""
    states = [moa.init_state(r, "bench") for r in rows]
    t0 = time.perf_counter()
    tokens = 0
    stages = [(m, 1, False) for m in cfg.proposers] + [(cfg.aggregator, 2, True)]
    for model, layer, final in stages:
        name = model.display_name
        convs = [moa.build_messages(s, turn=1, layer=layer, model=name) for s in states]
        answers = engines[settings.engine_key(model)].chat(convs, sampling=model.sampling)
        failed = [c.error for c in answers if c.error]
        if failed:
            raise SystemExit(f"plain side: {len(failed)} of {len(answers)} requests failed, e.g. {failed[0]}")
        for state, conv, c in zip(states, convs, answers):
            moa.apply_completion(state, c, conv, turn=1, layer=layer, model=name, final=final)
            tokens += sum(c.completion_tokens)
    return tokens / (time.perf_counter() - t0), tokens


def ray_round(pools: dict, cfg: GenerateSFTConfig) -> tuple[float, int]:
    """The generate_sft job on engines already started (``run(cfg, pools=...)``), timed from planning the
    shards to the last shard committed: reading, the Ray Data pipeline, writing the Parquet and manifest."""
    t0 = time.perf_counter()
    summary = generate_sft.run(cfg, pools=pools)
    wall = time.perf_counter() - t0
    tokens = sum(t.completion_tokens for t in summary.tokens.values())
    return tokens / wall, tokens


def throughput(model: str, n_prompts: int, max_tokens: int, batch_size: int, rounds: int) -> None:
    from moaa.engine.vllm import VLLMEngine

    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts"
        write_prompts(prompts, n_prompts, rows_per_shard=max(1, n_prompts // 8))
        extra = [
            f"{k}.sampling.max_tokens={max_tokens}" for k in ("proposers.0", "proposers.1", "aggregator")
        ]
        extra += [f"{k}.batch_size={batch_size}" for k in ("proposers.0", "proposers.1", "aggregator")]
        cfg = bench_config(prompts, Path(tmp) / "out", *extra, model=model)
        paths = [str(p) for p in sorted(prompts.glob("*.parquet"))]
        rows = [r for p in paths for r in storage.read_parquet(p).to_pylist()]
        # Both sides start their engines first (not timed), then run alternately, so that a load change on
        # the machine hits both; the best round of each side is compared.
        shards.init_ray(None)
        pools = vllm.start_pools(cfg.engine_models())
        # As shared as the pools: one engine per distinct engine (a second engine built and dropped in this
        # process would tear down vLLM's process-wide parallel state under the one kept).
        distinct = {settings.engine_key(m): m for m in cfg.engine_models()}
        engines = {key: VLLMEngine(m) for key, m in distinct.items()}
        results: dict[str, list[tuple[float, int]]] = {"plain": [], "ray": []}
        try:
            for r in range(rounds):
                fresh = cfg.model_copy(update={"output_dir": str(Path(tmp) / f"out-{r}")})
                results["ray"].append(ray_round(pools, fresh))
                results["plain"].append(plain_round(engines, cfg, rows))
        finally:
            vllm.stop_pools(pools)
    plain, ray_ = max(results["plain"]), max(results["ray"])
    print(
        f"throughput, {model}: {n_prompts} prompts x 3 roles on {len(engines)} engine(s), max_tokens "
        f"{max_tokens}, batch_size {batch_size}, best of {rounds} alternating rounds, engine start excluded"
    )
    print(f"  plain process, engines back to back: {plain[0]:8.1f} completion tok/s ({plain[1]} tokens)")
    print(f"  Ray Data MoA pipeline:               {ray_[0]:8.1f} completion tok/s ({ray_[1]} tokens)")
    rounds_txt = ", ".join(f"{r[0] / p[0]:.2f}" for r, p in zip(results["ray"], results["plain"]))
    target = 0.9 if model == "smollm2" else 0.8
    print(f"  ratio ray/plain = {ray_[0] / plain[0]:.2f} (target >= {target}); per round: {rounds_txt}")


# ------------------------------------------------------------------------------------------------ scale


class StubEngine:
    """An engine actor that answers every conversation at once with a fixed text: the interface of
    ``moaa.engine.vllm._EngineActor`` (tests/test_bench.py compares the two), without a model."""

    def ready(self) -> int:
        return 1

    def chat(self, conversations, sampling=None, n=1, structured=None, logprobs=None) -> list[Completion]:
        return [
            Completion(
                texts=["stub answer"], prompt_tokens=10, completion_tokens=[2], finish_reasons=["stop"]
            )
            for _ in conversations
        ]

    def close(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "node": None}


class StubPool:
    """Stands in for ``EnginePool``: one Ray actor of ``StubEngine``."""

    def __init__(self, cfg):
        import ray

        self.cfg = cfg
        self.actors = [ray.remote(num_cpus=0.1)(StubEngine).remote()]


def scale_one(rows: int) -> dict:
    """One job run with stub engines (in this fresh process); returns wall time and peak driver RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts"
        write_prompts(prompts, rows, rows_per_shard=1000)
        cfg = bench_config(
            prompts,
            Path(tmp) / "out",
            *[f"{k}.batch_size=256" for k in ("proposers.0", "proposers.1", "aggregator")],
        )
        t0 = time.perf_counter()
        shards.init_ray(None)
        pools = {settings.engine_key(m): StubPool(m) for m in cfg.engine_models()}
        summary = generate_sft.run(cfg, pools=pools)
        wall = time.perf_counter() - t0
    assert summary.rows == rows, summary
    return {"rows": rows, "wall_s": wall, "per_row_ms": 1000 * wall / rows, "peak_rss_mb": own_peak_mb()}


def own_peak_mb() -> float:
    """This process's own peak resident memory (VmHWM). Not getrusage: RUSAGE_CHILDREN in the parent
    counts a forked child before it execs, i.e. the parent's own size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def scale(sizes: list[int]) -> None:
    results = []
    for n in sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--scale-one", str(n)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
        )
        if out.returncode != 0:
            raise SystemExit(f"scale run at {n} rows failed:\n{out.stderr[-3000:]}")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("scale: whole generate_sft job, engines replaced by an instant stub, fresh process per size")
    for r in results:
        print(
            f"  {r['rows']:>7} rows: {r['wall_s']:7.1f} s, {r['per_row_ms']:6.2f} ms/row, "
            f"driver peak RSS {r['peak_rss_mb']:7.0f} MB"
        )
    first, last = results[0], results[-1]
    mem_ratio = last["peak_rss_mb"] / first["peak_rss_mb"]
    print(
        f"  peak memory ratio {last['rows']}/{first['rows']} rows = {mem_ratio:.2f} (target <= 1.3); "
        f"per-row overhead ratio = {last['per_row_ms'] / first['per_row_ms']:.2f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["throughput", "scale", "all"], default="all")
    ap.add_argument("--model", choices=["smollm2", "tiny", "both"], default="both")
    ap.add_argument("--prompts", type=int, help="default: 256 (smollm2), 1024 (tiny)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=128, help="rows per engine call in the Ray pipeline")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rows", type=int, nargs="+", default=[1000, 20000])
    ap.add_argument("--scale-one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if args.scale_one:
        print(json.dumps(scale_one(args.scale_one)))
        return
    if args.part in ("throughput", "all"):
        for model in ("smollm2", "tiny") if args.model == "both" else (args.model,):
            prompts = args.prompts or (256 if model == "smollm2" else 1024)
            throughput(model, prompts, args.max_tokens, args.batch_size, args.rounds)
    if args.part in ("scale", "all"):
        scale(args.rows)


if __name__ == "__main__":
    main()
