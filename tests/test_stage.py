"""The stage contract, checked without engines: one summary record, one run layout, schemas in the wheel,
and every stage module built on the shared pieces (private names: tests/test_structure.py)."""

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
    assert len({m.display_name for m in sft.models()}) == 3
    assert len({engine_key(m) for m in sft.models()}) == 1
    assert len({engine_key(m) for m in JudgeEvalConfig().pass_judge().models()}) == 1
    # another context length is another engine
    other = load_config(GenerateSFTConfig, None, ["aggregator.max_model_len=4096"])
    assert len({engine_key(m) for m in other.models()}) == 2


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
