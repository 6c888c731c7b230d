"""MoA-SFT data: several proposer LLMs answer each prompt, an aggregator LLM synthesizes their answers.

    python -m jobs.generate_sft                                    # embedded tiny default, local Ray
    python -m jobs.generate_sft --config configs/generate_sft/paper.yaml run_id=uf60k
    ray job submit --working-dir . -- python -m jobs.generate_sft --config configs/generate_sft/paper.yaml \
        run_id=uf60k runs_dir=s3://bucket/moaa

Reads the prompts shards of ``jobs.prepare`` and writes ``<runs_dir>/<run_id>/generate_sft/data/*.parquet``
(schema ``schemas/sft.json``) with ``manifest.json`` and ``summary.json`` beside it. Rerunning the same
command resumes: finished shards are skipped.
"""

from moaa.core.config import parse_cli
from moaa.core.stage import Summary
from moaa.stages import generate_sft

CONFIG_CLASS = generate_sft.GenerateSFTConfig


def main(cfg: generate_sft.GenerateSFTConfig) -> Summary:
    # read prompts -> (per turn) propose with every proposer, layer by layer -> aggregate -> commit shards
    summary = generate_sft.run(cfg)
    print(generate_sft.one_line(summary))
    return summary


if __name__ == "__main__":
    main(parse_cli(CONFIG_CLASS, prog="jobs.generate_sft"))
