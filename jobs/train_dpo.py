"""DPO on preference pairs (schemas/preference.json): TRL's DPOTrainer in every Ray Train worker.

    python -m jobs.train_dpo --config configs/train_dpo/tiny.yaml key=value ...
    python -m jobs.train_dpo --config configs/train_dpo/llama31_8b.yaml run_id=exp1 reference=precomputed
    ray job submit --working-dir . -- python -m jobs.train_dpo --config configs/train_dpo/llama31_8b.yaml \
        run_id=exp1 runs_dir=s3://bucket/moaa

Reads <runs_dir>/<run_id>/generate_dpo/data (or data=...) and, by default, starts from this run's SFT model
(model=run:train_sft, <runs_dir>/<run_id>/train_sft/model); writes <runs_dir>/<run_id>/train_dpo/model and
summary.json. Re-run the same command after a crash: it resumes from the last checkpoint.
"""

from moaa.core.config import parse_cli
from moaa.core.stage import Summary
from moaa.stages import train

CONFIG_CLASS = train.TrainDPOConfig


def main(cfg: train.TrainDPOConfig) -> Summary:
    # read + check (schema, error rows, model) -> scale (Ray Train workers) -> train (TRL) -> save (rank 0)
    summary = train.TRAIN_DPO.run(cfg)
    print(train.TRAIN_DPO.one_line(summary))
    return summary


if __name__ == "__main__":
    main(parse_cli(CONFIG_CLASS, prog="jobs.train_dpo"))
