"""The stage contract every job follows, written once (torchtune's recipes share one interface the same way):

- a config that extends ``StageConfig`` (run id, runs dir, round, output folder, Ray address) and says
  which of its settings decide the output (``fingerprint_data``, hashed by ``fingerprint``);
- a ``Stage`` whose ``run(cfg) -> Summary`` is the same for every stage: a finished folder returns its
  stored summary and writes nothing (a folder holding another configuration's work is refused); else the
  fingerprint is computed once, the stage's own ``work`` runs, and its ``Outcome`` becomes ``summary.json``
  and a complete manifest, in that order;
- the stage's numbers are a typed ``StageMetrics`` model: the pipeline's brief, the report and the job's
  last line read fields, not string keys.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import Field, ValidationError

from moaa import __version__
from moaa.core import layout, manifests, storage
from moaa.core.config import Config, OutputPath, UserError, hash_data


class EmptyResultError(UserError, RuntimeError):
    """A stage whose every row failed: there is nothing to pass on. ``summary`` is what the run did (it is
    not written: the stage stays unfinished), for a caller that measures the work rather than uses it."""

    def __init__(self, message: str, summary: Summary | None = None):
        super().__init__(message)
        self.summary = summary


class MetricsError(UserError, ValueError):
    """A stored summary whose metrics do not fit the stage's metrics model."""


class StageConfig(Config):
    """The run fields every stage config shares."""

    run_id: str = Field("demo", description="Run name: outputs go to <runs_dir>/<run_id>/...")
    runs_dir: OutputPath = Field(
        "runs", description="Folder or URI (s3://, gs://) holding run folders; relative: to where you run."
    )
    round: int = Field(
        1,
        ge=1,
        description="Self-improvement round: round 1 writes <run_id>/<stage>, round r <run_id>/round-r.",
    )
    output_dir: OutputPath | None = Field(
        None, description="Output folder; null: where the run layout puts this stage (moaa/core/layout.py)."
    )
    ray_address: str | None = Field(
        None, description="Ray cluster address; null: RAY_ADDRESS or a local Ray."
    )
    verbose: bool = Field(
        False,
        description="Show Ray's, Ray Data's, Ray Train's and vLLM's logs on the console (--verbose); false: "
        "they go to <run>/logs/ and the console shows moaa's lines and progress.",
    )

    stage: ClassVar[str] = ""

    def out_dir(self) -> str:
        return self.output_dir or layout.stage_dir(self.runs_dir, self.run_id, self.stage, self.round)

    def fingerprint(self) -> str:
        """Hash of the settings that decide the output (not resources, batch sizes or where it goes)."""
        return hash_data(self.fingerprint_data())

    def fingerprint_data(self) -> Any:
        """The settings that decide the output, as JSON-able data (what ``fingerprint`` hashes)."""
        raise NotImplementedError

    def engine_models(self) -> list[Any]:
        """The ``ModelConfig`` of every engine the stage runs (none for a stage without engines)."""
        return []


class Price(Config):
    prompt_usd_per_mtok: float = Field(0.0, ge=0, description="USD per million prompt tokens.")
    completion_usd_per_mtok: float = Field(0.0, ge=0, description="USD per million completion tokens.")


class TokenCount(Config):
    prompt_tokens: int = Field(0, description="Prompt tokens sent.")
    completion_tokens: int = Field(0, description="Tokens generated.")
    calls: int = Field(0, description="Engine requests (a request with n samples is one).")
    usd: float = Field(0.0, description="Estimate from the config's prices (0 without one).")


class Summary(Config):
    """What every stage's ``run`` returns and writes to ``summary.json``."""

    stage: str = Field(description="Stage name (prepare, generate_sft, train_sft, ...).")
    run_id: str = Field(description="Run name.")
    round: int = Field(description="Self-improvement round.")
    rows: int = Field(
        description="Rows the stage passes on (prompts, SFT rows, pairs' prompts, rows trained)."
    )
    errors: int = Field(
        description="Rows that failed: kept in the output with their error (generate_*, judge_eval), set "
        "aside in the quarantine (prepare) or skipped for their error (train_*)."
    )
    wall_s: float = Field(description="Wall time of the invocation that finished the stage.")
    tokens: dict[str, TokenCount] = Field(
        default_factory=dict, description="Engine tokens per 'role/model' over all of the stage's work."
    )
    usd: float = Field(0.0, description="Total cost estimate.")
    outputs: dict[str, str] = Field(description="What the stage wrote, by name (data, model, ...).")
    metrics: dict[str, Any] = Field(default_factory=dict, description="The stage's own numbers.")
    config_hash: str = Field(description="Fingerprint of the settings that decided the output.")
    moaa_version: str = Field(description="moaa version that wrote it.")


def finished(cfg: StageConfig, fingerprint: str | None = None) -> Summary | None:
    """The stored summary when ``cfg``'s folder holds this configuration's finished work, else None. Another
    configuration's work there is refused (``manifests.ResumeError``)."""
    out = cfg.out_dir()
    manifest = manifests.load_manifest(out)
    summary_path = storage.join(out, manifests.SUMMARY)
    if manifest is None or manifest.get("status") != "complete" or not storage.exists(summary_path):
        return None
    manifests.check_same_config(out, manifest, cfg.stage, fingerprint or cfg.fingerprint())
    print(f"[{cfg.stage}] {out} is complete with this config: nothing to do (another run_id starts over)")
    return Summary.model_validate(storage.read_json(summary_path))


def complete(
    cfg: StageConfig, manifest: dict[str, Any], result: Summary, usable: int, why: str | None = None
) -> Summary:
    """Write ``summary.json``, then mark the manifest complete (the order a killed job can resume from).
    ``usable``: the rows the next stage can use; none is an error (``why`` says what happened)."""
    out = cfg.out_dir()
    if usable <= 0:
        # Nothing to pass on: the job fails (and stays unfinished) rather than hand the next stage nothing.
        why = why or f"{result.errors} of {result.rows} row(s) failed or were set aside"
        raise EmptyResultError(
            f"{cfg.stage}: nothing to pass on: {why} (see {', '.join(result.outputs.values())}); fix the "
            f"cause, then rerun with another run_id or after deleting {out}",
            summary=result,
        )
    storage.write_json(storage.join(out, manifests.SUMMARY), result.model_dump(mode="json"))
    manifests.finish_manifest(out, manifest, **result.outputs)
    return result


def add_tokens(
    total: dict[str, dict[str, int]], more: dict[str, dict[str, int]]
) -> dict[str, dict[str, int]]:
    """Sum per-'role/model' token counts (in place into ``total``, which is returned)."""
    for key, t in more.items():
        acc = total.setdefault(key, {})
        for k, v in t.items():
            acc[k] = acc.get(k, 0) + v
    return total


def priced(
    tokens: dict[str, dict[str, int]], prices: dict[str, Price]
) -> tuple[dict[str, TokenCount], float]:
    """Token counts with their USD estimate; prices are keyed by model display name (the part after '/')."""
    out: dict[str, TokenCount] = {}
    for key, t in sorted(tokens.items()):
        price = prices.get(key.split("/", 1)[-1])
        usd = (
            (
                (t.get("prompt_tokens", 0) * price.prompt_usd_per_mtok)
                + (t.get("completion_tokens", 0) * price.completion_usd_per_mtok)
            )
            / 1e6
            if price
            else 0.0
        )
        out[key] = TokenCount(
            prompt_tokens=int(t.get("prompt_tokens", 0)),
            completion_tokens=int(t.get("completion_tokens", 0)),
            calls=int(t.get("calls", 0)),
            usd=usd,
        )
    return out, sum(t.usd for t in out.values())


def token_counter() -> defaultdict[str, dict[str, int]]:
    return defaultdict(lambda: {"prompt_tokens": 0, "completion_tokens": 0, "calls": 0})


def num(v: Any, digits: int = 2) -> str:
    """A number for a table: ints with thousands separators, floats with ``digits`` decimals, None as '-'."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


# ------------------------------------------------------------------------------------------- the base

M = TypeVar("M", bound="StageMetrics")
C = TypeVar("C", bound=StageConfig)


class StageMetrics(Config):
    """A stage's own numbers: ``summary.json``'s ``metrics``, as typed fields. Every field has a default so
    that a summary written by an older moaa (or a partial one) still reads, its missing numbers as null."""


class ShardMetrics(StageMetrics):
    """The numbers every stage that processes shards through engines reports."""

    shards: int = Field(0, description="Shards in the output (committed by this or an earlier call).")
    shards_this_run: int = Field(0, description="Shards committed by the call that finished the stage.")
    engine_retries: int = Field(0, description="Batches sent again after an engine failed.")


@dataclass
class Work:
    """One invocation of a stage: its config, the fingerprint (computed once), its folder, its start."""

    cfg: StageConfig
    fingerprint: str
    out: str
    started: float = field(default_factory=time.time)

    def provenance(self, **extra: Any) -> dict[str, Any]:
        """The columns every output row carries to say which run and settings wrote it."""
        return {
            **extra,
            "run_id": self.cfg.run_id,
            "config_hash": self.fingerprint,
            "moaa_version": __version__,
        }

    def open_manifest(self, other_work: bool = False) -> dict[str, Any]:
        """Open (or reopen, to resume) the stage's manifest; see ``manifests.start_manifest``."""
        cfg = self.cfg
        return manifests.start_manifest(
            self.out, cfg.stage, cfg.run_id, self.fingerprint, cfg.model_dump(mode="json"), other_work
        )

    def wall_s(self) -> float:
        return time.time() - self.started


@dataclass
class Outcome:
    """What a stage's ``work`` hands back; ``Stage.run`` turns it into the summary."""

    manifest: dict[str, Any]
    rows: int
    errors: int
    outputs: dict[str, str]
    metrics: StageMetrics
    tokens: dict[str, dict[str, int]] = field(default_factory=dict)
    prices: dict[str, Price] = field(default_factory=dict)
    # The rows the next stage can use (default: rows - errors); none is an error that ``why`` explains.
    usable: int | None = None
    why: str | None = None
    usd: float | None = None  # default: priced from tokens and prices


class Stage(Generic[C, M]):
    """One stage: its config class, its metrics class, its ``work``, and how its summary reads (the job's
    last line, the report's stage table, the pipeline's brief). ``run`` is the same for every stage."""

    name: str
    config: type[C]
    metrics: type[M]

    def run(
        self, cfg: C, pools: Mapping[str, Any] | None = None, *, fingerprint: str | None = None
    ) -> Summary:
        """Do the stage's work (resuming what a killed call left) and return its summary; a finished folder
        returns the stored summary and writes nothing. ``pools``: engines the caller started and keeps
        (keyed by ``engine.engine_key``); by default a stage starts its own. ``fingerprint``: the config's,
        where the caller has computed it already (the pipeline, which checks ``finished`` first)."""
        fingerprint = fingerprint or cfg.fingerprint()
        if (done := finished(cfg, fingerprint)) is not None:
            return done
        work = Work(cfg, fingerprint, cfg.out_dir())
        o = self.work(work, pools)
        counted, usd = priced(o.tokens, o.prices)
        result = Summary(
            stage=cfg.stage,
            run_id=cfg.run_id,
            round=cfg.round,
            rows=o.rows,
            errors=o.errors,
            wall_s=round(work.wall_s(), 2),
            tokens=counted,
            usd=usd if o.usd is None else o.usd,
            outputs=o.outputs,
            metrics=o.metrics.model_dump(mode="json"),
            config_hash=fingerprint,
            moaa_version=__version__,
        )
        usable = o.rows - o.errors if o.usable is None else o.usable
        return complete(cfg, o.manifest, result, usable=usable, why=o.why)

    def resources(self, cfg: C) -> dict[str, float]:
        """The Ray resources (``CPU``, ``GPU``) the stage's own workers take beside any engine (training's);
        the pipeline stops engines it keeps for later stages where they would not leave room for them."""
        return {}

    def preflight(self, cfg: C) -> None:
        """Checks of inputs that are there before the stage runs (a pipeline runs every stage's first)."""

    def work(self, work: Work, pools: Mapping[str, Any] | None) -> Outcome:
        raise NotImplementedError

    def read(self, s: Summary) -> M:
        """The summary's metrics as the typed model. Keys this moaa does not know (an older summary's) are
        left out; one whose value does not fit is an error naming the stage."""
        known = {k: v for k, v in s.metrics.items() if k in self.metrics.model_fields}
        try:
            return self.metrics.model_validate(known)
        except ValidationError as e:
            raise MetricsError(f"{s.stage} summary of run {s.run_id!r}: metrics do not fit: {e}") from None

    def one_line(self, s: Summary) -> str:
        """The job's last line(s)."""
        raise NotImplementedError

    def key_numbers(self, s: Summary) -> str:
        """A few of the stage's numbers, in words, for the report's stage table."""
        return ""

    def brief(self, s: Summary) -> dict[str, Any]:
        """The stage's numbers the pipeline keeps in its own summary, beyond rows, errors, time and cost."""
        return {}
