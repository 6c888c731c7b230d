"""Every script of bench/ runs end to end at a tiny size, so that an interface change that breaks one fails
here, not when someone next measures (one did: the stub engine had fallen behind the engine's interface).
The numbers at these sizes mean nothing; the measurements are `make bench` (the README's performance table).
Each script writes its JSON to MOAA_BENCH_OUT, a temporary folder, never over bench/out/."""

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"

# script -> (arguments for a tiny run, the JSON it writes or None, a line its output must hold)
SMOKE = {
    "generate_throughput.py": (
        ["--model", "tiny", "--prompts", "4", "--rounds", "1", "--rows", "40", "80"],
        None,
        "peak memory ratio 80/40 rows",
    ),
    "train_throughput.py": (["--rounds", "1", "--steps", "2"], "train_throughput.json", "ratio (ray / plain"),
    "judge_throughput.py": (["--prompts", "2", "--n", "2"], "judge_throughput.json", "moa"),
    "evaluate_throughput.py": (
        ["--model", "tiny", "--rounds", "1", "mt_bench=null", "alpaca_eval=null", "ifeval=null"],
        "evaluate_throughput.json",
        "moa",
    ),
    "pipeline_overhead.py": (["stages=[prepare]"], "pipeline_overhead.json", "overhead"),
}


def test_every_bench_script_has_a_smoke_run():
    assert sorted(SMOKE) == sorted(p.name for p in (ROOT / "bench").glob("*.py"))


def test_the_stub_engine_has_the_engines_interface():
    """generate_throughput's scale part replaces the engines with a stub: same methods, same signatures."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import generate_throughput
    finally:
        sys.path.remove(str(ROOT / "bench"))
    from moaa.engine.vllm import _EngineActor

    def interface(cls):
        return {
            n: inspect.signature(f) for n, f in vars(cls).items() if callable(f) and not n.startswith("_")
        }

    assert interface(generate_throughput.StubEngine) == interface(_EngineActor)


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason="evaluate and pipeline benches read ../shared/data")
@pytest.mark.parametrize("script", sorted(SMOKE))
def test_the_bench_runs_at_a_tiny_size(script, tmp_path):
    args, written, line = SMOKE[script]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    kept = ROOT / "bench" / "out"
    before = {p: p.stat().st_mtime_ns for p in kept.rglob("*")} if kept.is_dir() else {}
    proc = subprocess.run(
        [sys.executable, f"bench/{script}", *args],
        cwd=ROOT,
        env={**env, "MOAA_BENCH_OUT": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=1200,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert line in proc.stdout, proc.stdout[-4000:]
    if written:
        assert json.loads((tmp_path / written).read_text())
    assert ({p: p.stat().st_mtime_ns for p in kept.rglob("*")} if kept.is_dir() else {}) == before
