"""A real multi-node Ray cluster on this machine: a head (`ray start --head`) and worker nodes (`ray start
--address`, each its own raylet and resources) that join and are lost mid-job (the raylet killed), with jobs
sent by `moaa submit`:

- generate_sft loses a node and still ends with every row once;
- an elastic train_sft (1 to 2 workers) grows when a node joins and shrinks when it is lost, resuming from its
  last checkpoint each time.

Every Ray process a test starts is killed afterwards (slow)."""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
from conftest import STEPS_SWAP, release_ray
from test_submit import ENV, _free_port, _job_ids, _ray_processes_since
from test_train import sft_rows

from moaa.core import schemas, storage

ROOT = Path(__file__).resolve().parent.parent
MOAA = [sys.executable, "-m", "jobs.cli", "submit"]
RAY = [sys.executable, "-m", "ray.scripts.scripts"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _no_session_ray():
    """These tests start Ray nodes with `ray start` and kill every Ray process started after them: the
    session's in-process Ray would lose its workers."""
    release_ray()


def _ports(*names: str) -> dict[str, int]:
    return {n: _free_port() for n in names}


# Ray's node health check and Ray Train's wait for a worker group to start, shortened so that a lost node is
# noticed in seconds rather than a minute: the same mechanisms as with the defaults on a real cluster, faster.
HEAD_ENV = {
    **ENV,
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "20",
}


class LocalCluster:
    """Ray nodes on this machine, each with its own raylet, resources, ports and session folder, as separate
    machines would have. Every Ray process started after the cluster is killed by ``close``."""

    def __init__(self) -> None:
        self.t0 = time.time()
        self.gcs = _free_port()
        self.address = ""

    def start_head(self, num_cpus: int) -> str:
        """The head with its job API; returns that API's address once it answers."""
        dashboard = _free_port()
        head = [
            *RAY, "start", "--head", f"--port={self.gcs}", "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--include-dashboard=true",
            f"--num-cpus={num_cpus}", "--disable-usage-stats",
            # short: Ray's socket paths are limited
            f"--temp-dir={tempfile.mkdtemp(prefix='rn', dir='/tmp')}",
            *(f"--{k}={v}" for k, v in _ports(
                "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
                "runtime-env-agent-port", "ray-client-server-port", "node-manager-port",
                "object-manager-port",
            ).items()),
        ]  # fmt: skip
        proc = subprocess.run(head, env=HEAD_ENV, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        self.address = f"http://127.0.0.1:{dashboard}"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                _job_ids(self.address)
                break
            except AssertionError:
                time.sleep(2)
        return self.address

    def add_node(self, num_cpus: int) -> int:
        """A worker node joins; returns its raylet's port (what ``kill_node`` takes)."""
        ports = _ports(
            "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
            "runtime-env-agent-port", "node-manager-port", "object-manager-port",
        )  # fmt: skip
        worker = [
            *RAY, "start", f"--address=127.0.0.1:{self.gcs}", "--node-ip-address=127.0.0.1",
            f"--num-cpus={num_cpus}", "--disable-usage-stats", *(f"--{k}={v}" for k, v in ports.items()),
            # a session folder of its own: two nodes on one machine would otherwise share one, and the lost
            # node's clean-up would take the head's files with it
            f"--temp-dir={tempfile.mkdtemp(prefix='rn', dir='/tmp')}",
        ]  # fmt: skip
        proc = subprocess.run(worker, env=ENV, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return ports["node-manager-port"]

    def kill_node(self, node_manager_port: int) -> None:
        """The node is gone: its raylet, and with it its workers and engines (SIGKILL, no clean-up)."""
        _raylet(node_manager_port).kill()

    def close(self) -> None:
        for p in _ray_processes_since(self.t0):
            p.kill()
        psutil.wait_procs(_ray_processes_since(self.t0), timeout=30)


@pytest.fixture
def cluster():
    c = LocalCluster()
    yield c
    c.close()


def _raylet(node_manager_port: int) -> psutil.Process:
    for p in psutil.process_iter(["cmdline"]):
        line = " ".join(p.info["cmdline"] or [])
        if "raylet" in line and f"--node_manager_port={node_manager_port}" in line:
            return p
    raise AssertionError(f"no raylet with node manager port {node_manager_port}")


# the walkthrough's few prompts: 10 samples in 3 shards, enough to lose a node with shards in flight
FEW = STEPS_SWAP.split()


def test_a_lost_worker_node_loses_no_row(cluster, tmp_path):
    address = cluster.start_head(num_cpus=2)
    worker_port = cluster.add_node(num_cpus=2)
    runs = tmp_path / "runs"
    common = ["run_id=nodes", f"runs_dir={runs}"]
    prep = subprocess.run(
        [*MOAA, "prepare", "--config", "configs/prepare/tiny.yaml", *common, *FEW, "--address", address],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert prep.returncode == 0, prep.stdout + prep.stderr
    # generate_sft: the worker node goes once the first shard is committed, with the other shards (one of them
    # multi-turn, several passes) still in flight
    sub = subprocess.Popen(
        [*MOAA, "generate_sft", "--config", "configs/generate_sft/tiny.yaml", *common, "--address", address],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    manifest = runs / "nodes/generate_sft/manifest.json"
    deadline = time.time() + 600
    while time.time() < deadline and sub.poll() is None:  # until the first shard is committed
        if manifest.exists() and json.loads(manifest.read_text())["shards"]:
            break
        time.sleep(0.1)
    killed = sub.poll() is None
    if killed:
        cluster.kill_node(worker_port)
    out, _ = sub.communicate(timeout=900)
    assert killed, "the job ended before the node could be killed"
    assert sub.returncode == 0, out[-4000:]
    rows = pq.read_table(runs / "nodes/generate_sft/data").to_pylist()
    ids = [r["prompt_id"] for r in rows]
    prompts = pq.read_table(runs / "nodes/prepare/prompts").column("prompt_id").to_pylist()
    assert sorted(ids) == sorted(prompts)  # every row, none twice
    assert os.path.exists(runs / "nodes/generate_sft/summary.json")


def _latest_checkpoint(ray_run: Path) -> dict | None:
    """The metrics of Ray Train's latest registered checkpoint (step, loss, workers), or None."""
    try:
        snapshot = json.loads((ray_run / "checkpoint_manager_snapshot.json").read_text())
        return snapshot["latest_checkpoint_result"]["metrics"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _wait_for(sub: subprocess.Popen, what: str, found, log: Path, timeout: float = 600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert sub.poll() is None, f"the job ended before {what}:\n{log.read_text()[-4000:]}"
        if value := found():
            return value
        time.sleep(0.2)
    raise AssertionError(f"no {what} after {timeout} s:\n{log.read_text()[-4000:]}")


# Enough that training still runs after a node has joined and gone: here those take ~50 steps of ~0.4 s.
STEPS = 150


def test_elastic_training_grows_onto_a_joining_node_and_resumes_when_it_is_lost(
    cluster, tmp_path, tiny_models
):
    address = cluster.start_head(num_cpus=1)  # room for one training worker (1 CPU each)
    runs = tmp_path / "runs"
    data = schemas.to_table(sft_rows(36), "sft")
    storage.write_parquet(data, str(runs / "elastic/generate_sft/data/part-00000.parquet"))
    args = [
        "train_sft", "--config", "configs/train_sft/tiny.yaml", "--address", address, "run_id=elastic",
        f"runs_dir={runs}", f"model={tiny_models / 'tiny-qwen2-a'}", "scaling.min_workers=1",
        "scaling.num_workers=2", "scaling.resize_interval_s=2", "effective_batch_size=4",
        f"max_steps={STEPS}", "checkpoint.save_steps=5", "checkpoint.max_failures=5",
    ]  # fmt: skip
    # device auto on a cluster without GPUs refuses to guess (a cluster scaled to zero shows none either)
    refused = subprocess.run([*MOAA, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "scaling.device auto: the Ray cluster has no GPU now" in (
        refused.stdout + refused.stderr
    ), (refused.stdout + refused.stderr)[-3000:]
    assert not (runs / "elastic/train_sft/model").exists()  # and the corrected command below starts over
    args.append("scaling.device=cpu")
    ray_run = runs / "elastic/train_sft/ray/train_sft-elastic"
    log = tmp_path / "submit.log"
    with open(log, "w") as out:
        sub = subprocess.Popen([*MOAA, *args], cwd=ROOT, env=ENV, stdout=out, stderr=subprocess.STDOUT)
        try:
            first = _wait_for(sub, "first checkpoint", lambda: _latest_checkpoint(ray_run), log)
            assert first["workers"] == 1, first
            port = cluster.add_node(num_cpus=1)  # room for a second worker: the group restarts with two
            _wait_for(
                sub,
                "checkpoint of two workers",
                lambda: (_latest_checkpoint(ray_run) or {}).get("workers") == 2,
                log,
            )
            cluster.kill_node(port)  # one of the two workers is gone with its node: back to one
            returncode = sub.wait(timeout=900)
        finally:
            if sub.poll() is None:
                sub.kill()
    output = log.read_text()
    assert returncode == 0, output[-4000:]
    metrics = storage.read_json(str(runs / "elastic/train_sft/summary.json"))["metrics"]
    groups = metrics["worker_groups"]
    assert [g["workers"] for g in groups] == [1, 2, 1], groups
    starts = [g["from_step"] for g in groups]
    assert starts[0] == 0 < starts[1] < starts[2] < STEPS and all(s % 5 == 0 for s in starts), groups
    assert metrics["steps"] == STEPS and metrics["resumed_from"].endswith(f"checkpoint-{starts[2]:07d}")
    # each group resumed from a checkpoint, and kept the configured batch with its own accumulation
    assert "with 2 worker(s)" in output and "with 1 worker(s)" in output
    assert metrics["effective_batch_size"] == 4 and metrics["gradient_accumulation_steps"] == 2
    assert os.path.exists(runs / "elastic/train_sft/model/model.safetensors")
