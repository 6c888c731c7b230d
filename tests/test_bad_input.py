"""Bad settings and bad inputs, as a user meets them on the command line: every one fails before Ray or any
engine starts, with the file, row or key named, the fix, and no traceback. A failed attempt that committed
nothing does not lock its folder."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moaa.core import manifests, schemas, storage

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "data" / "samples"


def cli(job: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"jobs.{job}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def assert_clean_failure(proc: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == code, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert "Ray" not in out and "vLLM" not in out, f"something started:\n{out[-3000:]}"
    for needle in needles:
        assert needle in out, f"{needle!r} not in:\n{out[-3000:]}"


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("prompts")
    row = {"prompt_id": "a", "source": "t", "messages": [{"role": "user", "content": "Hi"}], "n_turns": 1}
    storage.write_parquet(schemas.to_table([row], "prompts"), str(d / "part-00000.parquet"))
    return d


BAD_SETTINGS = [
    ("proposers.0.sampling.max_tokens=-5", "proposers.0.sampling.max_tokens"),
    ("proposers.0.sampling.max_tokens=0", "proposers.0.sampling.max_tokens"),
    ("aggregator.sampling.temperature=-1", "aggregator.sampling.temperature"),
    ("proposers.1.sampling.top_p=0", "proposers.1.sampling.top_p"),
    ("proposers.1.sampling.top_p=1.5", "proposers.1.sampling.top_p"),
    ("aggregator.replicas=0", "aggregator.replicas"),
    ("aggregator.num_cpus=0", "aggregator.num_cpus"),
    ("aggregator.num_gpus=-1", "aggregator.num_gpus"),
    (
        "aggregator.tensor_parallel_size=2",
        "tensor_parallel_size x pipeline_parallel_size = 2 needs GPUs: set num_gpus = 2",
    ),
    ("proposers.0.batch_size=0", "proposers.0.batch_size"),
    ("aggregator.dtype=float8", "aggregator.dtype"),
    ("proposers.0.model=models/nope/not-a-model", "no model folder at"),
    ("proposers.0.model=data/samples", "holds no config.json"),
    ("aggregator.engine_kwargs.trust_remote_code=true", "engine_kwargs may not set ['trust_remote_code']"),
    ("layers=1", "layers must be >= 2"),
    ("proposers.5.model=x", "is not an index of a list of 2"),
    ("aggregator.no_such_key=1", "unknown key 'aggregator.no_such_key'"),
]


@pytest.mark.parametrize("override,needle", BAD_SETTINGS, ids=[o for o, _ in BAD_SETTINGS])
def test_bad_settings_fail_at_once_naming_the_key(override, needle, prompts, tmp_path):
    proc = cli("generate_sft", f"input_dir={prompts}", f"output_dir={tmp_path / 'out'}", override)
    assert_clean_failure(proc, 2, needle)
    assert not (tmp_path / "out").exists()


def test_a_hub_model_while_offline_is_refused_before_ray_naming_the_key(prompts, tmp_path):
    proc = cli(
        "generate_sft",
        f"input_dir={prompts}",
        f"output_dir={tmp_path / 'out'}",
        "proposers.1.model=someone/not-cached-model",
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert_clean_failure(
        proc, 1, "proposers.1.model: 'someone/not-cached-model' is a hub id", "HF_HUB_OFFLINE"
    )
    assert not (tmp_path / "out").exists()


def test_a_missing_model_of_this_run_is_named(prompts, tmp_path):
    proc = cli("generate_dpo", f"input_dir={prompts}", f"runs_dir={tmp_path}", "run_id=fresh")
    assert_clean_failure(proc, 1, "train_sft-r1", "does not exist (yet)", "jobs.train_sft")


# -- input files --------------------------------------------------------------------------------------------


def _prepare(tmp_path: Path, uf: Path, *extra: str) -> subprocess.CompletedProcess:
    return cli(
        "prepare", f"ultrafeedback.path={uf}", "ultrachat.path=null", f"output_dir={tmp_path / 'out'}", *extra
    )


def _folder_with_a_corrupt_parquet(tmp_path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "uf"
    folder.mkdir()
    lines = (SAMPLES / "ultrafeedback.jsonl").read_text().splitlines()
    rows = [{"source": r["source"], "instruction": r["instruction"]} for r in map(json.loads, lines[:20])]
    pq.write_table(pa.Table.from_pylist(rows[:10]), folder / "a.parquet")
    pq.write_table(pa.Table.from_pylist(rows[10:]), folder / "b.parquet")
    data = (folder / "b.parquet").read_bytes()
    (folder / "b.parquet").write_bytes(data[: len(data) // 2])  # a file cut in half
    return folder


def test_a_corrupt_parquet_file_fails_naming_the_file(tmp_path):
    folder = _folder_with_a_corrupt_parquet(tmp_path)
    proc = _prepare(tmp_path, folder)
    assert_clean_failure(proc, 1, f"{folder / 'b.parquet'}: cannot be read", "on_bad_file=quarantine")
    assert not (tmp_path / "out").exists()


def test_a_corrupt_parquet_file_is_quarantined_and_the_rest_goes_on(tmp_path):
    folder = _folder_with_a_corrupt_parquet(tmp_path)
    proc = _prepare(tmp_path, folder, "on_bad_file=quarantine")
    assert proc.returncode == 0, proc.stderr[-3000:]
    q = storage.read_parquet(str(tmp_path / "out" / "quarantine.parquet")).to_pylist()
    bad = [r for r in q if r["row_index"] == -1]
    assert [r["source_file"] for r in bad] == [str(folder / "b.parquet")]
    assert bad[0]["reason"].startswith("unreadable file:")
    summary = storage.read_json(str(tmp_path / "out" / "summary.json"))
    assert summary["rows"] > 0 and summary["metrics"]["files_quarantined"] == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_file_fails_naming_the_file(tmp_path):
    f = tmp_path / "uf.jsonl"
    f.write_text((SAMPLES / "ultrafeedback.jsonl").read_text())
    f.chmod(0)
    assert_clean_failure(_prepare(tmp_path, f), 1, f"{f}: cannot be read", "Permission denied")


def test_an_empty_result_is_an_error_and_the_folder_takes_a_corrected_config(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"source": "x", "instruction": ""}\n')
    proc = _prepare(tmp_path, bad)
    assert_clean_failure(proc, 1, "all 1 input rows were quarantined", "quarantine.parquet")
    # nothing was committed: the corrected command runs in the same folder, and says so
    proc = _prepare(tmp_path, SAMPLES / "ultrafeedback.jsonl")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "committed nothing; starting over with this config" in proc.stdout
    assert manifests.require_complete(str(tmp_path / "out"), "prepare")["status"] == "complete"


def test_a_folder_with_committed_work_keeps_refusing_another_config(tmp_path):
    out = str(tmp_path / "out")
    manifest = manifests.start_manifest(out, "generate_sft", "r", "hash-a", {})
    manifest["shards"]["part-00000.parquet"] = {"rows": 1, "files": ["data/part-00000.parquet"]}
    manifests.save_manifest(out, manifest)
    with pytest.raises(manifests.ResumeError, match="config hash hash-a"):
        manifests.start_manifest(out, "generate_sft", "r", "hash-b", {})
    with pytest.raises(manifests.ResumeError):  # a training run with checkpoints is committed work too
        manifests.start_manifest(str(tmp_path / "t"), "train_sft", "r", "a", {})
        manifests.start_manifest(str(tmp_path / "t"), "train_sft", "r", "b", {}, other_work=True)
    assert manifests.start_manifest(str(tmp_path / "t"), "train_sft", "r", "b", {})["config_hash"] == "b"
