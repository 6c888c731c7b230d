"""Judge evaluation: accuracy of the MoA judge and its baselines (jury, single) against labeled pairs.

    python -m jobs.judge_eval --config configs/judge_eval/tiny.yaml   # sample UltraFeedback rows, tiny judges
    python -m jobs.judge_eval --config configs/judge_eval/tiny.yaml \
        data=../shared/data/human_pref/LLMBar_Natural.dataset.json limit=20 run_id=llmbar
    python -m jobs.judge_eval --config configs/judge_eval/paper.yaml run_id=judges1
    ray job submit --working-dir . -- python -m jobs.judge_eval --config configs/judge_eval/paper.yaml \
        run_id=judges1 runs_dir=s3://bucket/moaa

Reads UltraFeedback rows in their own layout (the ``overall_score`` ratings give the label), plain
``prompt``/``chosen``/``rejected`` JSONL or Parquet, or LLMBar files; writes
``<runs_dir>/<run_id>/judge_eval/<mode>/*.parquet`` (schema ``preference``) and ``summary.json``, and prints
one line per mode: accuracy against the label, ties, position consistency, verdict parse rate, judge
tokens per decision. See docs/judging.md.
"""

from moaa.core.config import parse_cli
from moaa.core.stage import Summary
from moaa.stages import judge_eval

CONFIG_CLASS = judge_eval.JudgeEvalConfig


def main(cfg: judge_eval.JudgeEvalConfig) -> Summary:
    # read labeled pairs -> judge every pair in both orders (one pass, the largest mode) -> score each
    # mode against the labels -> commit shards per mode
    summary = judge_eval.run(cfg)
    print(judge_eval.one_line(summary))
    return summary


if __name__ == "__main__":
    main(parse_cli(CONFIG_CLASS, prog="jobs.judge_eval"))
