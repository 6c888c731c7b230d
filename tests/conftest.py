import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from moaa.embedded.tiny import make_tiny_models

ROOT = Path(__file__).resolve().parent.parent

# vLLM's CPU backend reads its KV cache size from the environment; the tiny models need very little.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

# Every process the suite starts inherits this mark (Ray's daemons too, through `ray start` or ray.init): at
# the end, one still alive is a leak, whoever its parent is now (an orphaned gcs_server has none).
SESSION_MARK = ("MOAA_TEST_SESSION", uuid.uuid4().hex)
os.environ[SESSION_MARK[0]] = SESSION_MARK[1]


def processes_of_this_session() -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and p.environ().get(SESSION_MARK[0]) == SESSION_MARK[1]:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def pytest_sessionfinish(session, exitstatus):
    """No process the suite started outlives it: the in-process Ray is shut down, then whatever is still
    running after a grace period fails the session (and is killed, so that it cannot trip a later Ray)."""
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()
    deadline = time.time() + 30
    while (left := processes_of_this_session()) and time.time() < deadline:
        time.sleep(1)
    if left:
        names = [" ".join(p.cmdline()[:3]) for p in left if p.is_running()]
        for p in left:
            p.kill()
        print(f"\nthe suite left {len(left)} process(es) running (killed now): {names}", file=sys.stderr)
        session.exitstatus = 1


# ----------------------------------------------------------------- one Ray and shared engines for the session
# In-process tests share one local Ray and keep the engine pools they start (a tiny engine takes ~15 s to
# start on 2 cores, mostly importing vLLM): a test that needs the same engine settings as an earlier one gets
# the same pools. A module that needs a Ray of its own (a cluster of `ray start` nodes, S3 settings its
# workers must inherit) calls release_ray() first. Logical CPUs: enough for the engines' and the training
# workers' requests at once, with room left for a killed engine's restart (the engine-kill test: with too
# few, the restart waits for resources forever); the engines idle between tests.
RAY_CPUS = 8
MAX_POOLS = 5  # engines kept at most (each holds a 1 GiB KV cache); the least recently used go first


class SharedEngines:
    def __init__(self) -> None:
        self.pools: dict = {}  # engine key -> pool, least recently used first

    def get(self, models: list) -> dict:
        """Pools for exactly ``models`` (by engine key), started only where no test started them yet."""
        from moaa.engine.settings import engine_key
        from moaa.engine.vllm import start_pools, stop_pools

        wanted = {engine_key(m): m for m in models}
        for key in [k for k in self.pools if k in wanted]:
            self.pools[key] = self.pools.pop(key)  # most recently used last
        missing = [m for k, m in wanted.items() if k not in self.pools]
        old = [k for k in self.pools if k not in wanted][: max(0, len(self.pools) + len(missing) - MAX_POOLS)]
        stop_pools({k: self.pools.pop(k) for k in old})
        if missing:
            self.pools.update(start_pools(missing))
        return {k: self.pools[k] for k in wanted}

    def clear(self) -> None:
        self.pools = {}  # their actors die with the Ray they ran in


ENGINES = SharedEngines()


def release_ray() -> None:
    """Shut the session's in-process Ray down (its engines with it), for a test that needs its own."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ENGINES.clear()


@pytest.fixture(scope="module")
def ray_local():
    """The session's local Ray, started on first use (again after a module released it)."""
    import ray

    if not ray.is_initialized():
        ENGINES.clear()
        ray.init(num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=True)
    yield


@pytest.fixture(scope="module")
def engines(ray_local) -> SharedEngines:
    return ENGINES


# Gemma-2's chat template (google/gemma-2-9b-it, abridged): no system role
NO_SYSTEM_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """The three tiny local models (tiny-qwen2-a, tiny-llama-b, tiny-qwen2-c), built once per session."""
    out = tmp_path_factory.mktemp("models")
    make_tiny_models(out)
    return out


# ----------------------------------------------------------------- the one tiny pipeline run of the session
# `make demo` as the README says, on a fresh copy of the repository, with two swaps that keep it to minutes:
# the tiny models' pipeline config and fewer prompts. The walkthrough, the pipeline's and the console's tests
# all read this one finished run (tests/test_walkthrough.py, tests/test_pipeline.py).
DEMO_SWAP = (
    "DEMO_CONFIG=configs/pipeline/tiny.yaml "
    "DEMO_ARGS='prepare.ultrafeedback.subset=8 prepare.ultrachat.subset=2 evaluate.mt_bench.per_category=1 "
    "evaluate.arena_hard.limit=1 evaluate.alpaca_eval.limit=1'"
)
# The stages run alone (runs/steps) take the same few prompts: prepare's tiny config keeps all 45 samples
# (it is the embedded default), on which the tiny generate_dpo alone took ~150 s.
STEPS_SWAP = "ultrafeedback.subset=8 ultrachat.subset=2 rows_per_shard=4"
# No network: any HTTP(S) request goes to a closed port on this machine, the hub is offline.
OFFLINE = {
    **{k: "http://127.0.0.1:9" for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")},
    "no_proxy": "",
    "NO_PROXY": "",
    "HF_HUB_OFFLINE": "1",
}


def fresh_copy(dest: Path) -> Path:
    """The repository's files as a fresh clone has them (tracked, plus new files git does not ignore), with
    the test run's installed .venv linked in: the install is what runs these tests."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        src = ROOT / name
        if src.is_file() and not src.is_symlink():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    (dest / ".venv").symlink_to(Path(sys.prefix))
    return dest


def readme_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.pop("VLLM_CPU_KVCACHE_SPACE", None)  # the shipped configs set what they need
    return {**env, **OFFLINE}


def readme_command(command: str) -> str:
    """A README command as the tests run it: `make` without its install step (the install is the one running
    the tests), `make demo` with DEMO_SWAP, each `configs/<job>/demo.yaml` as `configs/<job>/tiny.yaml`, and
    jobs.prepare with STEPS_SWAP."""
    import re

    if command.startswith("make "):
        command = command.replace("make ", "make -o .venv/.moaa-installed ", 1)
        if command.endswith(" demo"):
            command += " " + DEMO_SWAP
    if " -m jobs.prepare " in command:
        command += " " + STEPS_SWAP
    return re.sub(r"(configs/\w+/)demo\.yaml", r"\1tiny.yaml", command)


def run_readme(repo: Path, command: str, timeout: int = 900) -> subprocess.CompletedProcess:
    command = readme_command(command)
    proc = subprocess.run(
        command, shell=True, cwd=repo, env=readme_env(), capture_output=True, text=True, timeout=timeout
    )
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, f"README command failed: {command}\n{tail}"
    assert "Traceback" not in proc.stderr, f"{command} printed a traceback:\n{tail}"
    return proc


@dataclass
class DemoRun:
    repo: Path  # the fresh copy it ran in
    proc: subprocess.CompletedProcess  # `make demo`'s console

    @property
    def run(self) -> Path:
        return self.repo / "runs" / "demo"


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> DemoRun:
    repo = fresh_copy(tmp_path_factory.mktemp("walkthrough") / "moaa")
    return DemoRun(repo, run_readme(repo, "make demo", timeout=1500))
