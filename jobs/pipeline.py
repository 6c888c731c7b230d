"""The whole MoAA recipe as one job: prepare -> MoA-SFT data -> SFT -> MoA-DPO data -> DPO -> evaluate, for
several self-improvement rounds, then a report.

    python -m jobs.pipeline                                   # 2 rounds on the embedded SmolLM2 (make demo)
    python -m jobs.pipeline --config configs/pipeline/tiny.yaml   # the tiny models, a few minutes
    python -m jobs.pipeline rounds=3 self_improve.aggregator=true generate_sft.layers=3
    ray job submit --working-dir . -- python -m jobs.pipeline --config configs/pipeline/paper.yaml \
        run_id=moaa1 runs_dir=s3://bucket/moaa

Every stage writes where it would as a job of its own (``<runs_dir>/<run_id>/<stage>``, round r >= 2 under
``round-<r>/``) with its own config nested here under its name; ``<run>/pipeline/`` holds the manifest of
finished stages and ``summary.json``; ``<run>/report.html`` and ``report.md`` show every round. Rerunning the
same command skips finished stages and resumes the unfinished one. See docs/pipeline.md.
"""

from moaa.core.config import parse_cli
from moaa.core.stage import Summary
from moaa.stages import pipeline

CONFIG_CLASS = pipeline.PipelineConfig


def main(cfg: pipeline.PipelineConfig) -> Summary:
    # prepare once -> per round: generate_sft (round r-1's model joins the mixture) -> train_sft ->
    # generate_dpo -> train_dpo -> evaluate -> report
    summary = pipeline.run(cfg)  # prints each stage's start and end
    print(pipeline.one_line(summary, stages=False))
    return summary


if __name__ == "__main__":
    main(parse_cli(CONFIG_CLASS, prog="jobs.pipeline"))
