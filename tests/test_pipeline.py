"""pipeline: the per-round stage configs (fast), the paper config's resources, and two rounds of the whole
recipe on the tiny models with real Ray, vLLM and TRL (slow): every output, round 2's mixture read from its
outputs, the report, a rerun that writes nothing, and a run killed in round 2 that resumes to the
same rows. The two rounds are the session's one tiny pipeline run, `make demo` as the README says
(conftest.demo_run); the kill-and-resume test takes that finished run back to round 2's second stage and
kills it there, rather than running rounds 1 and 2 again from the start."""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import readme_command, readme_env, run_readme

from moaa.core import schemas
from moaa.core.config import ConfigError, load_config
from moaa.stages.pipeline import STAGES, PipelineConfig

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs/pipeline/tiny.yaml"
PAPER = ROOT / "configs/pipeline/paper.yaml"

# ------------------------------------------------------------------------------------------- configs


def test_round_two_mixes_in_round_ones_model_as_configured():
    cfg = load_config(PipelineConfig, TINY, ["run_id=x"])
    assert cfg.plan()[:2] == [(1, "prepare"), (1, "generate_sft")] and len(cfg.plan()) == 1 + 2 * 5
    r1, r2 = (cfg.stage_config("generate_sft", r) for r in (1, 2))
    assert [m.display_name for m in r2.proposer_models()] == [
        *[m.display_name for m in r1.proposer_models()],
        "train_dpo-r1",
    ]
    assert r2.proposer_models()[-1].model.endswith("x/train_dpo/model") and r2.round == 2
    assert r2.out_dir().endswith("x/round-2/generate_sft") and r2.run_id == "x"
    assert cfg.stage_config("prepare", 2).out_dir().endswith("x/prepare")
    # later rounds evaluate this run's models only: the others' answers would repeat round 1's
    assert [m.display_name for m in cfg.stage_config("evaluate", 2).answer_models()] == ["train_dpo-r2"]
    more = load_config(
        PipelineConfig,
        TINY,
        ["self_improve.aggregator=true", "self_improve.judge=true", "self_improve.policy=true"],
    )
    sft2, dpo2 = more.stage_config("generate_sft", 2), more.stage_config("generate_dpo", 2)
    assert sft2.aggregator_model().display_name == "train_dpo-r1"
    assert [m.display_name for m in dpo2.judge_config().judges][-1] == "train_dpo-r1"
    assert dpo2.policy_model().display_name == "train_dpo-r1"
    assert more.fingerprint() != cfg.fingerprint()


def test_nested_overrides_reach_the_stages_and_run_fields_stay_the_pipelines():
    cfg = load_config(PipelineConfig, TINY, ["generate_sft.aggregator.sampling.temperature=0.3"])
    assert cfg.stage_config("generate_sft", 2).aggregator.sampling.temperature == 0.3
    with pytest.raises(ConfigError, match="generate_sft.run_id: the pipeline sets"):
        load_config(PipelineConfig, TINY, ["generate_sft.run_id=other"])
    with pytest.raises(ConfigError, match="in that order"):
        load_config(PipelineConfig, TINY, ["stages=[train_sft, generate_sft]"])


def test_the_paper_recipe_fits_its_cluster():
    """Every engine of every round fits one node of cluster/raycluster.yaml, and training uses its GPUs."""
    cluster = yaml.safe_load((ROOT / "cluster/raycluster.yaml").read_text())
    group = cluster["spec"]["workerGroupSpecs"][0]
    gpus_per_node = int(group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    total_gpus = gpus_per_node * group["maxReplicas"]
    cfg = load_config(PipelineConfig, PAPER)
    assert cfg.rounds == 2 and list(cfg.stages) == list(STAGES)
    for r, name in cfg.plan():
        stage_cfg = cfg.stage_config(name, r)
        if name in ("generate_sft", "generate_dpo", "evaluate"):
            models = stage_cfg.engine_models()
            engines = {}
            for m in models:
                assert m.num_gpus == m.tensor_parallel_size <= gpus_per_node, (r, name, m.display_name)
                engines[m.model] = m.num_gpus * m.replicas
            assert sum(engines.values()) <= total_gpus, (r, name, engines)
        if name in ("train_sft", "train_dpo"):
            s = stage_cfg.scaling
            assert s.device == "gpu" and s.num_workers <= total_gpus
            assert stage_cfg.per_device_batch_size * s.num_workers <= stage_cfg.effective_batch_size
    assert cfg.train_sft.learning_rate == 8e-6 and cfg.train_dpo.beta == 0.01
    assert cfg.generate_dpo.n == 5 and cfg.generate_dpo.limit == 6000


def test_training_stops_only_the_engines_it_would_not_fit_beside(monkeypatch):
    """Engines.make_room: the cluster's free resources plus what stopped pools give back must cover the
    training workers; pools the next generation stage does not use go first, and none when it fits."""
    import ray

    from moaa.engine.settings import ModelConfig
    from moaa.stages.pipeline import Engines

    class Pool:  # a started pool as make_room sees it: its settings and actors
        def __init__(self, cpus: float, gpus: float = 0) -> None:
            self.cfg = ModelConfig(model="m", num_cpus=cpus, num_gpus=gpus, dtype="float32")
            self.actors = [object()]
            self.stopped = False

        def shutdown(self) -> None:
            self.stopped = True

    def engines(**pools: Pool) -> Engines:
        e = Engines()
        e.pools = dict(pools)
        return e

    monkeypatch.setattr(ray, "available_resources", lambda: {"CPU": 0.8})
    e = engines(a=Pool(0.4), b=Pool(0.4), c=Pool(0.4))
    e.make_room({"CPU": 1.0}, keep={"a", "c"})
    assert list(e.pools) == ["a", "c"]  # b (not needed next) went, which was enough
    e.make_room({"CPU": 2.0}, keep={"a", "c"})
    assert e.pools == {}  # still too little: every engine went
    e = engines(a=Pool(0.25), b=Pool(0.25))
    monkeypatch.setattr(ray, "available_resources", lambda: {"CPU": 1.5})
    e.make_room({"CPU": 1.0}, keep=set())
    assert list(e.pools) == ["a", "b"]  # fits: nothing stopped
    monkeypatch.setattr(ray, "available_resources", lambda: {"CPU": 8.0, "GPU": 0.0})
    gpu = Pool(1, gpus=1)
    e = engines(judge=gpu, cpu=Pool(1))
    e.make_room({"CPU": 1.0, "GPU": 1.0}, keep={"judge"})
    assert list(e.pools) == [] and gpu.stopped  # the CPU engine went first, but only the judge frees a GPU


# ------------------------------------------------------------------------------------ real engines


def _rows(run: Path) -> dict[str, set]:
    """Every row of every data output of the run, by stage folder: prompt ids (and the benchmark rows)."""
    out = {}
    for folder, key in [
        ("prepare/prompts", "prompt_id"),
        ("generate_sft/data", "prompt_id"),
        ("generate_dpo/data", "prompt_id"),
        ("round-2/generate_sft/data", "prompt_id"),
        ("round-2/generate_dpo/data", "prompt_id"),
    ]:
        out[folder] = set(pq.read_table(run / folder, columns=[key]).column(key).to_pylist())
    for r in ("evaluate", "round-2/evaluate"):
        t = pq.read_table(run / r / "results.parquet").to_pylist()
        out[r] = {(x["model"], x["benchmark"], x["questions"]) for x in t}
    return out


@pytest.mark.slow
def test_two_rounds_on_the_tiny_models(demo_run):
    run, stdout = demo_run.run, demo_run.proc.stdout
    for r in (1, 2):
        base = run if r == 1 else run / "round-2"
        for name in STAGES[1:]:
            assert (base / name / "summary.json").exists(), f"round {r} {name}"
        for folder, schema in [("generate_sft/data", "sft"), ("generate_dpo/data", "preference")]:
            for f in (base / folder).glob("*.parquet"):
                schemas.validate(pq.read_schema(f), schema, where=str(f))
        assert (base / "train_dpo/model/config.json").exists()
        schemas.validate(pq.read_schema(base / "evaluate/results.parquet"), "eval_results")
    # round 2's mixture, read from what round 2 wrote: round 1's DPO model proposed answers
    rows = pq.read_table(run / "round-2/generate_sft/data").to_pylist()
    proposers = {p["model"] for row in rows for p in row["proposals"]}
    assert "train_dpo-r1" in proposers and len(proposers) == 4  # 2 proposers, round 1's model, aggregator
    assert "train_dpo-r1" not in {
        p["model"] for row in pq.read_table(run / "generate_sft/data").to_pylist() for p in row["proposals"]
    }
    # the report names every stage of every round
    html, md = (run / "report.html").read_text(), (run / "report.md").read_text()
    for name in STAGES:
        assert name in html and name in md
    assert "round-2" in md or "round 2" in md.lower()
    assert "report: " in stdout and "train_dpo-r2" in stdout
    # a rerun of the finished pipeline writes nothing
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    again = run_readme(demo_run.repo, "make demo", timeout=600)
    assert "nothing to do" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before


def _take_back(run: Path, stages: list[str]) -> None:
    """The finished run as it was before ``stages`` (keys like "round-2/generate_dpo") ran: their folders and
    manifest entries gone, the pipeline's summary and report too."""
    manifest_path = run / "pipeline" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for key in stages:
        shutil.rmtree(run / key.removeprefix("round-1/"))
        del manifest["stages"][key]
    manifest["status"] = "running"
    manifest_path.write_text(json.dumps(manifest))
    for name in ("pipeline/summary.json", "report.html", "report.md"):
        (run / name).unlink()


@pytest.mark.slow
def test_a_run_killed_in_round_two_resumes_to_the_same_rows(demo_run):
    """Round 2's generate_dpo killed mid-way (SIGKILL of the whole process group), then the same command
    again: the finished stages are skipped, the killed one resumes, and every output holds the rows of the
    run that was never interrupted."""
    run = demo_run.run
    reference = _rows(run)
    _take_back(run, ["round-2/generate_dpo", "round-2/train_dpo", "round-2/evaluate"])
    command = readme_command("make demo")
    proc = subprocess.Popen(
        command,
        shell=True,
        cwd=demo_run.repo,
        env=readme_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    killed_in = None
    deadline = time.time() + 900
    for line in proc.stdout:
        # kill once round 2's generate_dpo has started (round 1 and half of round 2 finished)
        if "[pipeline] round 2/2: generate_dpo" in line:
            time.sleep(8)
            killed_in = line.strip()
            os.killpg(proc.pid, signal.SIGKILL)
            break
        assert time.time() < deadline
    proc.wait(timeout=60)
    assert killed_in is not None, "the pipeline never reached round 2's generate_dpo"
    assert not (run / "round-2/evaluate/summary.json").exists()
    resumed = run_readme(demo_run.repo, "make demo", timeout=1500)
    # round 1's stages and round 2's first ones were skipped, the rest ran
    for line in ("round 1 prepare", "round 1 train_dpo", "round 2 train_sft"):
        assert any(line in x and "already done" in x for x in resumed.stdout.splitlines()), line
    assert not any("round 2 generate_dpo" in x and "already done" in x for x in resumed.stdout.splitlines())
    assert _rows(run) == reference
    assert (run / "pipeline/summary.json").exists() and (run / "report.html").exists()
