"""Cloud run folders: prepare and generate_sft reading and writing s3:// URIs (a local S3 server, moto),
through the same pyarrow filesystems a cluster uses. Ray workers reach S3 with the driver's settings."""

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs import generate_sft, prepare
from moaa import storage
from moaa.config import load_config
from moaa.generate import GenerateSFTConfig
from moaa.prepare import PrepareConfig

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
BUCKET = "moaa-test"


@pytest.fixture(scope="module")
def s3():
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
def ray_with_s3_env(s3):
    import ray

    ray.init(num_cpus=2, include_dashboard=False)  # started after the S3 settings, so workers inherit them
    yield
    ray.shutdown()


def test_prepare_and_generate_on_s3_then_resume(s3, ray_with_s3_env, tiny_models):
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
        f"proposers.0.model={tiny_models}/tiny-qwen2-a",
        f"proposers.1.model={tiny_models}/tiny-llama-b",
        f"aggregator.model={tiny_models}/tiny-qwen2-c",
    ]
    cfg = load_config(GenerateSFTConfig, ROOT / "configs/generate_sft/tiny.yaml", overrides)
    summary = generate_sft.main(cfg)
    assert summary.rows == 8 and summary.errors == 0 and summary.outputs["data"].startswith("s3://")
    fs, path = storage.resolve(f"{s3}/cloud/generate_sft/data")
    table = pq.read_table(path, filesystem=fs)
    assert table.num_rows == 8 and table.column("error").null_count == 8
    assert storage.read_json(f"{s3}/cloud/generate_sft/manifest.json")["status"] == "complete"

    assert generate_sft.main(cfg) == summary  # finished: the stored summary, nothing written
