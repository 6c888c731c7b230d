"""Cloud storage: run folders, models and training checkpoints on s3:// URIs (a local S3 server, moto),
through the same pyarrow filesystems a cluster uses. Ray workers reach S3 with the driver's settings; a model
in S3 is copied to each node's cache (MOAA_CACHE) before vLLM or transformers load it."""

import os
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import torch
from conftest import release_ray
from safetensors.torch import load_file
from test_train import sft_rows

from jobs import generate_sft, prepare, train_sft
from moaa.core import schemas, storage
from moaa.core.config import load_config
from moaa.engine.settings import ModelSourceError
from moaa.stages.generate_sft import GenerateSFTConfig
from moaa.stages.prepare import PrepareConfig
from moaa.stages.train import TrainSFTConfig

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
BUCKET = "moaa-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "MOAA_CACHE": str(tmp_path_factory.mktemp("cache")),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=BUCKET)
    yield f"s3://{BUCKET}/runs"
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def s3_model(s3, tiny_models) -> str:
    """tiny-qwen2-a copied to S3, as a user uploads a model folder."""
    fs, path = storage.resolve(f"s3://{BUCKET}/models/tiny-qwen2-a")
    pafs.copy_files(str(tiny_models / "tiny-qwen2-a"), path, destination_filesystem=fs)
    return f"s3://{BUCKET}/models/tiny-qwen2-a"


@pytest.fixture(scope="module")
def ray_with_s3_env(s3):
    import ray

    release_ray()  # the session's Ray has workers without the S3 settings
    ray.init(num_cpus=2, include_dashboard=False)  # started after the S3 settings, so workers inherit them
    yield
    ray.shutdown()


def test_prepare_and_generate_on_s3_then_resume(s3, s3_model, ray_with_s3_env, tiny_models):
    prep = load_config(
        PrepareConfig,
        ROOT / "configs/prepare/tiny.yaml",
        [
            f"runs_dir={s3}",
            "run_id=cloud",
            "ultrachat.path=null",
            "ultrafeedback.subset=8",
            "rows_per_shard=4",
        ],
    )
    prepare.main(prep)
    shards = storage.list_files(f"{s3}/cloud/prepare/prompts", ".parquet")
    assert [s.rsplit("/", 1)[1] for s in shards] == ["part-00000.parquet", "part-00001.parquet"]

    overrides = [
        f"runs_dir={s3}",
        "run_id=cloud",
        f"proposers.0.model={s3_model}",  # an engine loads its model from S3
        f"proposers.1.model={tiny_models}/tiny-llama-b",
        f"aggregator.model={tiny_models}/tiny-qwen2-c",
    ]
    cfg = load_config(GenerateSFTConfig, ROOT / "configs/generate_sft/tiny.yaml", overrides)
    summary = generate_sft.main(cfg)
    assert summary.rows == 8 and summary.errors == 0 and summary.outputs["data"].startswith("s3://")
    fs, path = storage.resolve(f"{s3}/cloud/generate_sft/data")
    table = pq.read_table(path, filesystem=fs)
    assert table.num_rows == 8 and table.column("error").null_count == 8
    proposers = set(table.column("proposals").combine_chunks().flatten().field("model").to_pylist())
    assert "tiny-qwen2-a" in proposers  # the model read from S3 answered
    cached = os.listdir(os.path.join(os.environ["MOAA_CACHE"], "models"))
    assert [c.rsplit("-", 1)[0] for c in cached] == ["tiny-qwen2-a"]  # one copy for the node, then reused
    assert storage.read_json(f"{s3}/cloud/generate_sft/manifest.json")["status"] == "complete"

    assert generate_sft.main(cfg) == summary  # finished: the stored summary, nothing written


def test_ranks_of_one_node_fetch_a_model_from_s3_once(s3, s3_model, tmp_path, tiny_models):
    """Eight processes of one node (training ranks, engines) ask for the same S3 model at once: one fetches
    it under the node's file lock, the others wait and read that copy."""
    import subprocess
    import sys

    code = "import sys; from moaa.core import storage; print('dest', storage.local_copy(sys.argv[1]))"
    env = {**os.environ, "MOAA_CACHE": str(tmp_path / "cache")}
    procs = [
        subprocess.Popen([sys.executable, "-c", code, s3_model], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(8)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert sum(o.count("[storage] fetched s3://") for o in outs) == 1, outs
    dests = {line.split(" ", 1)[1] for o in outs for line in o.splitlines() if line.startswith("dest ")}
    assert len(dests) == 1
    dest = Path(dests.pop())
    want = sorted(p.name for p in (tiny_models / "tiny-qwen2-a").iterdir())
    assert sorted(p.name for p in dest.iterdir()) == want
    assert not list(dest.parent.glob("*.tmp-*"))  # no partial copy left


def test_a_model_in_s3_without_config_is_refused_before_engines_start(s3, tiny_models):
    prepare.main(
        load_config(
            PrepareConfig,
            ROOT / "configs/prepare/tiny.yaml",
            [f"runs_dir={s3}", "run_id=nomodel", "ultrachat.path=null", "ultrafeedback.subset=4"],
        )
    )
    cfg = load_config(
        GenerateSFTConfig,
        ROOT / "configs/generate_sft/tiny.yaml",
        [f"runs_dir={s3}", "run_id=nomodel", f"proposers.0.model=s3://{BUCKET}/models/typo"],
    )
    with pytest.raises(ModelSourceError, match=f"s3://{BUCKET}/models/typo holds no config.json"):
        generate_sft.main(cfg)
    assert not storage.exists(f"{s3}/nomodel/generate_sft")  # nothing written


def test_training_reads_and_writes_s3_and_resumes_from_s3_checkpoints(s3, s3_model, ray_with_s3_env):
    """Model in S3, data in S3, Ray Train checkpoints in S3, trained model published to S3."""
    run = f"{s3}/cloudtrain"
    storage.write_parquet(
        schemas.to_table(sft_rows(16), "sft"), f"{run}/generate_sft/data/part-00000.parquet"
    )
    bad = load_config(
        TrainSFTConfig,
        ROOT / "configs/train_sft/tiny.yaml",
        [f"runs_dir={s3}", "run_id=cloudtrain", f"model=s3://{BUCKET}/models/typo"],
    )
    with pytest.raises(ModelSourceError, match=f"model: s3://{BUCKET}/models/typo holds no config.json"):
        train_sft.main(bad)
    cfg = load_config(
        TrainSFTConfig,
        ROOT / "configs/train_sft/tiny.yaml",
        [
            f"runs_dir={s3}",
            "run_id=cloudtrain",
            f"model={s3_model}",
            "max_steps=4",
            "checkpoint.save_steps=2",
        ],
    )
    summary = train_sft.main(cfg)
    assert summary.metrics["steps"] == 4 and summary.outputs["model"] == f"{run}/train_sft/model"
    checkpoints = storage.list_dirs(f"{run}/train_sft/ray/train_sft-cloudtrain")
    assert [c.rsplit("/", 1)[1] for c in checkpoints if "checkpoint" in c] == [
        "checkpoint-0000002",
        "checkpoint-0000004",
    ]
    trained = load_file(os.path.join(storage.local_copy(summary.outputs["model"]), "model.safetensors"))
    before = load_file(os.path.join(storage.local_copy(s3_model), "model.safetensors"))
    assert trained.keys() == before.keys()
    assert not any(torch.equal(trained[k], before[k]) for k in before)  # every tensor trained
    assert train_sft.main(cfg) == summary  # finished: the stored summary
