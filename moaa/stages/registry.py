"""Every stage's implementation, by name, in the order of ``layout.STAGES`` (the one list of stage names):
what the pipeline runs, the report reads and the jobs' CLI lists. A new stage is its module, its job file,
its configs, its name in ``layout.STAGES`` and its line here."""

from __future__ import annotations

from typing import Any

from moaa.core import layout
from moaa.core.stage import Stage
from moaa.stages import evaluate, generate_dpo, generate_sft, judge_eval, prepare, train

STAGES: dict[str, Stage[Any, Any]] = {
    s.name: s
    for s in (
        prepare.STAGE,
        generate_sft.STAGE,
        train.TRAIN_SFT,
        generate_dpo.STAGE,
        train.TRAIN_DPO,
        evaluate.STAGE,
        judge_eval.STAGE,
    )
}
assert tuple(STAGES) == layout.STAGES, "moaa/stages/registry.py and layout.STAGES list other stages"


def of(summary_or_name: Any) -> Stage[Any, Any]:
    """The stage of a summary (or of a stage name)."""
    return STAGES[getattr(summary_or_name, "stage", summary_or_name)]
