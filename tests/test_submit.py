"""moaa submit: the submission id, the twin rule and the command line (fast), and real submissions to a
real Ray head started for the test (`ray start --head` with its job API, on loopback), cleaned up after
(slow)."""

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
from conftest import release_ray
from test_cluster import scan_for_secrets  # the same scan as the shipped configs get

from moaa.core import submit

ROOT = Path(__file__).resolve().parent.parent
MOAA = [sys.executable, "-m", "jobs.cli", "submit"]


@pytest.fixture(scope="module", autouse=True)
def _no_session_ray():
    """These tests start Ray nodes with `ray start` and kill every Ray process started after them: the
    session's in-process Ray would lose its workers."""
    release_ray()


def test_the_submission_id_follows_the_run():
    assert submit.submission_id("generate_sft", "exp1") == "moaa-generate_sft-exp1"
    assert submit.submission_id("pipeline", "a/b c", 2) == "moaa-pipeline-a-b-c-r2"
    cfg = ROOT / "configs/pipeline/paper.yaml"
    assert submit.run_fields(str(cfg), []) == {"run_id": "paper", "round": 1}
    assert submit.run_fields(str(cfg), ["run_id=x", "round=3", "rounds=2"]) == {"run_id": "x", "round": 3}
    assert submit.run_fields(None, []) == {"run_id": "demo", "round": 1}


def test_a_repeated_submit_attaches_reports_or_makes_a_new_attempt_never_a_twin():
    base = "moaa-pipeline-x"
    assert submit.choose(base, {}) == ("submit", base)
    assert submit.choose(base, {base: "RUNNING"}) == ("attach", base)
    assert submit.choose(base, {base: "FAILED", f"{base}-a2": "PENDING"}) == ("attach", f"{base}-a2")
    assert submit.choose(base, {base: "SUCCEEDED"}) == ("done", base)
    assert submit.choose(base, {base: "FAILED"}) == ("submit", f"{base}-a2")
    assert submit.choose(base, {base: "FAILED", f"{base}-a2": "STOPPED"}) == ("submit", f"{base}-a3")
    assert submit.choose(base, {base: "FAILED", f"{base}-a2": "SUCCEEDED"}) == ("done", f"{base}-a2")


def test_the_entrypoint_is_the_job_as_a_user_would_run_it():
    got = submit.entrypoint("generate_sft", "configs/generate_sft/paper.yaml", ["run_id=a b", "layers=3"])
    assert got == "python -m jobs.generate_sft --config configs/generate_sft/paper.yaml 'run_id=a b' layers=3"


@pytest.mark.parametrize(
    "args, message",
    [
        (["nojob", "--address", "http://127.0.0.1:9"], "unknown job 'nojob'"),
        (["prepare", "--address", "http://127.0.0.1:9", "--config", "nope.yaml"], "no such file"),
        (["prepare", "--address", "http://127.0.0.1:9", "run_id"], "not of the form key=value"),
        (["prepare", "--address", "http://127.0.0.1:9"], "cannot reach Ray's job API"),
    ],
)
def test_bad_submissions_fail_before_anything_is_sent(args, message):
    proc = subprocess.run([*MOAA, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------ a real cluster


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# How Ray's processes show up (several rename themselves, e.g. "ray::DashboardAgent", so a temp dir in the
# command line does not find them all).
RAY_MARKERS = ("ray::", "raylet", "gcs_server", "site-packages/ray/", "ray.util.client", "ray.scripts")


def _ray_processes_since(t0: float) -> list[psutil.Process]:
    """Ray processes started after t0 (the fixture's cluster and the jobs it ran), not this test process."""
    found = []
    for p in psutil.process_iter(["cmdline", "create_time"]):
        try:
            line = " ".join(p.info["cmdline"] or [])
            if p.pid != os.getpid() and p.info["create_time"] >= t0 and any(m in line for m in RAY_MARKERS):
                # only this suite's (conftest's session mark): other Ray jobs on the machine are not ours
                if p.environ().get("MOAA_TEST_SESSION") == os.environ.get("MOAA_TEST_SESSION"):
                    found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


# The cluster's token (token authentication, Ray's default for a new cluster), made for the test.
TOKEN = secrets.token_hex(32)
ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
    "RAY_AUTH_MODE": "token",
    "RAY_AUTH_TOKEN": TOKEN,
    # the job's `python` is the cluster's: here, this environment's (as a cluster image has moaa installed)
    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
}


def _job_ids(address: str) -> set[str]:
    """The cluster's submission ids, asked in a process of its own (with the cluster's token)."""
    code = (
        "import json, sys; from ray.job_submission import JobSubmissionClient as C; "
        "print(json.dumps([j.submission_id for j in C(sys.argv[1]).list_jobs()]))"
    )
    proc = subprocess.run([sys.executable, "-c", code, address], env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A Ray head node of its own (GCS, raylet, dashboard with the job API) on loopback, with token
    authentication; every process it started is killed afterwards, found by its temp dir (other Ray clusters
    on the machine are left alone)."""
    temp = tmp_path_factory.mktemp("rayhead")
    t0 = time.time()
    port, dashboard = _free_port(), _free_port()
    env = ENV
    # Every port of its own, so that another Ray on the machine (a test's local cluster) cannot collide.
    ports = {
        "dashboard-agent-listen-port": _free_port(),
        "dashboard-agent-grpc-port": _free_port(),
        "metrics-export-port": _free_port(),
        "runtime-env-agent-port": _free_port(),
        "ray-client-server-port": _free_port(),
    }
    start = [
        sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={port}",
        "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
        "--include-dashboard=true", "--num-cpus=2", f"--temp-dir={temp}", "--disable-usage-stats",
        *(f"--{k}={v}" for k, v in ports.items()),
    ]  # fmt: skip
    proc = subprocess.run(start, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 120
    while time.time() < deadline:  # the job API answers a little after `ray start` returns
        try:
            _job_ids(address)
            break
        except AssertionError:
            time.sleep(2)
    yield address
    for p in _ray_processes_since(t0):
        p.kill()
    psutil.wait_procs(_ray_processes_since(t0), timeout=30)


def _submit(address: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*MOAA, *args, "--address", address], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900
    )


@pytest.mark.slow
def test_jobs_run_on_the_cluster_and_a_repeated_submit_starts_no_twin(ray_head, tmp_path):
    runs = tmp_path / "runs"  # absolute: a submitted job refuses a relative runs_dir
    common = ["run_id=sub1", f"runs_dir={runs}"]
    prep = _submit(ray_head, "prepare", "--config", "configs/prepare/tiny.yaml", *common)
    assert prep.returncode == 0, prep.stdout + prep.stderr
    assert "prepare: 45 prompts" in prep.stdout  # the job's own line, streamed back
    gen = _submit(ray_head, "generate_sft", "--config", "configs/generate_sft/tiny.yaml", *common)
    assert gen.returncode == 0, gen.stdout + gen.stderr
    rows = pq.read_table(runs / "sub1/generate_sft/data").to_pylist()
    assert len(rows) == 45 and len({r["prompt_id"] for r in rows}) == 45
    before = _job_ids(ray_head)
    assert {"moaa-prepare-sub1", "moaa-generate_sft-sub1"} <= before
    again = _submit(ray_head, "generate_sft", "--config", "configs/generate_sft/tiny.yaml", *common)
    assert again.returncode == 0 and "already succeeded" in again.stdout
    assert _job_ids(ray_head) == before  # no twin
    # the run's outputs hold no credentials: not the cluster token the jobs ran with, nothing secret-looking
    assert scan_for_secrets([runs], keys=False) == []
    assert not [f for f in runs.rglob("*") if f.is_file() and TOKEN.encode() in f.read_bytes()]


@pytest.mark.slow
def test_a_failed_job_exits_non_zero_and_the_next_submit_is_a_new_attempt(ray_head, tmp_path):
    bad = ["run_id=sub2", f"runs_dir={tmp_path}", "layers=1"]  # refused by the job's config check
    first = _submit(ray_head, "generate_sft", "--config", "configs/generate_sft/tiny.yaml", *bad)
    assert first.returncode == 1 and "layers must be >= 2" in first.stdout + first.stderr
    second = _submit(
        ray_head, "generate_sft", "--config", "configs/generate_sft/tiny.yaml", *bad, "--no-wait"
    )
    assert second.returncode == 0 and second.stdout.strip() == "moaa-generate_sft-sub2-a2"
