"""The stage contract every job follows (torchtune's recipes share one interface the same way):

- a config that extends ``StageConfig`` (run id, runs dir, round, output folder, Ray address) and says
  which of its settings decide the output (``fingerprint``);
- ``run(cfg) -> Summary``: one typed record with the same keys for every stage;
- a rerun of finished work returns the stored summary and writes nothing (``finished``); a folder that
  holds another configuration's work is refused.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, ClassVar

from pydantic import Field

from moaa import __version__
from moaa.core import layout, manifests, storage
from moaa.core.config import Config, OutputPath, UserError


class EmptyResultError(UserError, RuntimeError):
    """A stage whose every row failed: there is nothing to pass on."""


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
        raise NotImplementedError


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


def finished(cfg: StageConfig) -> Summary | None:
    """The stored summary when ``cfg``'s folder holds this configuration's finished work, else None. Another
    configuration's work there is refused (``manifests.ResumeError``)."""
    out = cfg.out_dir()
    manifest = manifests.load_manifest(out)
    summary_path = storage.join(out, manifests.SUMMARY)
    if manifest is None or manifest.get("status") != "complete" or not storage.exists(summary_path):
        return None
    manifests.check_same_config(out, manifest, cfg.stage, cfg.fingerprint())
    print(f"[{cfg.stage}] {out} is complete with this config: nothing to do (another run_id starts over)")
    return Summary.model_validate(storage.read_json(summary_path))


def provenance(cfg: StageConfig, **extra: Any) -> dict[str, Any]:
    """The columns every output row carries to say which run and settings wrote it."""
    return {**extra, "run_id": cfg.run_id, "config_hash": cfg.fingerprint(), "moaa_version": __version__}


def summary(
    cfg: StageConfig,
    *,
    rows: int,
    errors: int,
    wall_s: float,
    outputs: dict[str, str],
    metrics: dict[str, Any] | None = None,
    tokens: dict[str, dict[str, int]] | None = None,
    prices: dict[str, Price] | None = None,
) -> Summary:
    counted, usd = priced(tokens or {}, prices or {})
    return Summary(
        stage=cfg.stage,
        run_id=cfg.run_id,
        round=cfg.round,
        rows=rows,
        errors=errors,
        wall_s=round(wall_s, 2),
        tokens=counted,
        usd=usd,
        outputs=outputs,
        metrics=metrics or {},
        config_hash=cfg.fingerprint(),
        moaa_version=__version__,
    )


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
            f"cause, then rerun with another run_id or after deleting {out}"
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
