"""Judge evaluation: how well a judge mode agrees with labeled preference pairs, before spending GPU-days
on DPO data.

Each labeled pair becomes a row with two candidates (0 = the labeled chosen, 1 = the labeled rejected),
judged in both orders by the same stages as ``jobs.generate_dpo``. The judge is right when candidate 0
scores higher, wrong when lower; equal scores are ties.

Efficiency: the requested modes share one pass. ``moa`` calls every judge and then the aggregator; ``jury``
and ``single`` decide from the same judges' verdicts (the first judge's, for single), so every mode is
scored on identical judge outputs and only the largest mode is paid for. Token counts per decision are
still per mode (the tokens of the calls that mode makes).

Readers (``format``): ``ultrafeedback`` (UltraFeedback's own layout: ``instruction`` + ``completions`` with
``overall_score``; chosen = best, rejected = worst, rows whose scores all tie are skipped), ``pairs``
(``prompt``/``chosen``/``rejected`` as strings or TRL conversational messages, JSONL or Parquet) and
``llmbar`` (LLMBar's ``input``/``output_1``/``output_2``/``label``); ``auto`` tells them apart by their keys.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Literal

import numpy as np
from pydantic import Field

from moaa import __version__, judge, runs, schemas, storage
from moaa.config import Config, InputPath, OutputPath, UserError
from moaa.generate import _init_ray
from moaa.preference import JudgeConfig, build_judge_pipeline, decisive_judgments, start_pools

STAGE = "judge_eval"
Mode = Literal["moa", "jury", "single"]


class JudgeEvalConfig(Config):
    """Judge modes against labeled pairs. Defaults: the sample UltraFeedback rows and the tiny judges."""

    run_id: str = Field("demo", description="Run name: outputs go to <runs_dir>/<run_id>/judge_eval/.")
    runs_dir: OutputPath = Field("runs", description="Folder or URI (s3://, gs://) holding run folders.")
    output_dir: OutputPath | None = Field(
        None, description="Output folder; default <runs_dir>/<run_id>/judge_eval."
    )
    data: InputPath = Field(
        "data/samples/ultrafeedback.jsonl", description="Labeled pairs: .jsonl, .json or .parquet."
    )
    format: Literal["auto", "ultrafeedback", "pairs", "llmbar"] = Field(
        "auto", description="Input layout (see the module doc); auto: from the first row's keys."
    )
    limit: int | None = Field(None, description="Evaluate only the first N usable pairs.")
    modes: list[Mode] = Field(
        default_factory=lambda: ["moa", "jury", "single"], description="Judge modes to evaluate."
    )
    judge: JudgeConfig = Field(
        default_factory=JudgeConfig, description="Judges, aggregator, criteria, vote (judge.mode is ignored)."
    )
    ray_address: str | None = Field(
        None, description="Ray cluster address; null: RAY_ADDRESS or a local Ray."
    )

    def out_dir(self) -> str:
        return self.output_dir or runs.stage_dir(self.runs_dir, self.run_id, STAGE)

    def pass_mode(self) -> str:
        """The one mode whose stages cover every requested mode."""
        return next(m for m in ("moa", "jury", "single") if m in self.modes)


# ------------------------------------------------------------------------------------------------ readers


def _text(value: Any) -> str:
    """A string, or the content of the last message of a TRL conversational value."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        return value[-1]["content"]
    raise ValueError(f"expected a string or a list of messages, got {type(value).__name__}")


def _messages(value: Any) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    return [{"role": m["role"], "content": m["content"]} for m in value]


class LabeledDataError(UserError, ValueError):
    """A labeled file that cannot be read as preference pairs; the message names the file and the fix."""


def _load_records(path: str) -> list[dict[str, Any]]:
    if not storage.exists(path):
        raise LabeledDataError(f"labeled data {path} not found: set data=<.jsonl|.json|.parquet>")
    if path.endswith(".parquet"):
        return storage.read_parquet(path).to_pylist()
    fs, p = storage.resolve(path)
    with fs.open_input_stream(p) as f:
        text = f.read().decode("utf-8")
    if path.endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)


def detect_format(record: dict[str, Any]) -> str:
    if "completions" in record and "instruction" in record:
        return "ultrafeedback"
    if {"prompt", "chosen", "rejected"} <= record.keys():
        return "pairs"
    if {"input", "output_1", "output_2", "label"} <= record.keys():
        return "llmbar"
    raise LabeledDataError(
        f"cannot tell the layout of a row with keys {sorted(record)}: expected UltraFeedback (instruction, "
        "completions), prompt/chosen/rejected or LLMBar (input, output_1, output_2, label); set format"
    )


def labeled_pairs(path: str, fmt: str = "auto", limit: int | None = None) -> tuple[list[dict[str, Any]], int]:
    """(rows, skipped): rows ``{prompt_id, source, messages, candidates: [chosen, rejected]}``; skipped
    counts rows without a usable label (UltraFeedback rows whose ratings all tie)."""
    records = _load_records(path)
    if not records:
        raise LabeledDataError(f"{path}: no rows")
    fmt = detect_format(records[0]) if fmt == "auto" else fmt
    rows, skipped = [], 0
    for i, r in enumerate(records):
        try:
            if fmt == "ultrafeedback":
                comps = [c for c in r["completions"] if c.get("overall_score") is not None]
                if len(comps) < 2 or len({c["overall_score"] for c in comps}) < 2:
                    skipped += 1
                    continue
                best = max(comps, key=lambda c: c["overall_score"])
                worst = min(comps, key=lambda c: c["overall_score"])
                messages, cands, source = (
                    _messages(r["instruction"]),
                    [best["response"], worst["response"]],
                    r.get("source"),
                )
            elif fmt == "pairs":
                messages, cands, source = (
                    _messages(r["prompt"]),
                    [_text(r["chosen"]), _text(r["rejected"])],
                    r.get("source"),
                )
            elif fmt == "llmbar":
                good = int(r["label"])
                cands = [r[f"output_{good}"], r[f"output_{3 - good}"]]
                messages, source = _messages(r["input"]), "llmbar"
            else:
                raise ValueError(f"unknown format {fmt!r}")
            rows.append(
                {"prompt_id": f"{i:06d}", "source": source or fmt, "messages": messages, "candidates": cands}
            )
            if limit is not None and len(rows) >= limit:
                break
        except (KeyError, TypeError, ValueError) as e:
            raise LabeledDataError(
                f"{path}: row {i} does not fit the {fmt} layout ({type(e).__name__}: {e})"
            ) from None
    return rows, skipped


# ---------------------------------------------------------------------------------------------- metrics


def metrics(rows: list[dict[str, Any]], judges: list[str], wall_s: float | None = None) -> dict[str, Any]:
    """Agreement with the label (candidate 0) over the rows of one mode."""
    ok = [r for r in rows if r["status"] != "error"]
    s = [(r["candidates"][0]["score"], r["candidates"][1]["score"]) for r in ok]
    correct = sum(a > b for a, b in s)
    wrong = sum(a < b for a, b in s)
    ties = len(ok) - correct - wrong
    decisive = [j for r in ok for j in decisive_judgments(r, judges)]
    pos_pairs = sum(r["position_pairs"] for r in ok)
    tokens = sum(r["judge_tokens"] for r in ok)
    n = len(ok)
    return {
        "pairs": n,
        "errors": len(rows) - n,
        "accuracy": round(correct / n, 4) if n else None,
        "accuracy_ties_half": round((correct + 0.5 * ties) / n, 4) if n else None,
        "wrong": round(wrong / n, 4) if n else None,
        "ties": round(ties / n, 4) if n else None,
        "position_consistency": round(sum(r["position_consistent"] for r in ok) / pos_pairs, 4)
        if pos_pairs
        else None,
        "position_flip_rate": round(sum(r["position_flips"] for r in ok) / pos_pairs, 4)
        if pos_pairs
        else None,
        "verdict_parse_rate": round(sum(j["verdict"] is not None for j in decisive) / len(decisive), 4)
        if decisive
        else None,
        "judge_tokens_per_decision": round(tokens / n, 1) if n else None,
        "wall_s": wall_s,
    }


COLUMNS = [
    ("mode", "{}"),
    ("pairs", "{}"),
    ("accuracy", "{:.3f}"),
    ("accuracy_ties_half", "{:.3f}"),
    ("ties", "{:.3f}"),
    ("position_consistency", "{:.3f}"),
    ("position_flip_rate", "{:.3f}"),
    ("verdict_parse_rate", "{:.3f}"),
    ("judge_tokens_per_decision", "{:.0f}"),
]


def table(report: dict[str, dict[str, Any]]) -> str:
    """The per-mode report as an aligned text table."""
    head = [c for c, _ in COLUMNS]
    body = [
        [
            fmt.format(m if c == "mode" else r[c]) if (c == "mode" or r[c] is not None) else "-"
            for c, fmt in COLUMNS
        ]
        for m, r in report.items()
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    return "\n".join("  ".join(x.rjust(w) for x, w in zip(line, widths)) for line in [head, *body])


# ------------------------------------------------------------------------------------------------ driver


def judge_states(states: list[dict[str, Any]], jc: JudgeConfig, pools) -> list[dict[str, Any]]:
    """Run the judge stages of ``jc.mode`` over in-memory states (small labeled sets): Ray Data, the same
    stages as generate_dpo, results back in the driver."""
    import ray.data

    items = [{"shard": "eval", "state": json.dumps(s, ensure_ascii=False)} for s in states]
    ds = ray.data.from_items(items)
    ds = build_judge_pipeline(ds, jc, pools)
    out: list[dict[str, Any]] = []
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        out += [json.loads(s) for s in np.asarray(batch["state"]).tolist()]
    return sorted(out, key=lambda s: s["prompt_id"])


def run(cfg: JudgeEvalConfig) -> dict[str, Any]:
    """Judge every labeled pair once (the largest requested mode), score every mode, write the rows per
    mode (schema ``preference``) and ``report.json``; returns the report."""
    t0 = time.time()
    rows, skipped = labeled_pairs(cfg.data, cfg.format, cfg.limit)
    states = [judge.init_state(r, "eval") for r in rows]
    jc = cfg.judge.model_copy(update={"mode": cfg.pass_mode()})
    _init_ray(cfg.ray_address)
    pools = start_pools(jc.models())
    try:
        t1 = time.time()
        judged = judge_states(states, jc, pools)
        judge_wall = time.time() - t1
    finally:
        for pool in pools.values():
            pool.shutdown()
    names = [m.display_name for m in cfg.judge.judges]
    out = cfg.out_dir()
    cfg_hash = hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:16]
    report: dict[str, dict[str, Any]] = {}
    for mode in cfg.modes:
        out_rows = [
            {
                **judge.decide(s, mode, names, cfg.judge.vote),
                "policy_model": None,
                "run_id": cfg.run_id,
                "config_hash": cfg_hash,
                "moaa_version": __version__,
            }
            for s in judged
        ]
        storage.write_parquet(schemas.to_table(out_rows, "preference"), storage.join(out, f"{mode}.parquet"))
        report[mode] = metrics(out_rows, names)
    result = {
        "stage": STAGE,
        "data": cfg.data,
        "rows": len(rows),
        "skipped_unlabeled": skipped,
        "judged_as": cfg.pass_mode(),
        "judge_wall_s": round(judge_wall, 2),
        "wall_s": round(time.time() - t0, 2),
        "modes": report,
        "config_hash": cfg_hash,
        "moaa_version": __version__,
    }
    storage.write_json(storage.join(out, "report.json"), result)
    return result
