"""MoAA-DPO preference data: the SFT model samples n answers per prompt, a mixture-of-agents judge compares
every ordered pair, the best and worst answers become a DPO pair.

    python -m jobs.generate_dpo --config configs/generate_dpo/tiny.yaml   # after jobs.train_sft
    python -m jobs.generate_dpo --config configs/generate_dpo/tiny.yaml judge.mode=jury
    python -m jobs.generate_dpo --config configs/generate_dpo/paper.yaml run_id=uf60k
    ray job submit --working-dir . -- python -m jobs.generate_dpo --config configs/generate_dpo/paper.yaml \
        run_id=uf60k runs_dir=s3://bucket/moaa

Reads the prompts shards of ``jobs.prepare`` (single-turn rows), samples from this round's SFT model
(``policy.model=run:train_sft``, the default) and writes ``<runs_dir>/<run_id>/generate_dpo/data/*.parquet``
(schema ``schemas/generate_dpo.json``, read by ``jobs.train_dpo`` as is) with ``manifest.json`` and
``summary.json`` beside it. Judge modes: ``moa`` (default), ``jury`` and ``single`` (``judge.mode=...``).
``pairs=moa_sft`` builds the pairs from this round's generate_sft data instead (chosen = the aggregated
answer, rejected = the proposal the judge ranks worst; no policy is sampled). Rerunning the same command
resumes: finished shards are skipped. See docs/judging.md.
"""

from moaa.core.config import parse_cli
from moaa.core.stage import Summary
from moaa.stages import generate_dpo

CONFIG_CLASS = generate_dpo.GenerateDPOConfig


def main(cfg: generate_dpo.GenerateDPOConfig) -> Summary:
    # read prompts -> sample n candidates (policy) -> criteria per judge -> all ordered pairs per judge
    # -> aggregator verdicts (moa) -> scores, chosen/rejected -> commit shards
    summary = generate_dpo.run(cfg)
    print(generate_dpo.one_line(summary))
    return summary


if __name__ == "__main__":
    main(parse_cli(CONFIG_CLASS, prog="jobs.generate_dpo"))
