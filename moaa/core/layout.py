"""The run layout: where each stage of each round writes, and what it reads by default. The wiring between
stages lives here and nowhere else.

    <runs_dir>/<run_id>/prepare/                 prompts for every round
    <runs_dir>/<run_id>/<stage>/                 round 1's generate_sft, train_sft, generate_dpo, ...
    <runs_dir>/<run_id>/round-<r>/<stage>/       round r >= 2

A model setting may name a model this run trains instead of a path: ``run:train_sft`` (this round's SFT
model), ``run:train_dpo@1`` (round 1's DPO model). Round r's ``generate_dpo`` samples from ``run:train_sft``
and round r's ``train_dpo`` starts from it; round r+1's mixture can list ``run:train_dpo@<r>``.
"""

from __future__ import annotations

import re
from typing import Any

from moaa.core import storage

PREPARE = "prepare"
# Every stage, in the order the recipe runs them (the pipeline's, the report's, the run folder's order), and
# the stages of the recipe itself; every other list of stages is derived from these.
RECIPE = ("prepare", "generate_sft", "train_sft", "generate_dpo", "train_dpo", "evaluate")
STAGES = (*RECIPE, "judge_eval")
# The stage whose output each stage reads by default (``judge_eval`` reads a labeled file of the user's).
UPSTREAM = {
    "generate_sft": PREPARE,
    "train_sft": "generate_sft",
    "generate_dpo": PREPARE,
    "train_dpo": "generate_dpo",
}
TRAINING_STAGES = tuple(s for s in STAGES if s.startswith("train_"))
MODEL_REF = re.compile(r"^run:(train_sft|train_dpo)(?:@([1-9][0-9]*))?$")


def stage_dir(runs_dir: str, run_id: str, stage: str, round: int = 1) -> str:
    if stage == PREPARE or round == 1:
        return storage.join(runs_dir, run_id, stage)
    return storage.join(runs_dir, run_id, f"round-{round}", stage)


def prompts_dir(runs_dir: str, run_id: str) -> str:
    return storage.join(stage_dir(runs_dir, run_id, PREPARE), "prompts")


def output_of(stage_folder: str, stage: str) -> str:
    """What a stage passes on, inside its folder: the prompts shards, a data folder, or a model."""
    if stage == PREPARE:
        return storage.join(stage_folder, "prompts")
    return storage.join(stage_folder, "model" if stage in TRAINING_STAGES else "data")


def default_input(runs_dir: str, run_id: str, stage: str, round: int = 1) -> tuple[str, str]:
    """(upstream stage, its output folder) that ``stage`` of ``round`` reads when no input is configured."""
    upstream = UPSTREAM[stage]
    return upstream, output_of(stage_dir(runs_dir, run_id, upstream, round), upstream)


def is_model_ref(value: str | None) -> bool:
    return bool(value) and value.startswith("run:")  # type: ignore[union-attr]


def resolve_model(value: str, runs_dir: str, run_id: str, round: int = 1) -> str:
    """A ``run:<stage>[@round]`` reference as the path of that model; any other value as it is."""
    if not is_model_ref(value):
        return value
    m = MODEL_REF.match(value)
    if m is None:
        raise ValueError(
            f"model reference {value!r}: use run:train_sft or run:train_dpo, optionally @<round> "
            "(e.g. run:train_dpo@1)"
        )
    stage, ref_round = m.group(1), int(m.group(2) or round)
    return output_of(stage_dir(runs_dir, run_id, stage, ref_round), stage)


def resolve_engine(m: Any, runs_dir: str, run_id: str, round: int = 1) -> Any:
    """A ``ModelConfig`` whose model is a ``run:`` reference, with the path filled in and the reference (e.g.
    ``train_sft-r1``) as its display name unless it has one; any other as it is."""
    if not is_model_ref(m.model):
        return m
    stage, _, ref_round = m.model.removeprefix("run:").partition("@")
    name = m.name or f"{stage}-r{ref_round or round}"
    return m.model_copy(update={"model": resolve_model(m.model, runs_dir, run_id, round), "name": name})
