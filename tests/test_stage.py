"""The stage contract, checked without engines: one summary record, one run layout, schemas in the wheel,
and every stage module built on the shared pieces (private names: tests/test_structure.py)."""

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from moaa.core import layout, stage
from moaa.core.config import load_config

ROOT = Path(__file__).resolve().parent.parent
COMMON_SUMMARY_KEYS = {
    "stage", "run_id", "round", "rows", "errors", "wall_s", "tokens", "usd", "outputs", "metrics",
    "config_hash", "moaa_version",
}  # fmt: skip


def test_the_summary_record_has_the_common_keys():
    assert set(stage.Summary.model_fields) == COMMON_SUMMARY_KEYS


@pytest.mark.parametrize(
    "job", ["prepare", "generate_sft", "train_sft", "generate_dpo", "train_dpo", "judge_eval"]
)
def test_every_job_config_is_a_stage_config(job):
    import importlib

    cls = importlib.import_module(f"jobs.{job}").CONFIG_CLASS
    assert issubclass(cls, stage.StageConfig) and cls.stage == job
    cfg = load_config(cls, None, ["run_id=x", "round=2", "runs_dir=/r"])
    expected = "/r/x/prepare" if job == "prepare" else f"/r/x/round-2/{job}"
    assert cfg.out_dir() == expected
    assert len(cfg.fingerprint()) == 16


def test_the_layout_wires_rounds_in_one_place():
    from moaa.stages.generate_dpo import GenerateDPOConfig
    from moaa.stages.train import TrainDPOConfig, TrainSFTConfig

    assert layout.stage_dir("/r", "x", "generate_sft", 1) == "/r/x/generate_sft"
    assert layout.stage_dir("s3://b/r", "x", "train_dpo", 3) == "s3://b/r/x/round-3/train_dpo"
    assert layout.resolve_model("run:train_dpo@1", "/r", "x", 2) == "/r/x/train_dpo/model"
    assert layout.resolve_model("run:train_sft", "/r", "x", 2) == "/r/x/round-2/train_sft/model"
    assert layout.resolve_model("Qwen/Qwen2-7B", "/r", "x", 2) == "Qwen/Qwen2-7B"
    with pytest.raises(ValueError, match="run:train_sft or run:train_dpo"):
        layout.resolve_model("run:generate_sft", "/r", "x")
    # round 2's generate_dpo samples from round 2's SFT model; train_dpo starts from it and reads round
    # 2's pairs; train_sft reads round 2's MoA data.
    dpo = load_config(GenerateDPOConfig, None, ["runs_dir=/r", "run_id=x", "round=2"])
    assert dpo.policy_model().model == "/r/x/round-2/train_sft/model"
    assert dpo.in_dir() == "/r/x/prepare/prompts"
    tdpo = load_config(TrainDPOConfig, None, ["runs_dir=/r", "run_id=x", "round=2"])
    assert (tdpo.model_path, tdpo.data_path) == (
        "/r/x/round-2/train_sft/model",
        "/r/x/round-2/generate_dpo/data",
    )
    tsft = load_config(TrainSFTConfig, None, ["runs_dir=/r", "run_id=x", "round=2"])
    assert tsft.data_path == "/r/x/round-2/generate_sft/data"


def test_one_model_in_several_roles_is_one_engine():
    from moaa.engine.settings import engine_key
    from moaa.stages.generate_sft import GenerateSFTConfig
    from moaa.stages.judge_eval import JudgeEvalConfig

    # the embedded default: two proposers and the aggregator are one model sampled three ways
    sft = GenerateSFTConfig()
    assert len({m.display_name for m in sft.engine_models()}) == 3
    assert len({engine_key(m) for m in sft.engine_models()}) == 1
    assert len({engine_key(m) for m in JudgeEvalConfig().pass_judge().models()}) == 1
    # another context length is another engine
    other = load_config(GenerateSFTConfig, None, ["aggregator.max_model_len=4096"])
    assert len({engine_key(m) for m in other.engine_models()}) == 2


@pytest.mark.slow
def test_the_wheel_ships_the_schemas(tmp_path):
    # Built from a copy: setuptools writes build/ beside the sources.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "moaa", "jobs", "schemas"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(
            ROOT / name,
            src / name,
            **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}),
        )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(src),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("moaa-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p.name for p in (ROOT / "schemas").glob("*.json")}
    assert shipped and {f"schemas/{n}" for n in shipped} <= names
    assert "moaa/core/schemas.py" in names and "jobs/generate_sft.py" in names


# ------------------------------------------------------------------------------ one Stage base, one list


def test_one_list_of_stages_serves_the_layout_the_registry_and_the_jobs():
    import importlib

    from moaa.stages import registry

    assert tuple(registry.STAGES) == layout.STAGES
    for name, impl in registry.STAGES.items():
        assert isinstance(impl, stage.Stage) and impl.name == name == impl.config.stage
        assert importlib.import_module(f"jobs.{name}").CONFIG_CLASS is impl.config
        assert issubclass(impl.metrics, stage.StageMetrics)
    # what a training stage's workers take beside the engines (the pipeline makes room for it)
    dpo = registry.of("train_dpo")
    assert dpo.resources(load_config(dpo.config, None, ["scaling.device=cpu", "scaling.num_workers=2"])) == {
        "CPU": 2.0
    }
    assert registry.of("generate_sft").resources(registry.of("generate_sft").config()) == {}


def test_every_metric_is_typed_and_documented_and_a_misspelt_one_is_refused():
    from moaa.stages import generate_dpo, pipeline, registry

    models = [*(s.metrics for s in registry.STAGES.values()), pipeline.STAGE.metrics]
    for model in models:
        for name, f in model.model_fields.items():
            assert f.description, f"{model.__name__}.{name} has no description"
            # a default: a summary from an older moaa (a key it did not write) still reads
            assert not f.is_required(), f"{model.__name__}.{name} has no default"
    with pytest.raises(ValueError, match="pair"):
        generate_dpo.GenerateDPOMetrics(pair=3)  # the stage cannot write a key the report does not read
    s = stage.Summary(
        stage="generate_dpo", run_id="r", round=1, rows=4, errors=0, wall_s=1.0, outputs={},
        metrics={"pairs": 3, "ties": 1, "retired_key": 7}, config_hash="h", moaa_version="0",
    )  # fmt: skip
    m = registry.of(s).read(s)
    assert (m.pairs, m.ties, m.position_consistency) == (3, 1, None)  # the old key is left out
    assert "3 pairs, 1 ties from 4 prompts" in registry.of(s).key_numbers(s)
    s.metrics["pairs"] = "three"
    with pytest.raises(stage.MetricsError, match="generate_dpo summary of run 'r'"):
        registry.of(s).read(s)


def test_a_stage_computes_its_fingerprint_once_and_a_rerun_writes_nothing(tmp_path, monkeypatch):
    from moaa.stages import prepare

    calls = []
    original = prepare.PrepareConfig.fingerprint_data

    def counted(self):
        calls.append(1)
        return original(self)

    monkeypatch.setattr(prepare.PrepareConfig, "fingerprint_data", counted)
    cfg = load_config(prepare.PrepareConfig, None, [f"runs_dir={tmp_path}", "run_id=fp"])
    first = prepare.run(cfg)
    assert len(calls) == 1
    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "fp").rglob("*")}
    again = prepare.run(cfg)
    assert again == first and len(calls) == 2  # the rerun's one check
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "fp").rglob("*")} == written
    summary = json.loads((tmp_path / "fp" / "prepare" / "summary.json").read_text())
    assert summary["config_hash"] == cfg.fingerprint() == first.config_hash


@pytest.mark.slow
def test_each_shard_reaches_the_first_engine_stage_as_its_own_block(ray_local):
    """Fused with the first engine stage, the loader's tasks were bundled by file item up to the stage's batch
    size: one task loaded every shard and the layers could not pipeline. Kept apart, every batch the stage
    gets holds rows of one shard only, and each shard is loaded by a task of its own."""
    import uuid

    import ray.data

    from moaa.engine import shards

    # defined here, so that Ray ships them by value (the workers cannot import a test module)
    def forty_rows(path: str, params: dict) -> list[dict]:
        return [{"shard": path, "i": i} for i in range(40)]

    class Tag:
        """An actor-pool stage like an engine stage (batch_size 32, the light CPU share): tags each call."""

        def __call__(self, batch):
            batch["call"] = [uuid.uuid4().hex] * len(batch["state"])
            return batch

    items = [{"shard": f"s{k}", "source": f"s{k}", "turn": 1, "params": "{}"} for k in range(3)]
    ds = shards.read(items, forty_rows).map_batches(
        Tag,
        batch_size=32,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=1),
        num_cpus=shards.LIGHT_CPUS,
    )
    rows = ds.take_all()
    assert len(rows) == 120
    shards_of_call: dict[str, set] = {}
    for r in rows:
        shards_of_call.setdefault(r["call"], set()).add(json.loads(r["state"])["shard"])
    assert all(len(s) == 1 for s in shards_of_call.values()), shards_of_call
    assert "(_load)->" not in ds.stats()  # two operators, not one fused


def test_a_stage_with_nothing_to_pass_on_fails_unfinished_and_says_what_it_did(tmp_path):
    """The job fails rather than hand the next stage nothing; the error carries the run's summary (a bench
    measures work that yielded nothing usable) and the folder stays unfinished (no summary.json)."""
    from moaa.stages import prepare

    done = prepare.run(load_config(prepare.PrepareConfig, None, [f"runs_dir={tmp_path}", "run_id=a"]))
    cfg = load_config(prepare.PrepareConfig, None, [f"runs_dir={tmp_path}", "run_id=b"])
    with pytest.raises(stage.EmptyResultError, match="prepare: nothing to pass on: all tied") as e:
        stage.complete(cfg, {"shards": {}}, done, usable=0, why="all tied")
    assert e.value.summary == done
    assert not (tmp_path / "b" / "prepare" / "summary.json").exists()


@pytest.mark.slow
def test_the_shard_readers_and_engine_callers_run_when_the_engines_hold_every_cpu(ray_local):
    """Engine actors may reserve every CPU of a node (2 CPUs, four 0.4-CPU engines and their callers did):
    the shard readers and the actors that call the engines reserve none, so the job still moves. With any
    share, the readers waited forever for a CPU, every process idle (the tiny generate_dpo walkthrough)."""
    import threading

    import ray
    import ray.data

    from moaa.engine import shards

    @ray.remote
    class Engine:  # stands in for the engines: holds whatever CPU is left
        def ready(self) -> bool:
            return True

    free = ray.available_resources().get("CPU", 0)
    holder = Engine.options(num_cpus=free).remote()
    ray.get(holder.ready.remote())
    try:
        assert ray.available_resources().get("CPU", 0) == 0

        def rows(path: str, params: dict) -> list[dict]:
            return [{"i": i} for i in range(5)]

        class Call:
            def __call__(self, batch):
                return batch

        items = [{"shard": f"s{k}", "source": f"s{k}", "turn": 1, "params": "{}"} for k in range(2)]
        ds = shards.read(items, rows).map_batches(
            Call, batch_size=4, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=1), num_cpus=0
        )
        assert shards.LIGHT_CPUS == 0  # what engine_stage gives its callers
        got: list = []
        worker = threading.Thread(target=lambda: got.extend(ds.take_all()), daemon=True)
        worker.start()
        worker.join(timeout=180)
        assert not worker.is_alive(), "the readers or callers waited for a CPU the engines hold"
        assert len(got) == 10
    finally:
        ray.kill(holder)
