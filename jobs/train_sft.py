"""Supervised fine-tuning on generate_sft's conversations: TRL's SFTTrainer in every Ray Train worker.

    python -m jobs.train_sft --config configs/train_sft/tiny.yaml key=value ...
    python -m jobs.train_sft --config configs/train_sft/llama31_8b.yaml run_id=exp1 scaling.num_workers=8
    ray job submit --working-dir . -- python -m jobs.train_sft --config configs/train_sft/tiny.yaml

Reads <runs_dir>/<run_id>/generate_sft/data (or data=...), writes <runs_dir>/<run_id>/train_sft/model (HF
format, loads in vLLM and transformers) and summary.json. Re-run the same command after a crash: it resumes
from the last checkpoint. ``--help`` lists every key.
"""

from __future__ import annotations

from moaa import train
from moaa.config import parse_cli

CONFIG_CLASS = train.TrainSFTConfig


def main(cfg: train.TrainSFTConfig) -> dict:
    # read+check -> scale -> train -> save -> summary; each step is named in moaa.train.run
    return train.run(cfg)


if __name__ == "__main__":
    main(parse_cli(CONFIG_CLASS, prog="jobs.train_sft"))
