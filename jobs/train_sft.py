"""Supervised fine-tuning on generate_sft's conversations: TRL's SFTTrainer in every Ray Train worker.

    python -m jobs.train_sft --config configs/train_sft/tiny.yaml key=value ...
    python -m jobs.train_sft --config configs/train_sft/llama31_8b.yaml run_id=exp1 scaling.num_workers=8
    ray job submit --working-dir . -- python -m jobs.train_sft --config configs/train_sft/llama31_8b.yaml \
        run_id=exp1 runs_dir=s3://bucket/moaa

Reads <runs_dir>/<run_id>/generate_sft/data (or data=...), writes <runs_dir>/<run_id>/train_sft/model (HF
format, loads in vLLM and transformers) and summary.json. Re-run the same command after a crash: it resumes
from the last checkpoint. ``--help`` lists every key.
"""

from moaa.core.config import parse_cli
from moaa.core.stage import Summary
from moaa.stages import train

CONFIG_CLASS = train.TrainSFTConfig


def main(cfg: train.TrainSFTConfig) -> Summary:
    # read + check (schema, error rows, model) -> scale (Ray Train workers) -> train (TRL) -> save (rank 0)
    summary = train.TRAIN_SFT.run(cfg)
    print(train.TRAIN_SFT.one_line(summary))
    return summary


if __name__ == "__main__":
    main(parse_cli(CONFIG_CLASS, prog="jobs.train_sft"))
