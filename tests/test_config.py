"""The config system: YAML + dotted overrides, unknown keys refused, every shipped YAML loads."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from moaa.core.config import ConfigError, load_config
from moaa.stages.generate_sft import GenerateSFTConfig

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted(ROOT.glob("configs/*/*.yaml"))


def test_every_job_the_cli_knows_has_shipped_configs_and_no_folder_is_orphaned():
    from jobs.cli import JOBS

    assert {p.parent.name for p in SHIPPED} == set(JOBS)
    assert all(
        {"demo.yaml", "tiny.yaml"} <= {p.name for p in SHIPPED if p.parent.name == job} for job in JOBS
    )


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_yaml_loads_with_its_jobs_config(path: Path):
    # configs/<job>/<name>.yaml belongs to jobs/<job>.py, whose CONFIG_CLASS reads it
    job = importlib.import_module(f"jobs.{path.parent.name}")
    cfg = load_config(job.CONFIG_CLASS, path)
    assert isinstance(cfg, job.CONFIG_CLASS)


@pytest.mark.parametrize("job", sorted({p.parent.name for p in SHIPPED}))
def test_demo_yaml_is_the_embedded_default(job):
    cls = importlib.import_module(f"jobs.{job}").CONFIG_CLASS
    assert load_config(cls, ROOT / f"configs/{job}/demo.yaml") == cls()


def _strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


@pytest.mark.parametrize(
    "path",
    [p for p in SHIPPED if p.name in ("demo.yaml", "tiny.yaml")],
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_the_embedded_configs_name_no_file_outside_the_repository_or_the_run_folder(path: Path, monkeypatch):
    """The embedded default needs no network and nothing beside the checkout: every path its configs name is
    a file the repository ships, an embedded model moaa builds (models/), the run folder, or a model of the
    run (run:...). A hub id or URI would fail the first check (not under the repository)."""
    monkeypatch.chdir(ROOT)
    cfg = load_config(importlib.import_module(f"jobs.{path.parent.name}").CONFIG_CLASS, path)
    shipped = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.split()
    named = [s for s in _strings(cfg.model_dump(mode="json")) if "/" in s and not s.startswith("run:")]
    assert named
    for s in named:
        assert s.startswith(f"{ROOT}/"), f"{path}: {s!r} is outside the repository (a hub id, a URI?)"
        rel = s.removeprefix(f"{ROOT}/")
        if s.startswith(cfg.runs_dir) or rel.startswith("models/"):
            continue
        assert rel in shipped, f"{path}: {rel} is not a file the repository ships"


def test_paper_yaml_holds_the_paper_setup():
    cfg = load_config(GenerateSFTConfig, ROOT / "configs/generate_sft/paper.yaml")
    assert [m.display_name for m in cfg.proposers] == [
        "WizardLM-2-8x22B",
        "gemma-2-27b-it",
        "Qwen2-72B-Instruct",
        "Llama-3.1-70B-Instruct",
    ]
    assert cfg.aggregator.display_name == "Qwen1.5-110B-Chat"
    assert cfg.layers == 2
    assert all(
        m.sampling.temperature == 0.7 and m.sampling.max_tokens == 2048
        for m in [*cfg.proposers, cfg.aggregator]
    )


def test_dotted_overrides_reach_list_items_of_the_defaults():
    cfg = load_config(
        GenerateSFTConfig, None, ["proposers.1.sampling.temperature=0.1", "layers=3", "run_id=x"]
    )
    assert cfg.proposers[1].sampling.temperature == 0.1
    assert cfg.proposers[0].sampling.temperature == 0.7
    assert cfg.layers == 3 and cfg.run_id == "x"


def test_overrides_apply_over_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("run_id: from_file\nlayers: 3\n")
    cfg = load_config(GenerateSFTConfig, path, ["layers=2"])
    assert (cfg.run_id, cfg.layers) == ("from_file", 2)


def test_unknown_key_names_the_key_and_the_known_ones(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(GenerateSFTConfig, None, ["aggregator.sampling.temprature=0.3"])
    msg = str(e.value)
    assert "unknown key 'aggregator.sampling.temprature'" in msg and "temperature" in msg
    path = tmp_path / "bad.yaml"
    path.write_text("proposer: []\n")
    with pytest.raises(ConfigError, match="unknown key 'proposer'.*proposers"):
        load_config(GenerateSFTConfig, path)


def test_bad_values_and_bad_overrides_are_refused():
    with pytest.raises(ConfigError, match="layers"):
        load_config(GenerateSFTConfig, None, ["layers=1"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(GenerateSFTConfig, None, ["layers"])
    with pytest.raises(ConfigError, match="not an index"):
        load_config(GenerateSFTConfig, None, ["proposers.7.name=x"])
    with pytest.raises(ConfigError, match="distinct names"):
        load_config(GenerateSFTConfig, None, ["proposers.1.name=smollm2-t0.7"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(GenerateSFTConfig, "no/such.yaml")


def test_cli_rejects_unknown_keys_with_exit_code_2_and_lists_keys_on_help():
    bad = subprocess.run(
        [sys.executable, "-m", "jobs.generate_sft", "proposers.0.temprature=1"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert bad.returncode == 2 and "unknown key 'proposers.0.temprature'" in bad.stderr
    helped = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "generate-sft", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert helped.returncode == 0 and "aggregator.sampling.temperature (float, 0.3)" in helped.stdout


# -- local paths are made absolute in the driver (Ray workers run in other folders) ---------------------


def test_relative_paths_are_absolute_against_the_folder_the_command_ran_from(tmp_path, monkeypatch):
    from moaa.stages.train import TrainSFTConfig

    monkeypatch.chdir(tmp_path)
    (tmp_path / "my-model").mkdir()
    (tmp_path / "my-model" / "config.json").write_text("{}")
    cfg = load_config(GenerateSFTConfig, None, ["input_dir=in/prompts", "proposers.0.model=./my-model"])
    assert cfg.runs_dir == str(tmp_path / "runs")  # the default too
    assert cfg.input_dir == str(tmp_path / "in/prompts")
    assert cfg.proposers[0].model == str(tmp_path / "my-model")
    assert cfg.proposers[1].model == str(
        tmp_path / "models/smollm2/SmolLM2-135M-Instruct"
    )  # built on first use
    train = load_config(TrainSFTConfig, None, ["data=d.parquet", "checkpoint.storage_path=ckpt"])
    assert (train.data, train.checkpoint.storage_path) == (
        str(tmp_path / "d.parquet"),
        str(tmp_path / "ckpt"),
    )


def test_hub_ids_and_uris_are_left_as_they_are(tmp_path, monkeypatch):
    from moaa.stages.prepare import PrepareConfig

    monkeypatch.chdir(tmp_path)
    cfg = load_config(
        GenerateSFTConfig,
        None,
        ["proposers.0.model=Qwen/Qwen2-72B-Instruct", "runs_dir=s3://bucket/moaa", "aggregator.model=gpt2"],
    )
    assert cfg.proposers[0].model == "Qwen/Qwen2-72B-Instruct"
    assert cfg.aggregator.model == "gpt2"
    assert cfg.runs_dir == "s3://bucket/moaa"
    assert cfg.out_dir() == "s3://bucket/moaa/demo/generate_sft"
    prep = load_config(PrepareConfig, None, ["ultrafeedback.path=openbmb/UltraFeedback"])
    assert prep.ultrafeedback.path == "openbmb/UltraFeedback"
    (tmp_path / "openbmb").mkdir()  # a local folder of that name wins over the hub id
    prep = load_config(PrepareConfig, None, ["ultrafeedback.path=openbmb"])
    assert prep.ultrafeedback.path == str(tmp_path / "openbmb")


def test_a_submitted_ray_job_refuses_a_relative_output_folder(monkeypatch):
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", '{"runtime_env": {"working_dir": "."}}')
    with pytest.raises(ConfigError, match=r"runs_dir.*relative local path.*s3://"):
        load_config(GenerateSFTConfig, None, [])
    with pytest.raises(ConfigError, match=r"output_dir.*relative local path"):
        load_config(GenerateSFTConfig, None, ["runs_dir=/shared/runs", "output_dir=out"])
    cfg = load_config(GenerateSFTConfig, None, ["runs_dir=/shared/runs", "input_dir=data/prompts"])
    assert cfg.runs_dir == "/shared/runs" and cfg.input_dir.endswith("/data/prompts")
    assert load_config(GenerateSFTConfig, None, ["runs_dir=gs://b/moaa"]).runs_dir == "gs://b/moaa"


def test_a_section_naming_another_model_does_not_inherit_the_defaults_settings(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("aggregator:\n  model: models/tiny/tiny-qwen2-c\n  max_model_len: 4096\n")
    cfg = load_config(GenerateSFTConfig, path)
    default = GenerateSFTConfig().aggregator
    assert cfg.aggregator.display_name == "tiny-qwen2-c" and default.display_name == "smollm2-aggregator"
    assert cfg.aggregator.sampling.repetition_penalty == 1.0 != default.sampling.repetition_penalty
    # the same model: the file's keys merge into the default section
    path.write_text(f"aggregator:\n  model: {default.model}\n  max_model_len: 4096\n")
    cfg = load_config(GenerateSFTConfig, path)
    assert cfg.aggregator.name == "smollm2-aggregator" and cfg.aggregator.max_model_len == 4096


def test_dtype_auto_picks_what_the_engines_node_runs_fast(monkeypatch):
    """On CPU, bfloat16 only where the CPU has AVX512-BF16 (emulated elsewhere: 48 vs 221 tokens/s for
    SmolLM2 on an AVX2 CPU); on GPU vLLM's own 'auto'; an explicit dtype is kept."""
    import torch

    from moaa.engine.settings import ModelConfig

    m = ModelConfig(model="org/model", dtype="auto")
    for has_bf16, want in [(True, "bfloat16"), (False, "float32")]:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=has_bf16: v)
        assert m.engine_dtype() == want
        assert m.model_copy(update={"num_gpus": 1}).engine_dtype() == "auto"
        assert m.model_copy(update={"dtype": "bfloat16"}).engine_dtype() == "bfloat16"
