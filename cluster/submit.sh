#!/usr/bin/env bash
# The MoAA pipeline with `ray job submit` against a running Ray cluster (RAY_ADDRESS=http://head:8265).
# Each line can be rerun on its own: jobs resume from what the run folder holds.
set -euo pipefail
RUNS=${RUNS:-s3://your-bucket/moaa}
RUN=${RUN:-paper}
submit() { ray job submit --working-dir . -- python -m "jobs.$1" --config "configs/$1/$2.yaml" run_id="$RUN" runs_dir="$RUNS"; }
submit prepare paper
submit generate_sft paper
submit train_sft llama31_8b
submit generate_dpo paper
submit train_dpo llama31_8b
