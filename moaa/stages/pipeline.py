"""The whole MoAA recipe as one job, with self-improvement rounds:

    prepare (once) -> for each round r: generate_sft -> train_sft -> generate_dpo -> train_dpo -> evaluate
      -> report (report.html + report.md in the run folder)

Every stage is the stage of its own job (``moaa.stages.generate_sft``, ``moaa.stages.train``, ...), run with
its own config, which is nested in this one under the stage's name and takes the same dotted overrides
(``generate_sft.aggregator.sampling.temperature=0.3``). The pipeline sets each stage's run fields
(``run_id``, ``runs_dir``, ``round``, ``ray_address``), so every stage writes where the run layout says
(``moaa/core/layout.py``) and can still be run alone on the same folders.

Self-improvement: round r+1 adds round r's final model (``run:train_dpo@r``) to the mixture as a proposer,
and, by ``self_improve``, as the aggregator, as one more judge, or as the DPO policy. Evaluation: round 1
evaluates every configured model; later rounds only this run's models (``run:...``), since the others would
repeat round 1's work.

Resume: the pipeline's manifest (``<run>/pipeline/manifest.json``) records each finished stage; a rerun of the
same command skips finished stages (each finds its stored summary) and resumes the unfinished one where it
stopped. One Ray cluster serves the whole job; an engine is started once and kept while the stages that
follow use a model with the same engine settings. Before training, only the engines whose resources the
training workers need are stopped (those the next generation stage does not use first): where the cluster
has room for both, a judge or proposer is not reloaded every round.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from moaa.benchmarks import registry as benchmark_registry
from moaa.core import layout, manifests, stage, storage
from moaa.core.config import Config
from moaa.core.stage import Outcome, Stage, StageConfig, StageMetrics, Summary, Work
from moaa.embedded import smollm
from moaa.engine import shards
from moaa.engine.settings import ModelConfig, engine_key
from moaa.engine.vllm import EnginePool, start_pools, stop_pools
from moaa.stages import evaluate, generate_dpo, generate_sft, prepare, registry, report, train
from moaa.stages.evaluate import EvaluateConfig
from moaa.stages.generate_dpo import GenerateDPOConfig
from moaa.stages.generate_sft import GenerateSFTConfig
from moaa.stages.prepare import PrepareConfig
from moaa.stages.train import TrainDPOConfig, TrainSFTConfig

NAME = "pipeline"
STAGES = layout.RECIPE
RUN_FIELDS = ("run_id", "runs_dir", "round", "output_dir", "ray_address", "verbose")
StageName = Literal[layout.RECIPE]  # type: ignore[valid-type]


class SelfImprove(Config):
    """Where round r's final model (``run:train_dpo@r``) joins round r+1."""

    proposer: bool = Field(
        True, description="As one more proposer of generate_sft (MoAA's self-improvement)."
    )
    aggregator: bool = Field(
        False, description="As generate_sft's aggregator (replacing the configured one)."
    )
    judge: bool = Field(False, description="As one more judge of generate_dpo's judge.")
    policy: bool = Field(
        False, description="As generate_dpo's policy (instead of this round's SFT model, run:train_sft)."
    )


# ------------------------------------------------------------------------------- the embedded default
# Sized so that two rounds on the embedded SmolLM2 fit in about 15 minutes on 2 CPU cores: fewer prompts and
# shorter answers than the single jobs' defaults; every stage is otherwise its job's default.


def _prepare() -> prepare.PrepareConfig:
    return prepare.PrepareConfig(
        ultrafeedback=prepare.UltraFeedbackConfig(subset=20), ultrachat=prepare.UltraChatConfig(subset=4)
    )


def _generate_sft() -> generate_sft.GenerateSFTConfig:
    return generate_sft.GenerateSFTConfig(
        proposers=[
            smollm.engine("smollm2-t0.7", 0.7, 96),
            smollm.engine("smollm2-t1.0", 1.0, 96, top_p=0.9),
        ],
        aggregator=smollm.engine("smollm2-aggregator", 0.3, 128, repetition_penalty=1.1),
    )


def _train_sft() -> train.TrainSFTConfig:
    return train.TrainSFTConfig(max_length=384)


def _generate_dpo() -> generate_dpo.GenerateDPOConfig:
    cfg = generate_dpo.GenerateDPOConfig()
    return cfg.model_copy(
        update={"policy": cfg.policy.model_copy(update={"sampling": _tokens(cfg.policy, 96)})}
    )


def _train_dpo() -> train.TrainDPOConfig:
    return train.TrainDPOConfig(max_length=384)


def _evaluate() -> evaluate.EvaluateConfig:
    # Every round evaluates: each benchmark's slice for the pipeline (``Benchmark.pipeline_slice``).
    return evaluate.EvaluateConfig.model_validate(
        {b.name: b.pipeline_slice for b in benchmark_registry.BENCHMARKS if b.pipeline_slice}
    )


def _tokens(m: ModelConfig, max_tokens: int):
    return m.sampling.model_copy(update={"max_tokens": max_tokens})


class PipelineConfig(StageConfig):
    """Every stage of the recipe for ``rounds`` rounds. Defaults: two rounds on the embedded SmolLM2 and the
    shipped samples, sized for about 15 minutes on a 2-core laptop."""

    rounds: int = Field(2, ge=1, description="Self-improvement rounds (round r+1 mixes in round r's model).")
    stages: list[StageName] = Field(
        default_factory=lambda: list(STAGES),
        description="Stages to run, in the recipe's order (drop evaluate to skip it).",
    )
    self_improve: SelfImprove = Field(
        default_factory=SelfImprove, description="Round r's model in round r+1."
    )
    report: bool = Field(True, description="Write report.html and report.md into the run folder at the end.")
    prepare: PrepareConfig = Field(default_factory=_prepare, description="jobs.prepare's config.")
    generate_sft: GenerateSFTConfig = Field(
        default_factory=_generate_sft, description="jobs.generate_sft's config (round 1's mixture)."
    )
    train_sft: TrainSFTConfig = Field(default_factory=_train_sft, description="jobs.train_sft's config.")
    generate_dpo: GenerateDPOConfig = Field(
        default_factory=_generate_dpo, description="jobs.generate_dpo's config."
    )
    train_dpo: TrainDPOConfig = Field(default_factory=_train_dpo, description="jobs.train_dpo's config.")
    evaluate: EvaluateConfig = Field(default_factory=_evaluate, description="jobs.evaluate's config.")

    stage: ClassVar[str] = NAME

    @model_validator(mode="after")
    def _check(self) -> PipelineConfig:
        if self.round != 1:
            raise ValueError("round: the pipeline runs rounds 1..rounds; set rounds instead")
        order = [s for s in STAGES if s in self.stages]
        if order != list(self.stages) or not order:
            raise ValueError(f"stages must be some of {list(STAGES)}, in that order, without repeats")
        for name in STAGES:
            sub = getattr(self, name)
            default = type(sub)()
            moved = [f for f in RUN_FIELDS if getattr(sub, f) != getattr(default, f)]
            if moved:
                raise ValueError(
                    f"{name}.{moved[0]}: the pipeline sets every stage's {', '.join(RUN_FIELDS)}; set "
                    f"{moved[0]} at the top level"
                )
        return self

    def out_dir(self) -> str:
        return self.output_dir or storage.join(self.runs_dir, self.run_id, NAME)

    def run_dir(self) -> str:
        return storage.join(self.runs_dir, self.run_id)

    def stage_config(self, name: str, r: int) -> StageConfig:
        """Stage ``name`` of round ``r``: its nested config with the run fields set and round r-1's model
        mixed in as ``self_improve`` says."""
        base = getattr(self, name)
        update: dict[str, Any] = {
            "run_id": self.run_id,
            "runs_dir": self.runs_dir,
            "ray_address": self.ray_address,
            "verbose": self.verbose,
            "round": 1 if name == "prepare" else r,
        }
        si, policy = self.self_improve, self.generate_dpo.policy
        if name == "generate_sft" and r > 1:
            if si.proposer:
                update["proposers"] = [*base.proposers, previous(policy, base.proposers[0], r)]
            if si.aggregator:
                update["aggregator"] = previous(policy, base.aggregator, r)
        if name == "generate_dpo" and r > 1:
            if si.judge:
                judges = [*base.judge.judges, previous(policy, base.judge.judges[0], r)]
                update["judge"] = base.judge.model_copy(update={"judges": judges})
            if si.policy:
                update["policy"] = previous(policy, policy, r)
        if name == "evaluate" and r > 1:
            update["models"] = [m for m in base.models if layout.is_model_ref(m.model)]
        # Validated again: a config built here must pass the same checks as one a user writes.
        return type(base).model_validate(base.model_copy(update=update).model_dump())

    def plan(self) -> list[tuple[int, str]]:
        """(round, stage) in the order they run: prepare once, the other stages every round."""
        steps = [(1, "prepare")] if "prepare" in self.stages else []
        return steps + [(r, s) for r in range(1, self.rounds + 1) for s in self.stages if s != "prepare"]

    def fingerprint_data(self) -> Any:
        """The stages' own fingerprints, round by round: what decides every output."""
        data = [(r, s, self.stage_config(s, r).fingerprint()) for r, s in self.plan()]
        data.append(("self_improve", self.self_improve.model_dump()))
        return data


def previous(engine: ModelConfig, role: ModelConfig, r: int) -> ModelConfig:
    """Round r-1's final model in a role: the engine settings of generate_dpo's policy (the model trained is
    that policy's architecture and size), the role's sampling; named e.g. train_dpo-r1."""
    return engine.model_copy(
        update={"model": f"run:train_dpo@{r - 1}", "name": None, "sampling": role.sampling}
    )


# ------------------------------------------------------------------------------------------------ engines


class Engines:
    """Engine pools kept from stage to stage: a stage gets the pools of its models, started only where no
    running pool has the same settings; the pools it does not use are stopped. Across a training stage they
    stay up where the cluster has room for both (``make_room``): a judge is not reloaded every round."""

    def __init__(self) -> None:
        self.pools: dict[str, EnginePool] = {}

    def make_room(self, need: dict[str, float], keep: set[str]) -> None:
        """Stop pools until ``need`` (Ray resources: training's workers) is free: first those the next
        generation stage does not use (``keep``: its engine keys), then the others. Counted from the cluster's
        free resources now, so a cluster that could only grow (an autoscaler) does not grow for it."""
        import ray

        free = ray.available_resources()

        def fits() -> bool:
            return all(free.get(r, 0.0) + 1e-6 >= v for r, v in need.items())

        for key in sorted(self.pools, key=lambda k: k in keep):
            if fits():
                break
            pool = self.pools.pop(key)
            for r, v in (("CPU", pool.cfg.num_cpus), ("GPU", pool.cfg.num_gpus)):
                free[r] = free.get(r, 0.0) + v * len(pool.actors)
            stop_pools({key: pool})

    def get(self, models: list[ModelConfig]) -> dict[str, EnginePool]:
        wanted = {engine_key(m): m for m in models}
        # Engines this stage does not use go first: they hold resources the new ones may need.
        stop_pools({k: p for k, p in self.pools.items() if k not in wanted})
        self.pools = {k: p for k, p in self.pools.items() if k in wanted}
        missing = [m for k, m in wanted.items() if k not in self.pools]
        if missing:
            self.pools.update(start_pools(missing))
        return self.pools

    def stop(self) -> None:
        stop_pools(self.pools)
        self.pools = {}


def run_stage(name: str, cfg: Any, engines: Engines, keep: set[str]) -> tuple[Summary, bool]:
    """One stage with the shared engines (generation), or with room made for its workers (training: the
    engines it would not fit beside are stopped, ``keep`` last); (its summary, whether it had finished)."""
    fingerprint = cfg.fingerprint()
    if (done := stage.finished(cfg, fingerprint)) is not None:
        return done, True
    impl = registry.STAGES[name]
    if need := impl.resources(cfg):
        engines.make_room(need, keep)
    pools = engines.get(models) if (models := cfg.engine_models()) else None
    return impl.run(cfg, pools=pools, fingerprint=fingerprint), False


# ------------------------------------------------------------------------------------------------ driver


class StageBrief(Config):
    """One stage of one round as the pipeline saw it: the common numbers, then the stage's ``brief``."""

    round: int = Field(1, description="Round.")
    stage: str = Field("", description="Stage name.")
    skipped: bool = Field(False, description="Finished before this call: its stored summary was used.")
    rows: int = Field(0, description="Rows passed on.")
    errors: int = Field(0, description="Rows that failed or were set aside.")
    wall_s: float = Field(0.0, description="Seconds, with starting the stage's engines.")
    usd: float = Field(0.0, description="Cost estimate.")
    pairs_strategy: str | None = Field(None, description="generate_dpo: where candidates came from.")
    pairs: int | None = Field(None, description="generate_dpo: pairs.")
    ties: int | None = Field(None, description="generate_dpo: ties.")
    position_consistency: float | None = Field(None, description="generate_dpo: position consistency.")
    results: list[dict[str, Any]] | None = Field(None, description="evaluate: score rows.")
    caveat: str | None = Field(None, description="evaluate: why the scores may not mean quality.")
    checks: str | None = Field(
        None,
        description="generate_sft/generate_dpo: instruction following, checked by code (with intervals).",
    )


class PipelineMetrics(StageMetrics):
    stages: list[StageBrief] = Field(
        default_factory=list, description="Every stage of every round, in order."
    )
    results: list[dict[str, Any]] = Field(default_factory=list, description="Every round's evaluate rows.")


class Pipeline(Stage[PipelineConfig, PipelineMetrics]):
    name = NAME
    config = PipelineConfig
    metrics = PipelineMetrics

    def work(self, work: Work, pools: Any = None) -> Outcome:
        """Every stage of every round in order (finished ones skipped), then the report."""
        cfg, out = work.cfg, work.out
        assert isinstance(cfg, PipelineConfig)
        plan = cfg.plan()
        configs = {(r, s): cfg.stage_config(s, r) for r, s in plan}  # every round's configs checked up front
        for (_, name), c in configs.items():
            # e.g. evaluate's benchmark files, rather than after hours of generation and training
            registry.STAGES[name].preflight(c)
        before = manifests.load_manifest(out) or {}
        manifest = work.open_manifest(other_work=bool(before.get("stages")))
        manifest.setdefault("stages", {})
        shards.init_ray(cfg.ray_address)
        engines = Engines()
        done: list[StageBrief] = []
        # for each step, the engines of the next stage that runs on engines (what a training stage keeps)
        later = [{engine_key(m) for m in configs[step].engine_models()} for step in plan]
        keep = [next((k for k in later[i + 1 :] if k), set()) for i in range(len(plan))]
        try:
            for i, (r, name) in enumerate(plan):
                key = f"round-{r}/{name}"
                print(f"[pipeline] round {r}/{cfg.rounds}: {name}", flush=True)
                t = time.time()
                summary, skipped = run_stage(name, configs[(r, name)], engines, keep[i])
                manifest["stages"][key] = {
                    "summary": summary.model_dump(mode="json"),
                    "out": configs[(r, name)].out_dir(),
                }
                manifests.save_manifest(out, manifest)
                # wall_s here includes starting the stage's engines, which a stage's own summary leaves out
                # when the pipeline starts them
                wall = summary.wall_s if skipped else round(time.time() - t, 2)
                brief = registry.STAGES[name].brief(summary)
                done.append(
                    StageBrief(
                        round=r,
                        stage=name,
                        skipped=skipped,
                        rows=summary.rows,
                        errors=summary.errors,
                        usd=summary.usd,
                        wall_s=wall,
                        **brief,
                    )
                )
                print(_stage_line(done[-1]), flush=True)
        finally:
            engines.stop()
        outputs = {"run": cfg.run_dir()}
        if cfg.report:
            written = report.write(cfg.run_dir())
            outputs.update(report_html=str(written["html"]), report_md=str(written["md"]))
        tokens: dict[str, dict[str, int]] = {}
        for key, record in manifest["stages"].items():
            r = key.split("/")[0]
            counts = {
                f"{r}/{k}": {n: v for n, v in t.items() if n != "usd"}
                for k, t in record["summary"]["tokens"].items()
            }
            stage.add_tokens(tokens, counts)
        return Outcome(
            manifest,
            rows=len(done),
            errors=sum(d.errors for d in done),
            outputs=outputs,
            tokens=tokens,
            metrics=PipelineMetrics(stages=done, results=[x for d in done for x in d.results or []]),
            usd=sum(d.usd for d in done),
            usable=len(done),
        )

    def one_line(self, s: Summary, stages: bool = True) -> str:
        """The stages as they ran (``stages``: false where each stage's line was printed as it ended), then
        the last round's evaluation and the report's path."""
        m = self.read(s)
        lines = [
            f"pipeline: {s.rows} stages in {s.wall_s} s ({s.errors} rows set aside: quarantined, failed or "
            f"without a pair) -> {s.outputs['run']}"
        ]
        if stages:
            lines += [_stage_line(d) for d in m.stages]
        for r in m.results:
            score = "-" if r["score"] is None else f"{r['score']:.2f}"
            interval = "" if r["lower"] is None else f" [{r['lower']:.2f}, {r['upper']:.2f}]"
            lines.append(f"  {r['model']:<16} {r['benchmark']:<12} {score}{interval}")
        caveats = {d.caveat for d in m.stages if d.caveat}
        lines += [f"note: {c}" for c in sorted(caveats)]
        if "report_html" in s.outputs:
            lines.append(f"report: {s.outputs['report_html']}")
        return "\n".join(lines)


def _stage_line(d: StageBrief) -> str:
    extra = f", {d.pairs} pairs, {d.ties} ties" if d.pairs is not None else ""
    note = " (already done)" if d.skipped else ""
    checks = f"\n      {d.checks}" if d.checks else ""
    return f"  round {d.round} {d.stage:<13} {d.rows:>5} rows {d.wall_s:>8} s{extra}{note}{checks}"


STAGE = Pipeline()
run = STAGE.run
one_line = STAGE.one_line
