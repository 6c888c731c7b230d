"""Training tokens/s of train_sft under Ray Train (one worker) vs. the same TRL trainer in one plain process.

    python bench/train_throughput.py [--rounds 2] [--steps 40] [--cpus 2]

Same data, model, config and torch threads on both sides; the rounds alternate (plain, ray, plain, ray) so
that load from other processes hits both alike, and the best round of each side is compared. tokens/s is
TRL's own count of non-padding input tokens over the trainer's train() time, so Ray's start-up (cluster,
worker group) is not in it but checkpoint reporting to Ray Train is. Target: ratio >= 0.9. Writes
bench/out/train_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moaa.core import schemas, storage  # noqa: E402
from moaa.core.config import load_config  # noqa: E402
from moaa.embedded.tiny import make_tiny_models  # noqa: E402
from moaa.stages.train import TrainSFTConfig, fit, run_trl  # noqa: E402


def sft_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        question = f"Explain step by step why {i} plus {i + 1} equals {2 * i + 1}. " * 3
        answer = f"Start from {i}, add one to get {i + 1}, then add {i} again: {2 * i + 1}. " * 4
        rows.append(
            dict(prompt_id=f"p{i}", source="bench", messages=[{"role": "user", "content": question},
                 {"role": "assistant", "content": answer}], n_turns=1, proposals=[],
                 aggregator_model="tiny", error=None, error_stage=None, run_id="bench", config_hash="x",
                 moaa_version="0")
        )  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=40)
    # A tiny-model step takes ~0.1 s here, so a checkpoint every 20 steps is one every ~2 s, far more often
    # than any real run; by default the timed window has none (steady-state training speed). Pass
    # --save-steps 20 to include checkpoint reporting (measured 0.79 vs 0.94 without, on this 2-core machine).
    ap.add_argument(
        "--save-steps", type=int, default=1000, help="checkpoint interval (reported to Ray Train)"
    )
    ap.add_argument("--cpus", type=int, default=2, help="torch threads on both sides (Ray: cpus_per_worker)")
    args = ap.parse_args()

    import ray
    import torch

    work = Path(tempfile.mkdtemp(prefix="moaa-bench-train-"))
    make_tiny_models(work / "models")
    data = str(work / "data.parquet")
    storage.write_parquet(schemas.to_table(sft_rows(512), "sft"), data)

    def config(run_id: str) -> TrainSFTConfig:
        return load_config(
            TrainSFTConfig,
            None,
            [f"runs_dir={work / 'runs'}", f"run_id={run_id}", f"model={work / 'models/tiny-qwen2-a'}",
             f"data={data}", f"max_steps={args.steps}", "per_device_batch_size=4", "max_length=512",
             f"checkpoint.save_steps={args.save_steps}", f"scaling.cpus_per_worker={args.cpus}",
             "scaling.device=cpu",
             "logging_steps=10"],
        )  # fmt: skip

    torch.set_num_threads(args.cpus)
    ray.init(num_cpus=args.cpus, include_dashboard=False)
    plain, in_ray = [], []
    for r in range(args.rounds):
        cfg = config(f"plain{r}")
        res = run_trl(cfg, [data], str(work / f"plain{r}"), world_size=1, use_gpu=False)
        plain.append(res["tokens_per_s"])
        print(
            f"round {r}: plain process {res['tokens_per_s']:.0f} tokens/s ({res['steps']} steps)", flush=True
        )
        t0 = time.time()
        res = fit(config(f"ray{r}"), [data])
        in_ray.append(res["tokens_per_s"])
        print(f"round {r}: ray train 1 worker {res['tokens_per_s']:.0f} tokens/s ({res['steps']} steps, "
              f"{time.time() - t0:.0f} s with start-up)", flush=True)  # fmt: skip
    ray.shutdown()
    result = {
        "plain_tokens_per_s": plain,
        "ray_tokens_per_s": in_ray,
        "ratio_best": max(in_ray) / max(plain),
        "steps": args.steps,
        "torch_threads": args.cpus,
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=2))
    # bench/out/, or MOAA_BENCH_OUT (tests/test_bench.py runs every script at a tiny size)
    out = Path(os.environ.get("MOAA_BENCH_OUT") or Path(__file__).resolve().parent / "out")
    out.mkdir(exist_ok=True)
    (out / "train_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(f"ratio (ray / plain, best rounds): {result['ratio_best']:.3f}  target >= 0.9")
    os._exit(0)  # the ratio is printed against its target, as every bench does; os._exit: Ray Train's threads


if __name__ == "__main__":
    main()
