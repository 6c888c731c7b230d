"""train_sft and train_dpo: real Ray Train, real TRL, the tiny local models, CPU.

The slow tests share one SFT run (two workers, DDP over gloo) and one DPO run on top of it; a second SFT
run has a worker killed mid-training."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from jobs import train_dpo, train_sft
from moaa.core import schemas, storage
from moaa.core.config import ConfigError, load_config
from moaa.core.schemas import SchemaError
from moaa.stages.train import DataError, TrainDPOConfig, TrainSFTConfig, scaling_config

ROOT = Path(__file__).resolve().parent.parent
SFT_ROWS, SFT_ERRORS = 36, 4


def sft_rows(n: int, n_errors: int = 0) -> list[dict]:
    rows = []
    for i in range(n):
        a, b = i % 7, i % 5
        rows.append(
            dict(
                prompt_id=f"p{i}",
                source="test",
                messages=[
                    {"role": "system", "content": "Answer briefly."},
                    {"role": "user", "content": f"What is {a}+{b}?"},
                    {"role": "assistant", "content": f"{a}+{b} is {a + b}."},
                ],
                n_turns=1,
                proposals=[],
                aggregator_model="tiny-qwen2-c",
                error="engine error: boom" if i < n_errors else None,
                error_stage="turn1/layer1/tiny-qwen2-a" if i < n_errors else None,
                run_id="t",
                config_hash="x",
                moaa_version="0",
            )
        )
    return rows


def preference_rows(n: int) -> list[dict]:
    return [
        dict(
            prompt_id=f"p{i}",
            prompt=[{"role": "user", "content": f"What is {i % 7}+{i % 5}?"}],
            chosen=[{"role": "assistant", "content": f"{i % 7 + i % 5}"}],
            rejected=[{"role": "assistant", "content": "I cannot say."}],
            error=None,
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    """A run folder 'demo' with generate_sft and preference data, as the upstream jobs write them."""
    root = tmp_path_factory.mktemp("runs")
    table = schemas.to_table(sft_rows(SFT_ROWS, SFT_ERRORS), "sft")
    storage.write_parquet(table, str(root / "demo/generate_sft/data/part-00000.parquet"))
    pref = schemas.to_table(preference_rows(16), "preference")
    # A later judge job adds columns; training must read its four and ignore the rest.
    pref = pref.append_column("judge_score", pref.column("prompt_id").cast("string"))
    storage.write_parquet(pref, str(root / "demo/generate_dpo/data/part-00000.parquet"))
    return root


def tiny_sft(runs_dir: Path, models: Path, *overrides: str) -> TrainSFTConfig:
    return load_config(
        TrainSFTConfig,
        ROOT / "configs/train_sft/tiny.yaml",
        [f"runs_dir={runs_dir}", f"model={models / 'tiny-qwen2-a'}", *overrides],
    )


# -- fast: configs and data checks (no Ray) -----------------------------------------------------------------
@pytest.mark.parametrize("path", sorted(glob.glob(str(ROOT / "configs/train_*/*.yaml"))))
def test_shipped_yaml_loads_and_reports_effective_batch(path: str) -> None:
    cls = TrainSFTConfig if "/train_sft/" in path else TrainDPOConfig
    cfg = load_config(cls, path)
    line = cfg.batch_line()
    assert line.startswith(f"effective batch {cfg.effective_batch(cfg.scaling.num_workers)} = ")
    if "tiny" not in path and "demo" not in path:  # the paper's recipes: batch 128 at every worker count
        assert {cfg.effective_batch(w) for w in cfg.scaling.worker_counts} == {128}


def test_paper_recipes_hold_the_paper_numbers() -> None:
    sft = load_config(TrainSFTConfig, ROOT / "configs/train_sft/llama31_8b.yaml")
    assert (sft.learning_rate, sft.num_epochs, sft.packing) == (8e-6, 6, True)
    assert load_config(TrainSFTConfig, ROOT / "configs/train_sft/gemma2_9b.yaml").num_epochs == 5
    dpo = load_config(TrainDPOConfig, ROOT / "configs/train_dpo/llama31_8b.yaml")
    assert (dpo.learning_rate, dpo.beta) == (8e-7, 0.01)
    dpo = load_config(TrainDPOConfig, ROOT / "configs/train_dpo/gemma2_9b.yaml")
    assert (dpo.learning_rate, dpo.beta) == (3e-7, 0.01)


def test_unreachable_effective_batch_is_refused() -> None:
    with pytest.raises(ConfigError, match="effective_batch_size 128 cannot be reached"):
        load_config(TrainSFTConfig, None, ["effective_batch_size=128", "per_device_batch_size=3"])
    # An elastic range must reach it at every worker count Ray Train may pick (3 workers cannot: 128/6).
    with pytest.raises(ConfigError, match=r"\[3\] worker"):
        load_config(
            TrainSFTConfig,
            None,
            ["effective_batch_size=128", "scaling.min_workers=2", "scaling.num_workers=4"],
        )
    with pytest.raises(ConfigError, match="unknown key 'bogus'"):
        load_config(TrainSFTConfig, None, ["bogus=1"])
    cfg = load_config(TrainSFTConfig, None, ["effective_batch_size=16", "scaling.num_workers=4"])
    assert cfg.gradient_accumulation(4) == 2 and cfg.batch_line() == (
        "effective batch 16 = 2 per device x 2 accumulation x 4 workers"
    )


def test_scaling_config_is_elastic_when_a_range_is_given() -> None:
    cfg = load_config(TrainSFTConfig, None, ["scaling.min_workers=1", "scaling.num_workers=2"])
    sc = scaling_config(cfg, use_gpu=False)
    assert sc.num_workers == (1, 2) and sc.elasticity_enabled and sc.resources_per_worker == {"CPU": 1}
    sc = scaling_config(load_config(TrainSFTConfig, None, ["scaling.gpus_per_worker=2"]), use_gpu=True)
    assert sc.num_workers == 1 and sc.use_gpu and sc.resources_per_worker == {"CPU": 1, "GPU": 2}
    assert sc.placement_strategy == "PACK"
    # TRL caches precomputed reference log-probs on rank 0's node only: such a DPO run stays on one node
    dpo = load_config(TrainDPOConfig, ROOT / "configs/train_dpo/llama31_8b.yaml", ["run_id=x"])
    assert (
        dpo.reference == "precomputed"
        and scaling_config(dpo, use_gpu=True).placement_strategy == "STRICT_PACK"
    )
    frozen = load_config(TrainDPOConfig, None, ["reference=frozen_copy"])
    assert scaling_config(frozen, use_gpu=True).placement_strategy == "PACK"


def _assert_fails_before_ray(cfg, exc: type[Exception], *needles: str) -> None:
    import ray

    with pytest.raises(exc) as info:
        (train_sft.main if isinstance(cfg, TrainSFTConfig) else train_dpo.main)(cfg)
    for needle in needles:
        assert needle in str(info.value)
    assert not ray.is_initialized(), "the data check must fail before any worker (or Ray) starts"


def test_device_auto_trains_on_cpu_here_and_refuses_to_guess_on_a_cluster_without_gpus(monkeypatch) -> None:
    """Decision only (the cluster's view faked): test_multinode runs the refusal on a real cluster."""
    import ray

    from moaa.core.config import UserError
    from moaa.stages import train as train_stage

    cfg = load_config(TrainSFTConfig, ROOT / "configs/train_sft/tiny.yaml", ["run_id=x"])
    gpus = {"CPU": 8.0}
    monkeypatch.setattr(ray, "cluster_resources", lambda: gpus)
    monkeypatch.setattr(train_stage, "connected_to_a_cluster", lambda: False)
    assert train_stage.wants_gpu(cfg) is False  # this machine's own Ray, no GPU: CPU
    monkeypatch.setattr(train_stage, "connected_to_a_cluster", lambda: True)
    with pytest.raises(UserError, match="scaling.device=gpu .* or scaling.device=cpu"):
        train_stage.wants_gpu(cfg)
    gpus["GPU"] = 8.0
    assert train_stage.wants_gpu(cfg) is True
    cpu = load_config(
        TrainSFTConfig, ROOT / "configs/train_sft/tiny.yaml", ["run_id=x", "scaling.device=cpu"]
    )
    assert train_stage.wants_gpu(cpu) is False  # what is set is done, GPUs or not


def test_a_softcapped_model_trains_with_attention_that_applies_the_cap(tmp_path) -> None:
    """Gemma-2 (the paper's 9B target) caps attention logits; SDPA drops the cap, so a tiny random Gemma-2
    gives other logits under SDPA than under eager attention, and load_model picks eager for it (and the
    default for a model without a cap)."""
    import torch
    from transformers import AutoModelForCausalLM, Gemma2Config

    from moaa.stages.train import load_model

    torch.manual_seed(0)
    cfg = Gemma2Config(
        vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, attn_logit_softcapping=0.5, final_logit_softcapping=None,
        initializer_range=1.0,  # attention logits well above the cap (at 0.02 they are ~0: the cap is moot)
    )  # fmt: skip
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "gemma2")
    model = load_model(str(tmp_path / "gemma2"), torch.float32)
    assert model.config._attn_implementation == "eager"
    sdpa = AutoModelForCausalLM.from_pretrained(tmp_path / "gemma2", attn_implementation="sdpa")
    ids = torch.randint(0, 64, (1, 12))
    with torch.no_grad():
        assert not torch.allclose(model(ids).logits, sdpa(ids).logits, atol=1e-4)  # the cap matters here
    cfg.attn_logit_softcapping = None
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "uncapped")
    assert load_model(str(tmp_path / "uncapped"), torch.float32).config._attn_implementation != "eager"


def test_missing_or_mistyped_column_is_refused_before_workers_start(tmp_path, tiny_models) -> None:
    table = schemas.to_table(sft_rows(4), "sft")
    bad = str(tmp_path / "missing.parquet")
    storage.write_parquet(table.drop_columns(["messages"]), bad)
    cfg = tiny_sft(tmp_path, tiny_models, f"data={bad}")
    _assert_fails_before_ray(cfg, SchemaError, "missing column 'messages'", bad)

    typed = str(tmp_path / "typed.parquet")
    as_text = table.set_column(table.schema.get_field_index("messages"), "messages", table.column("source"))
    storage.write_parquet(as_text, typed)
    cfg = tiny_sft(tmp_path, tiny_models, f"data={typed}", "run_id=typed")
    _assert_fails_before_ray(cfg, SchemaError, "column 'messages' is string", typed)

    pref = schemas.to_table(preference_rows(2), "preference").drop_columns(["rejected"])
    storage.write_parquet(pref, str(tmp_path / "pref.parquet"))
    dpo = load_config(TrainDPOConfig, None, [f"data={tmp_path / 'pref.parquet'}", f"runs_dir={tmp_path}"])
    _assert_fails_before_ray(dpo, SchemaError, "missing column 'rejected'")


def test_all_rows_errored_is_refused_before_workers_start(tmp_path, tiny_models) -> None:
    path = str(tmp_path / "errored.parquet")
    storage.write_parquet(schemas.to_table(sft_rows(5, n_errors=5), "sft"), path)
    cfg = tiny_sft(tmp_path, tiny_models, f"data={path}")
    _assert_fails_before_ray(cfg, DataError, "no usable rows", "all 5 with 'error' set")


# -- slow: real training -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sft_run(ray_local, runs_dir, tiny_models) -> dict:
    # 32 usable rows, 2 per device x 2 accumulation x 2 workers = 8 per step: 4 steps per epoch, 2 epochs.
    cfg = tiny_sft(runs_dir, tiny_models, "scaling.num_workers=2", "effective_batch_size=8", "num_epochs=2")
    summary = train_sft.main(cfg)
    return {**summary.metrics, "rows_used": summary.rows, "rows_errored": summary.errors, "summary": summary}


@pytest.fixture(scope="module")
def dpo_run(sft_run, runs_dir) -> dict:
    cfg = load_config(TrainDPOConfig, ROOT / "configs/train_dpo/tiny.yaml", [f"runs_dir={runs_dir}"])
    summary = train_dpo.main(cfg)
    return {**summary.metrics, "rows_used": summary.rows, "rows_errored": summary.errors, "summary": summary}


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def _assert_learned(summary: dict, before: Path, after: Path) -> None:
    losses = [loss for _, loss in summary["losses"]]
    assert len(losses) == summary["steps"] and all(loss == loss for loss in losses)  # logged, no NaN
    assert losses[-1] < losses[0], losses
    old, new = _weights(before), _weights(after)
    assert old.keys() == new.keys()
    unchanged = [name for name in old if torch.equal(old[name], new[name])]
    assert not unchanged, f"parameters not updated: {unchanged}"


@pytest.mark.slow
def test_sft_two_workers_learn_and_take_the_configured_steps(sft_run, runs_dir, tiny_models) -> None:
    assert sft_run["world_size"] == 2 and sft_run["effective_batch_size"] == 8
    assert sft_run["rows_used"] == SFT_ROWS - SFT_ERRORS and sft_run["rows_errored"] == SFT_ERRORS
    assert sft_run["steps"] == 2 * (SFT_ROWS - SFT_ERRORS) // 8 == 8
    assert sft_run["epochs"] == pytest.approx(2.0)
    assert sft_run["assistant_only_loss"] is True
    assert sft_run["tokens_seen"] > 0 and sft_run["tokens_per_s"] > 0 and sft_run["resumed_from"] is None
    assert sft_run["worker_groups"] == [{"from_step": 0, "workers": 2}]
    model_dir = runs_dir / "demo/train_sft/model"
    _assert_learned(sft_run, tiny_models / "tiny-qwen2-a", model_dir)
    on_disk = storage.read_json(str(runs_dir / "demo/train_sft/summary.json"))
    assert on_disk == sft_run["summary"].model_dump(mode="json")
    assert on_disk["metrics"]["steps"] == 8 and on_disk["outputs"] == {"model": str(model_dir)}


@pytest.mark.slow
def test_a_finished_training_stage_returns_its_summary_and_writes_nothing(sft_run, runs_dir, tiny_models):
    out = runs_dir / "demo/train_sft"
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    cfg = tiny_sft(runs_dir, tiny_models, "scaling.num_workers=2", "effective_batch_size=8", "num_epochs=2")
    assert train_sft.main(cfg) == sft_run["summary"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


@pytest.mark.slow
def test_dpo_learns_on_top_of_the_sft_model(dpo_run, runs_dir) -> None:
    assert dpo_run["model"] == str(runs_dir / "demo/train_sft/model")
    assert dpo_run["steps"] > 0 and dpo_run["rows_used"] == 16
    _assert_learned(dpo_run, runs_dir / "demo/train_sft/model", runs_dir / "demo/train_dpo/model")


VLLM_SCRIPT = textwrap.dedent(
    """
    import sys
    from vllm import LLM, SamplingParams

    if __name__ == "__main__":
        llm = LLM(model=sys.argv[1], dtype="float32", enforce_eager=True, max_model_len=512)
        params = SamplingParams(max_tokens=8, temperature=0)
        out = llm.chat([[{"role": "user", "content": "What is 2+3?"}]], params)
        print("GENERATED", len(out[0].outputs[0].token_ids), repr(out[0].outputs[0].text))
    """
)


@pytest.mark.slow
def test_trained_models_load_in_transformers_and_vllm(dpo_run, runs_dir, tmp_path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for stage in ("train_sft", "train_dpo"):
        path = runs_dir / "demo" / stage / "model"
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path)
        text = tok.apply_chat_template(
            [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
        )
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert model.generate(torch.tensor([ids]), max_new_tokens=3).shape[1] > len(ids)
    script = tmp_path / "vllm_load.py"
    script.write_text(VLLM_SCRIPT)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), str(runs_dir / "demo/train_dpo/model")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("GENERATED"))
    assert int(line.split()[1]) > 0


def _kill_a_worker_after_first_checkpoint(storage_dir: Path, killed: list[int]) -> None:
    # A checkpoint counts once Ray Train's controller has registered it (its snapshot lists it); a folder
    # that is still being uploaded when the worker dies is rightly not resumed from.
    snapshot = storage_dir / "checkpoint_manager_snapshot.json"
    deadline = time.time() + 240
    while time.time() < deadline:
        try:
            if json.loads(snapshot.read_text()).get("checkpoint_results"):
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    workers = [
        p
        for p in psutil.Process().children(recursive=True)
        if any("RayTrainWorker" in part for part in p.cmdline())
    ]
    if workers:
        workers[0].kill()  # SIGKILL: no cleanup, as when a node dies
        killed.append(workers[0].pid)


@pytest.mark.slow
def test_killed_worker_run_finishes_from_a_checkpoint(ray_local, runs_dir, tiny_models) -> None:
    cfg = tiny_sft(
        runs_dir,
        tiny_models,
        "run_id=killed",
        "max_steps=30",
        "checkpoint.save_steps=3",
        "checkpoint.max_failures=2",
    )
    killed: list[int] = []
    watcher = threading.Thread(
        target=_kill_a_worker_after_first_checkpoint,
        args=(Path(cfg.storage_path) / "train_sft-killed", killed),
        daemon=True,
    )
    os.makedirs(runs_dir / "killed/generate_sft", exist_ok=True)
    os.symlink(runs_dir / "demo/generate_sft/data", runs_dir / "killed/generate_sft/data")
    watcher.start()
    summary = train_sft.main(cfg)
    watcher.join(timeout=5)
    assert killed, "no training worker was found to kill"
    assert summary.metrics["steps"] == 30
    assert summary.metrics["resumed_from"] and "checkpoint-" in summary.metrics["resumed_from"]
    # one group to the kill, a new one from the checkpoint it resumed from (a multiple of save_steps)
    first, second = summary.metrics["worker_groups"]
    assert first == {"from_step": 0, "workers": 1} and second["workers"] == 1
    assert second["from_step"] > 0 and second["from_step"] % 3 == 0
    assert summary.metrics["resumed_from"].endswith(f"checkpoint-{second['from_step']:07d}")
    assert storage.read_json(str(runs_dir / "killed/train_sft/summary.json"))["metrics"]["resumed_from"]
