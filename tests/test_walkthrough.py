"""The README's walkthrough, run as a new user would: its commands, read out of README.md and run from the
root of a fresh copy of the repository (relative paths, shipped configs), each exit code and each output
checked against its contract. A README change that breaks a command breaks this test.

Two swaps keep it to minutes on 2 cores, both with the same jobs, paths and chaining: `make demo` runs the
pipeline on `configs/pipeline/tiny.yaml` (the tiny models; the embedded SmolLM2 takes ~10 minutes) with fewer
prompts, and every `configs/<job>/demo.yaml` becomes `configs/<job>/tiny.yaml` (prepare with fewer prompts,
conftest.STEPS_SWAP); the demo configs' content is checked elsewhere (they equal the class defaults;
tests/test_smollm.py runs the model). Nothing else is swapped: `make demo` runs as written on the shipped
data alone, with every proxy pointed at a closed port and the hub offline, so a step that reached for the
network would fail here; and its console, read as a file, stays short (at most DEMO_MAX_LINES lines: Ray's,
Ray Data's, Ray Train's and vLLM's logs go to the run folder)"""

import json
import re
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import run_readme

from moaa.core import schemas
from moaa.core.stage import Summary

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

# What each job leaves in runs/, checked after the command that runs it: (path, schema or None). The pipeline
# (make demo) writes run "demo", the stages run alone write run "steps".
OUTPUTS = {
    "pipeline": [
        ("demo/pipeline/summary.json", None),
        ("demo/report.html", None),
        ("demo/generate_sft/data", "sft"),
        ("demo/round-2/generate_sft/data", "sft"),
        ("demo/round-2/generate_dpo/data", "preference"),
        ("demo/round-2/train_dpo/model/config.json", None),
        ("demo/round-2/evaluate/results.parquet", "eval_results"),
    ],
    "prepare": [("steps/prepare/prompts", "prompts"), ("steps/prepare/quarantine.parquet", "quarantine")],
    "generate_sft": [("steps/generate_sft/data", "sft")],
    "train_sft": [("steps/train_sft/model/config.json", None), ("steps/train_sft/summary.json", None)],
    "generate_dpo": [("steps/generate_dpo/data", "preference")],
    "train_dpo": [("steps/train_dpo/model/config.json", None), ("steps/train_dpo/summary.json", None)],
    "evaluate": [
        ("steps/evaluate/results.parquet", "eval_results"),
        ("steps/evaluate/answers/mt_bench/train_dpo-r1", "eval_answers"),
        ("steps/evaluate/judgments/arena_hard/train_dpo-r1", "eval_judgments"),
    ],
    "judge_eval": [("steps/judge_eval/moa", "preference"), ("steps/judge_eval/jury", "preference")],
    "report": [("steps/report.html", None), ("steps/report.md", None)],
}
DEMO_MAX_LINES = 60


def walkthrough_commands(readme: str) -> list[str]:
    """The lines of the first bash block after 'The whole recipe on the embedded default', comments cut."""
    start = readme.index("The whole recipe on the embedded default")
    block = re.search(r"```bash\n(.*?)```", readme[start:], re.S)
    assert block, "README: no bash block after the walkthrough's introduction"
    lines = [line.split("#", 1)[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line]


def jobs_table(readme: str) -> list[str]:
    """The job names of the README's jobs table, in order (rows like '| 2 | `train_sft` | ...')."""
    return re.findall(r"^\| [0-9-]+ \| `(\w+)` \|", readme, re.M)


def make_target_jobs(makefile: str, target: str) -> list[str]:
    recipe = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe, f"Makefile has no {target} recipe"
    return re.findall(r"-m jobs\.(\w+)", recipe.group(1))


def jobs_of(command: str) -> list[str]:
    if command.startswith("make "):
        return make_target_jobs((ROOT / "Makefile").read_text(), command.split()[1])
    return re.findall(r"-m jobs\.(\w+)", command)


def check_outputs(job: str, runs: Path) -> None:
    for rel, schema in OUTPUTS[job]:
        path = runs / rel
        assert path.exists(), f"{job}: {path} missing"
        if schema is None:
            continue
        files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
        assert files, f"{job}: no Parquet files in {path}"
        for f in files:
            schemas.validate(pq.read_schema(f), schema, where=str(f))
        if schema != "quarantine":
            assert sum(pq.read_metadata(f).num_rows for f in files) > 0, f"{job}: {path} holds no rows"


def test_readme_walkthrough_covers_every_job_of_the_jobs_table():
    readme = (ROOT / "README.md").read_text()
    commands = walkthrough_commands(readme)
    walked = [job for c in commands for job in jobs_of(c)]
    assert walked == jobs_table(readme) == list(OUTPUTS)


def test_readme_walkthrough_runs_as_written_on_a_fresh_copy(demo_run):
    """`make demo` ran in the session's fixture (conftest.demo_run: a fresh copy, no network); every other
    command of the walkthrough runs here, in the same copy, in order."""
    repo = demo_run.repo
    commands = walkthrough_commands((ROOT / "README.md").read_text())
    runs = repo / "runs"

    def run(command: str) -> subprocess.CompletedProcess:
        return demo_run.proc if command == "make demo" else run_readme(repo, command)

    for command in commands:
        proc = run(command)
        for job in jobs_of(command):
            check_outputs(job, runs)
        if command == "make demo":
            console = (proc.stdout + proc.stderr).splitlines()
            assert len(console) <= DEMO_MAX_LINES, "\n".join(console)
            # moaa's lines: each stage's start and end, the scores, the caveat, where the logs and report are
            for r, name in [(1, "prepare"), (1, "generate_sft"), (2, "evaluate")]:
                assert f"[pipeline] round {r}/2: {name}" in proc.stdout
                assert re.search(rf"^  round {r} {name} +\d+ rows", proc.stdout, re.M), proc.stdout
            assert "report: " in proc.stdout and "\nnote: " in proc.stdout  # the judge's caveat
            assert not re.search(
                r"logging_progress|core_worker|_EngineActor|TrainController", proc.stdout + proc.stderr
            )
            logs = re.search(r"^\[moaa\] logs \(.*\): (\S+)", proc.stdout, re.M)
            assert logs, proc.stdout
            logs = Path(logs.group(1))
            assert logs.parent == runs / "demo" / "logs" and (logs / "driver.log").is_file()
            # Ray's session logs were copied there at exit: the engines' and training workers' output
            ray_logs = logs / "ray"
            assert ray_logs.is_dir() and not ray_logs.is_symlink()
            # Ray's log monitor moves an ended worker's files to old/ when many files are open (CI saw it)
            worker_out = "".join(p.read_text(errors="replace") for p in ray_logs.rglob("worker-*.out"))
            assert "[train_sft] step 1/" in worker_out

    # Every stage's summary has the common keys; running the walkthrough again redoes nothing and writes
    # nothing: each stage finds its finished work and returns the stored summary.
    for job in OUTPUTS:
        if job == "report":  # not a stage: it writes no summary
            continue
        folder = runs / "demo" / "pipeline" if job == "pipeline" else runs / "steps" / job
        summary = json.loads((folder / "summary.json").read_text())
        assert set(summary) == set(Summary.model_fields) and summary["stage"] == job
    before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in runs.rglob("*")}
    for command in commands:
        proc = run_readme(repo, command)
        assert proc.stdout.count("nothing to do") == len(jobs_of(command)), proc.stdout[-2000:]
    assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in runs.rglob("*")} == before
