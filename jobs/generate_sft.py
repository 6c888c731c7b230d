"""MoA-SFT data: several proposer LLMs answer each prompt, an aggregator LLM synthesizes their answers.

    python -m jobs.generate_sft                                    # embedded tiny default, local Ray
    python -m jobs.generate_sft --config configs/generate_sft/paper.yaml run_id=uf60k
    ray job submit --working-dir . -- python -m jobs.generate_sft --config configs/generate_sft/paper.yaml \
        run_id=uf60k runs_dir=s3://bucket/moaa

Reads the prompts shards of ``jobs.prepare`` and writes ``<runs_dir>/<run_id>/generate_sft/data/*.parquet``
(schema ``schemas/sft.json``) with ``manifest.json`` and ``summary.json`` beside it. Rerunning the same
command resumes: finished shards are skipped.
"""

from moaa import generate
from moaa.config import parse_cli
from moaa.stage import Summary

CONFIG_CLASS = generate.GenerateSFTConfig


def main(cfg: generate.GenerateSFTConfig) -> Summary:
    # read prompts -> (per turn) propose with every proposer, layer by layer -> aggregate -> commit shards
    summary = generate.run(cfg)
    print(generate.one_line(summary))
    return summary


if __name__ == "__main__":
    main(parse_cli(CONFIG_CLASS, prog="jobs.generate_sft"))
