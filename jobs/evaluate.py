"""Benchmarks: AlpacaEval 2, Arena-Hard and MT-Bench style scores for any set of models, with one judge or the
MoA judge.

    moaa fetch-benchmarks                  # the published files -> data/benchmarks (once)
    python -m jobs.evaluate                # embedded SmolLM2 vs this run's DPO model, on a slice
    python -m jobs.evaluate --config configs/evaluate/tiny.yaml   # tiny models
    python -m jobs.evaluate --config configs/evaluate/paper.yaml run_id=uf60k
    ray job submit --working-dir . -- python -m jobs.evaluate --config configs/evaluate/paper.yaml \
        run_id=uf60k runs_dir=s3://bucket/moaa

Each model answers the benchmark questions (MT-Bench's second turn on its own first answer), the judge grades
them with the benchmarks' own prompts, and ``<runs_dir>/<run_id>/evaluate/`` gets every answer
(``answers/``, schema eval_answers), every judgment (``judgments/``, schema eval_judgments) and one results
table (``results.parquet`` + ``results.json``, schema eval_results: score, interval, judged, unparsed,
position bias, tokens, cost). Rerunning the same command resumes shard by shard. See docs/evaluation.md.
"""

from moaa.core.config import parse_cli
from moaa.core.stage import Summary
from moaa.stages import evaluate

CONFIG_CLASS = evaluate.EvaluateConfig


def main(cfg: evaluate.EvaluateConfig) -> Summary:
    # read the benchmark files -> answer every question (turn by turn) -> judge every answer (judges, then
    # the aggregator for the MoA judge) -> commit shards -> score each model and benchmark -> results table
    summary = evaluate.run(cfg)
    print(evaluate.one_line(summary))
    return summary


if __name__ == "__main__":
    main(parse_cli(CONFIG_CLASS, prog="jobs.evaluate"))
