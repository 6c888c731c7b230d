"""Prepare the prompts: UltraFeedback and UltraChat rows in; validated, deduplicated, sharded prompts out.

    python -m jobs.prepare --config configs/prepare/tiny.yaml key=value ...
    python -m jobs.prepare --config configs/prepare/paper.yaml run_id=paper1 runs_dir=s3://bucket/runs
    ray job submit --working-dir . -- python -m jobs.prepare --config configs/prepare/paper.yaml run_id=paper1

Outputs go to ``<runs_dir>/<run_id>/prepare/``: ``prompts/part-NNNNN.parquet`` (schema ``prompts``),
``quarantine.parquet`` (rows set aside, with the reason), ``summary.json`` and ``manifest.json``.
A rerun of a finished run with the same config does nothing; another config into the same folder is refused.
``--help`` lists every key.
"""

from __future__ import annotations

import time

from moaa import prepare
from moaa.config import parse_cli
from moaa.prepare import PrepareConfig

CONFIG_CLASS = PrepareConfig


def main(cfg: PrepareConfig) -> dict | None:
    """Run the stage; returns the summary, or None when the folder already holds this run."""
    out = prepare.output_dir(cfg)
    manifest = prepare.begin(cfg, out)
    if manifest is None:
        return None
    start = time.monotonic()
    sources = prepare.open_sources(cfg)  # read: paths checked, rows streamed by the passes below
    scan = prepare.validate_and_dedup(sources, dedup=cfg.dedup)  # validate/dedup (first pass)
    prepare.draw_subsets(scan, cfg)  # subset
    shards = prepare.write_shards(sources, scan, out, cfg.rows_per_shard)  # shard (second pass)
    prepare.write_quarantine(scan, out)  # write quarantine
    summary = prepare.summarize(cfg, scan, shards, out, time.monotonic() - start)  # summary
    prepare.finish(out, manifest, shards, summary)
    print(prepare.summary_line(summary))
    return summary


if __name__ == "__main__":
    main(parse_cli(PrepareConfig, prog="jobs.prepare"))
