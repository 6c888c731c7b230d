"""Prepare the prompts: UltraFeedback and UltraChat rows in; validated, deduplicated, sharded prompts out.

    python -m jobs.prepare --config configs/prepare/tiny.yaml key=value ...
    python -m jobs.prepare --config configs/prepare/paper.yaml run_id=paper1 runs_dir=s3://bucket/runs
    ray job submit --working-dir . -- python -m jobs.prepare --config configs/prepare/paper.yaml \
        run_id=paper1 runs_dir=s3://bucket/runs

Outputs go to ``<runs_dir>/<run_id>/prepare/``: ``prompts/part-NNNNN.parquet`` (schema ``prompts``),
``quarantine.parquet`` (rows set aside, with the reason), ``summary.json`` and ``manifest.json``.
A rerun of a finished run with the same config returns its summary and writes nothing; another config into
the same folder is refused. ``--help`` lists every key.
"""

from moaa.core.config import parse_cli
from moaa.core.stage import Summary
from moaa.stages import prepare

CONFIG_CLASS = prepare.PrepareConfig


def main(cfg: prepare.PrepareConfig) -> Summary:
    # read -> validate + dedup (first pass) -> subset -> shard (second pass) -> quarantine -> summary
    summary = prepare.run(cfg)
    print(prepare.one_line(summary))
    return summary


if __name__ == "__main__":
    main(parse_cli(CONFIG_CLASS, prog="jobs.prepare"))
