"""DPO on preference pairs (schemas/preference.json): TRL's DPOTrainer in every Ray Train worker.

    python -m jobs.train_dpo --config configs/train_dpo/tiny.yaml key=value ...
    python -m jobs.train_dpo --config configs/train_dpo/llama31_8b.yaml run_id=exp1 reference=precomputed
    ray job submit --working-dir . -- python -m jobs.train_dpo --config configs/train_dpo/tiny.yaml

Reads <runs_dir>/<run_id>/generate_preference/data (or data=...) and, by default, starts from this run's SFT
model (<runs_dir>/<run_id>/train_sft/model); writes <runs_dir>/<run_id>/train_dpo/model and summary.json.
Re-run the same command after a crash: it resumes from the last checkpoint. ``--help`` lists every key.
"""

from __future__ import annotations

import time

from moaa import train
from moaa.config import parse_cli

CONFIG_CLASS = train.TrainDPOConfig


def main(cfg: train.TrainDPOConfig) -> dict:
    start = time.time()
    manifest, finished = train.open_run(cfg)
    if finished is not None:
        return finished
    data = train.read_and_check(cfg)  # read + check: schema, error rows, model; before any worker
    metrics = train.fit(cfg, data["files"])  # scale + train (TRL in Ray Train workers) + save (rank 0)
    return train.write_summary(cfg, manifest, data, metrics, start)  # summary.json


if __name__ == "__main__":
    main(parse_cli(CONFIG_CLASS, prog="jobs.train_dpo"))
