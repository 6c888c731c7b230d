"""A real two-node Ray cluster on this machine: a head (`ray start --head`) and a worker node (`ray start
--address`, its own raylet and resources). `moaa submit` runs generate_sft on it; the worker node's raylet is
killed mid-job, as when a node is lost, and the job still ends with every row once. Every Ray process the
test starts is killed afterwards (slow)."""

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
from test_submit import ENV, _free_port, _job_ids, _ray_processes_since

ROOT = Path(__file__).resolve().parent.parent
MOAA = [sys.executable, "-m", "jobs.cli", "submit"]
RAY = [sys.executable, "-m", "ray.scripts.scripts"]
pytestmark = pytest.mark.slow


def _ports(*names: str) -> dict[str, int]:
    return {n: _free_port() for n in names}


@pytest.fixture
def two_nodes(tmp_path):
    """(job API address, the worker node's raylet port). The head keeps 2 CPUs, the worker brings 2 more."""
    t0 = time.time()
    gcs, dashboard = _free_port(), _free_port()
    head = [
        *RAY, "start", "--head", f"--port={gcs}", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}", "--include-dashboard=true", "--num-cpus=2", "--disable-usage-stats",
        f"--temp-dir={tempfile.mkdtemp(prefix='rn', dir='/tmp')}",  # short: Ray's socket paths are limited
        *(f"--{k}={v}" for k, v in _ports(
            "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
            "runtime-env-agent-port", "ray-client-server-port", "node-manager-port", "object-manager-port",
        ).items()),
    ]  # fmt: skip
    proc = subprocess.run(head, env=ENV, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    worker_ports = _ports(
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
        "runtime-env-agent-port", "node-manager-port", "object-manager-port",
    )  # fmt: skip
    worker = [
        *RAY, "start", f"--address=127.0.0.1:{gcs}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
        "--disable-usage-stats", *(f"--{k}={v}" for k, v in worker_ports.items()),
        # a session folder of its own: two nodes on one machine would otherwise share one, and the lost
        # node's clean-up would take the head's files with it
        f"--temp-dir={tempfile.mkdtemp(prefix='rn', dir='/tmp')}",
    ]  # fmt: skip
    proc = subprocess.run(worker, env=ENV, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            _job_ids(address)
            break
        except AssertionError:
            time.sleep(2)
    yield address, worker_ports["node-manager-port"]
    for p in _ray_processes_since(t0):
        p.kill()
    psutil.wait_procs(_ray_processes_since(t0), timeout=30)


def _raylet(node_manager_port: int) -> psutil.Process:
    for p in psutil.process_iter(["cmdline"]):
        line = " ".join(p.info["cmdline"] or [])
        if "raylet" in line and f"--node_manager_port={node_manager_port}" in line:
            return p
    raise AssertionError(f"no raylet with node manager port {node_manager_port}")


def test_a_lost_worker_node_loses_no_row(two_nodes, tmp_path):
    address, worker_port = two_nodes
    runs = tmp_path / "runs"
    common = ["run_id=nodes", f"runs_dir={runs}"]
    prep = subprocess.run(
        [*MOAA, "prepare", "--config", "configs/prepare/tiny.yaml", *common, "--address", address],
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
        _raylet(worker_port).kill()  # the node is gone: its raylet, and with it its workers and engines
    out, _ = sub.communicate(timeout=900)
    assert killed, "the job ended before the node could be killed"
    assert sub.returncode == 0, out[-4000:]
    rows = pq.read_table(runs / "nodes/generate_sft/data").to_pylist()
    ids = [r["prompt_id"] for r in rows]
    prompts = pq.read_table(runs / "nodes/prepare/prompts").column("prompt_id").to_pylist()
    assert sorted(ids) == sorted(prompts)  # every row, none twice
    assert os.path.exists(runs / "nodes/generate_sft/summary.json")
