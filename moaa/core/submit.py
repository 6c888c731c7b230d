"""``moaa submit``: run a job on a Ray cluster you do not log into, through Ray's job API.

    moaa submit pipeline --address http://127.0.0.1:8265 --config configs/pipeline/paper.yaml run_id=moaa1 \
        runs_dir=s3://bucket/moaa
    moaa submit generate_sft --address $RAY_ADDRESS run_id=exp1 runs_dir=gs://bucket/moaa --no-wait

A thin wrapper of ``ray.job_submission.JobSubmissionClient`` (no scheduler of its own): the entrypoint is
``python -m jobs.<job> [--config FILE] [key=value ...]`` with this folder as the working dir; the submission
id is derived from the job, run id and round (``moaa-<job>-<run_id>[-r<round>]``), so submitting the same run
again never starts a twin: a pending or running one is reattached to, a succeeded one is reported (exit 0),
and a failed or stopped one gets a new attempt (``...-a2``, ``-a3``), which resumes from what the run folder
holds. Logs stream to the terminal; the exit code is the job's status (0 succeeded, 1 failed or stopped).
Ctrl-C detaches and leaves the job running.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from moaa.core.config import UserError

# Not uploaded with the working dir: the local environment, models and outputs (the cluster has its own).
EXCLUDES = [".venv", ".git", "models", "runs", "bench/out", "*.egg-info", "__pycache__"]
ACTIVE = ("PENDING", "RUNNING")


class SubmitError(UserError, RuntimeError):
    """A submission that cannot be made; the message says why and what to do."""


def jobs_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "jobs"


def known_jobs() -> list[str]:
    return sorted(p.stem for p in jobs_dir().glob("*.py") if p.stem not in {"__init__", "cli"})


def run_fields(config: str | None, overrides: list[str]) -> dict[str, Any]:
    """run_id and round as the job will see them: the config file's, then the overrides'."""
    fields: dict[str, Any] = {"run_id": "demo", "round": 1}
    if config:
        data = yaml.safe_load(Path(config).read_text()) or {}
        fields.update({k: data[k] for k in fields if k in data})
    for ov in overrides:
        key, _, value = ov.partition("=")
        if key in fields:
            fields[key] = yaml.safe_load(value)
    return fields


def submission_id(job: str, run_id: str, round: int = 1) -> str:
    """``moaa-<job>-<run_id>[-r<round>]``, with characters Ray's ids do not take replaced by '-'."""
    base = f"moaa-{job}-{run_id}" + (f"-r{round}" if round != 1 else "")
    return re.sub(r"[^A-Za-z0-9_-]", "-", base)


def entrypoint(job: str, config: str | None, overrides: list[str]) -> str:
    import shlex

    parts = ["python", "-m", f"jobs.{job}", *(["--config", config] if config else []), *overrides]
    return " ".join(shlex.quote(p) for p in parts)


def attempts(client: Any, base: str) -> dict[str, str]:
    """Every earlier submission of this run (``base`` and its ``-a<k>`` attempts) -> its status."""
    pattern = re.compile(rf"^{re.escape(base)}(-a[0-9]+)?$")
    return {
        j.submission_id: str(j.status.value if hasattr(j.status, "value") else j.status)
        for j in client.list_jobs()
        if j.submission_id and pattern.match(j.submission_id)
    }


def choose(base: str, earlier: dict[str, str]) -> tuple[str, str]:
    """(action, submission id): 'attach' to a pending/running attempt, 'done' when the last one succeeded,
    else 'submit' a new attempt (the base id, or the next ``-a<k>``)."""
    active = [s for s, status in earlier.items() if status in ACTIVE]
    if active:
        return "attach", active[0]
    if not earlier:
        return "submit", base

    def number(s: str) -> int:
        return int(s.rsplit("-a", 1)[1]) if s != base else 1

    last = max(earlier, key=number)
    if earlier[last] == "SUCCEEDED":
        return "done", last
    return "submit", f"{base}-a{number(last) + 1}"


async def _stream(client: Any, sid: str) -> None:
    async for chunk in client.tail_job_logs(sid):
        print(chunk, end="", flush=True)


def follow(client: Any, sid: str) -> int:
    """Stream the job's logs until it ends; its exit code: 0 succeeded, 1 otherwise."""
    try:
        asyncio.run(_stream(client, sid))
    except KeyboardInterrupt:
        print(
            f"\n[moaa submit] detached; {sid} keeps running (moaa submit again to reattach)", file=sys.stderr
        )
        return 130
    status = str(client.get_job_status(sid).value)
    print(f"[moaa submit] {sid}: {status}", file=sys.stderr)
    return 0 if status == "SUCCEEDED" else 1


def send(client: Any, timeout_s: float = 120, **job: Any) -> None:
    """``client.submit_job``, sent again while the cluster answers that it cannot take jobs yet (a head just
    started has no job agent for a while: "No available agent to submit job, please try again later")."""
    deadline = time.time() + timeout_s
    while True:
        try:
            client.submit_job(**job)
            return
        except RuntimeError as e:
            if "try again later" not in str(e) or time.time() > deadline:
                raise SubmitError(f"the cluster refused the job: {e}") from None
            time.sleep(2)


def use_token() -> None:
    """Ray's job API asks for the cluster's token when token authentication is on (the default of a new
    cluster): use one when this machine has it (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token),
    as Ray's own CLI does, unless RAY_AUTH_MODE says otherwise."""
    has_token = (
        os.environ.get("RAY_AUTH_TOKEN")
        or os.environ.get("RAY_AUTH_TOKEN_PATH")
        or (Path.home() / ".ray" / "auth_token").is_file()
    )
    if "RAY_AUTH_MODE" not in os.environ and has_token:
        os.environ["RAY_AUTH_MODE"] = "token"


def submit(
    job: str,
    address: str,
    config: str | None = None,
    overrides: list[str] | None = None,
    wait: bool = True,
    working_dir: str = ".",
) -> int:
    """Submit (or reattach to) ``job`` for its run; returns the exit code."""
    from ray.job_submission import JobSubmissionClient

    overrides = list(overrides or [])
    if job not in known_jobs():
        raise SubmitError(f"unknown job {job!r}; one of {', '.join(known_jobs())}")
    if config and not Path(config).is_file():
        raise SubmitError(f"--config {config}: no such file (it is uploaded with the working dir)")
    bad = [ov for ov in overrides if "=" not in ov]
    if bad:
        raise SubmitError(f"override {bad[0]!r} is not of the form key=value (e.g. run_id=exp1)")
    fields = run_fields(config, overrides)
    base = submission_id(job, str(fields["run_id"]), int(fields["round"]))
    use_token()
    try:
        client = JobSubmissionClient(address)
    except Exception as e:  # connection refused, not a Ray dashboard, ...
        raise SubmitError(
            f"cannot reach Ray's job API at {address!r}: {e}. Give the dashboard address "
            "(http://<head>:8265; e.g. through `kubectl port-forward`) and, for a cluster with token "
            "authentication, its token (RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)"
        ) from None
    action, sid = choose(base, attempts(client, base))
    if action == "done":
        print(f"[moaa submit] {sid} already succeeded for run {fields['run_id']!r}: nothing to do")
        return 0
    if action == "attach":
        print(f"[moaa submit] {sid} is already running for this run: attaching to its logs", file=sys.stderr)
    else:
        send(
            client,
            entrypoint=entrypoint(job, config, overrides),
            submission_id=sid,
            runtime_env={"working_dir": working_dir, "excludes": EXCLUDES},
            metadata={"moaa_job": job, "run_id": str(fields["run_id"])},
        )
        print(f"[moaa submit] submitted {sid}: {entrypoint(job, config, overrides)}", file=sys.stderr)
    if not wait:
        print(sid)
        return 0
    return follow(client, sid)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="moaa submit", description="Submit a moaa job to a Ray cluster (Ray's job API)."
    )
    ap.add_argument("job", help="job name: " + ", ".join(known_jobs()))
    ap.add_argument("--address", required=True, help="Ray dashboard address, e.g. http://127.0.0.1:8265")
    ap.add_argument("--config", help="the job's YAML (a path inside this folder, uploaded with it)")
    ap.add_argument("--no-wait", action="store_true", help="print the submission id and return")
    ap.add_argument("--working-dir", default=".", help="folder uploaded as the job's working dir")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, as for the job itself")
    args = ap.parse_intermixed_args(argv)  # options may follow the key=value overrides
    try:
        code = submit(
            args.job.replace("-", "_"),
            args.address,
            args.config,
            args.overrides,
            wait=not args.no_wait,
            working_dir=args.working_dir,
        )
    except UserError as e:
        print(f"moaa submit: error: {e}", file=sys.stderr)
        code = 2
    raise SystemExit(code)


if __name__ == "__main__":
    main()
