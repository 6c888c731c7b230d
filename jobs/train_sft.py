"""Supervised fine-tuning on generate_sft's conversations: TRL's SFTTrainer in every Ray Train worker.

    python -m jobs.train_sft --config configs/train_sft/tiny.yaml key=value ...
    python -m jobs.train_sft --config configs/train_sft/llama31_8b.yaml run_id=exp1 scaling.num_workers=8
    ray job submit --working-dir . -- python -m jobs.train_sft --config configs/train_sft/tiny.yaml

Reads <runs_dir>/<run_id>/generate_sft/data (or data=...), writes <runs_dir>/<run_id>/train_sft/model (HF
format, loads in vLLM and transformers) and summary.json. Re-run the same command after a crash: it resumes
from the last checkpoint. ``--help`` lists every key.
"""

from __future__ import annotations

import time

from moaa import train
from moaa.config import parse_cli

CONFIG_CLASS = train.TrainSFTConfig


def main(cfg: train.TrainSFTConfig) -> dict:
    start = time.time()
    manifest, finished = train.open_run(cfg)
    if finished is not None:
        return finished
    data = train.read_and_check(cfg)  # read + check: schema, error rows, model; before any worker
    metrics = train.fit(cfg, data["files"])  # scale + train (TRL in Ray Train workers) + save (rank 0)
    return train.write_summary(cfg, manifest, data, metrics, start)  # summary.json


if __name__ == "__main__":
    main(parse_cli(CONFIG_CLASS, prog="jobs.train_sft"))
