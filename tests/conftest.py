import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from moaa.embedded.tiny import make_tiny_models

ROOT = Path(__file__).resolve().parent.parent

# vLLM's CPU backend reads its KV cache size from the environment; the tiny models need very little.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


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
    the tests), `make demo` with DEMO_SWAP, each `configs/<job>/demo.yaml` as `configs/<job>/tiny.yaml`."""
    import re

    if command.startswith("make "):
        command = command.replace("make ", "make -o .venv/.moaa-installed ", 1)
        if command.endswith(" demo"):
            command += " " + DEMO_SWAP
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
