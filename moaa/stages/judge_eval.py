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
(``prompt``/``chosen``/``rejected`` as strings or TRL conversational messages, JSONL or Parquet),
``llmbar`` (LLMBar's ``input``/``output_1``/``output_2``/``label``) and ``verifiable`` (a generate_dpo data
folder or file, schema ``preference``: of each prompt with verifiable instructions, every two candidates of
which one follows all the instructions and the other does not, labeled by the checks: a judge's accuracy
without human labels); ``auto`` tells them apart by their keys.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from moaa.core import schemas, stage, storage
from moaa.core.config import Config, InputPath, UserError
from moaa.core.stage import Outcome, ShardMetrics, Stage, StageConfig, Summary, Work, num
from moaa.engine import shards
from moaa.engine.vllm import EnginePool
from moaa.judging import judge
from moaa.judging.judge import JudgeConfig

NAME = "judge_eval"
Mode = Literal["moa", "jury", "single"]


class JudgeEvalConfig(StageConfig):
    """Judge modes against labeled pairs. Defaults: the sample UltraFeedback rows and the tiny judges."""

    data: InputPath = Field(
        "data/samples/ultrafeedback.jsonl",
        description="Labeled pairs: .jsonl, .json or .parquet, or a folder of .parquet files (e.g. a "
        "generate_dpo run's data/, read as verifiable pairs).",
    )
    format: Literal["auto", "ultrafeedback", "pairs", "llmbar", "verifiable"] = Field(
        "auto", description="Input layout (see the module doc); auto: from the first row's keys."
    )
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N usable pairs.")
    modes: list[Mode] = Field(
        default_factory=lambda: ["moa", "jury", "single"], description="Judge modes to evaluate."
    )
    judge: JudgeConfig = Field(
        default_factory=JudgeConfig,
        description="Judges, aggregator (needed for mode moa only), criteria, vote (judge.mode is "
        "ignored: modes says what to evaluate).",
    )
    rows_per_shard: int = Field(64, ge=1, description="Labeled pairs per output shard (the unit of resume).")

    stage: ClassVar[str] = NAME

    @model_validator(mode="after")
    def _check(self) -> JudgeEvalConfig:
        if not self.modes:
            raise ValueError("modes must name at least one of moa, jury, single")
        self.judge.check_modes(list(self.modes))
        return self

    def pass_judge(self) -> JudgeConfig:
        """The judge of the one pass that covers every requested mode: moa calls the judges and the
        aggregator; jury and single decide from the same judges' verdicts."""
        mode = next(m for m in ("moa", "jury", "single") if m in self.modes)
        return self.judge.model_copy(update={"mode": mode})

    def engine_models(self) -> list[Any]:
        return self.pass_judge().models()

    def fingerprint_data(self) -> Any:
        data = {
            "data": self.data,
            "format": self.format,
            "limit": self.limit,
            "modes": sorted(self.modes),
            "judge": self.pass_judge().fingerprint_data(),
            "vote": self.judge.vote,
            "rows_per_shard": self.rows_per_shard,
        }
        return data


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
        raise LabeledDataError(f"labeled data {path} not found: set data=<.jsonl|.json|.parquet|folder>")
    if storage.is_dir(path):
        files = sorted(storage.list_files(path, ".parquet"))
        if not files:
            raise LabeledDataError(f"{path}: a folder without .parquet files")
        return [r for f in files for r in storage.read_parquet(f).to_pylist()]
    if path.endswith(".parquet"):
        return storage.read_parquet(path).to_pylist()
    fs, p = storage.resolve(path)
    with fs.open_input_stream(p) as f:
        text = f.read().decode("utf-8")
    if path.endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)


def detect_format(record: dict[str, Any]) -> str:
    if {"candidates", "constraints", "prompt"} <= record.keys():
        return "verifiable"
    if "completions" in record and "instruction" in record:
        return "ultrafeedback"
    if {"prompt", "chosen", "rejected"} <= record.keys():
        return "pairs"
    if {"input", "output_1", "output_2", "label"} <= record.keys():
        return "llmbar"
    raise LabeledDataError(
        f"cannot tell the layout of a row with keys {sorted(record)}: expected UltraFeedback (instruction, "
        "completions), prompt/chosen/rejected, LLMBar (input, output_1, output_2, label) or generate_dpo's "
        "preference rows (prompt, candidates, constraints); set format"
    )


def labeled_pairs(path: str, fmt: str = "auto", limit: int | None = None) -> tuple[list[dict[str, Any]], int]:
    """(rows, skipped): rows ``{prompt_id, source, messages, candidates: [chosen, rejected]}``; skipped
    counts rows without a usable label (UltraFeedback rows whose ratings all tie)."""
    records = _load_records(path)
    if not records:
        raise LabeledDataError(f"{path}: no rows")
    if fmt == "auto":
        fmt = detect_format(records[0])
        if fmt == "verifiable" and not any(r.get("constraints") for r in records):
            fmt = "pairs"  # preference rows without instructions: their chosen/rejected are the labels
    rows, skipped = [], 0
    if fmt == "verifiable":
        rows, skipped = verifiable_rows(path, records)
        return (rows[:limit] if limit is not None else rows), skipped
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
    if not rows:
        raise LabeledDataError(f"{path}: none of its {len(records)} rows has a usable label ({fmt} layout)")
    return rows, skipped


def verifiable_rows(path: str, records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """(rows, skipped) of preference rows with checked candidates: one labeled row per verifiable pair
    (``judge.verifiable_pairs``: candidate 0 follows every instruction, candidate 1 does not); skipped counts
    the records without one (no instructions, an error, or candidates that all pass or all fail)."""
    rows, skipped = [], 0
    for i, r in enumerate(records):
        try:
            cands = r["candidates"] or []
            texts, checks = [c["content"] for c in cands], [c.get("follows") or [] for c in cands]
            pairs = [] if r.get("status") == "error" else judge.verifiable_pairs(texts, checks)
        except (KeyError, TypeError) as e:
            raise LabeledDataError(
                f"{path}: row {i} is not a preference row with checked candidates ({type(e).__name__}: {e}); "
                "give a generate_dpo data folder written with verifiable instructions"
            ) from None
        if not pairs:
            skipped += 1
        for passing, failing in pairs:
            rows.append(
                {
                    "prompt_id": f"{r['prompt_id']}:{passing}>{failing}",
                    "source": r.get("source") or "verifiable",
                    "messages": [{"role": m["role"], "content": m["content"]} for m in r["prompt"]],
                    "candidates": [texts[passing], texts[failing]],
                    "constraints": r["constraints"],
                    # the label's own verdicts: the state is not checked again (under another prompt id)
                    "checks": [checks[passing], checks[failing]],
                }
            )
    if not rows:
        raise LabeledDataError(
            f"{path}: none of its {len(records)} rows has a verifiable pair (a candidate that follows every "
            "instruction and one that does not): run generate_dpo on prompts with constraints (prepare's "
            "constraints.share)"
        )
    return rows, skipped


# ---------------------------------------------------------------------------------------------- metrics


def metrics(rows: list[dict[str, Any]], judges: list[str]) -> dict[str, Any]:
    """Agreement with the label (candidate 0) over the rows of one mode."""
    ok = [r for r in rows if r["status"] != "error"]
    s = [(r["candidates"][0]["score"], r["candidates"][1]["score"]) for r in ok]
    correct = sum(a > b for a, b in s)
    wrong = sum(a < b for a, b in s)
    ties = len(ok) - correct - wrong
    decisive = [j for r in ok for j in judge.decisive(r["judgments"], r["judge_mode"], judges)]
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
        "judge_tokens_per_correct": round(tokens / correct, 1) if correct else None,
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
    ("judge_tokens_per_correct", "{:.0f}"),
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


def load_pairs(path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows ``start:stop`` of the labeled file as judge states (runs in a Ray task)."""
    rows, _ = labeled_pairs(path, params["format"], params["limit"])
    return [judge.init_state(r, params["shard"]) for r in rows[params["start"] : params["stop"]]]


def commit(name: str, states: list[dict[str, Any]], cfg: JudgeEvalConfig, provenance: dict[str, Any]):
    """One table per mode, all decided from the same judged states."""
    names = cfg.judge.judge_names()
    tables = {}
    for mode in cfg.modes:
        rows = [{**judge.decide(s, mode, names, cfg.judge.vote), **provenance} for s in states]
        tables[mode] = schemas.to_table(sorted(rows, key=lambda r: r["prompt_id"]), "preference")
    tokens: dict[str, dict[str, int]] = {}
    for s in states:
        stage.add_tokens(tokens, s["tokens"])
    return tables, {
        "rows": len(states),
        "errors": sum(s["error"] is not None for s in states),
        "tokens": tokens,
    }


def plan(cfg: JudgeEvalConfig) -> tuple[list[shards.Shard], int]:
    """The labeled file, read and checked in the driver, cut into shards of ``rows_per_shard`` pairs."""
    rows, skipped = labeled_pairs(cfg.data, cfg.format, cfg.limit)
    planned = []
    for i, start in enumerate(range(0, len(rows), cfg.rows_per_shard)):
        name = f"part-{i:05d}.parquet"
        stop = min(start + cfg.rows_per_shard, len(rows))
        params = {"format": cfg.format, "limit": cfg.limit, "start": start, "stop": stop, "shard": name}
        planned.append(shards.Shard(name, cfg.data, rows=stop - start, params=params))
    return planned, skipped


class ModeNumbers(Config):
    """One judge mode's agreement with the labels (``metrics``)."""

    pairs: int = Field(0, description="Pairs judged without error.")
    errors: int = Field(0, description="Pairs whose judging failed.")
    accuracy: float | None = Field(None, description="Share where the labeled answer scored higher.")
    accuracy_ties_half: float | None = Field(None, description="Accuracy with ties counted as half.")
    wrong: float | None = Field(None, description="Share where the other answer scored higher.")
    ties: float | None = Field(None, description="Share scored the same.")
    position_consistency: float | None = Field(None, description="Same verdict in both orders.")
    position_flip_rate: float | None = Field(None, description="Verdict followed the position.")
    verdict_parse_rate: float | None = Field(None, description="Decisive verdicts that parsed.")
    judge_tokens_per_decision: float | None = Field(None, description="Judge tokens per pair.")
    judge_tokens_per_correct: float | None = Field(
        None, description="Judge tokens per pair judged right: what a correct decision costs."
    )


class JudgeEvalMetrics(ShardMetrics):
    data: str | None = Field(None, description="The labeled file.")
    skipped_unlabeled: int = Field(0, description="Rows without a label, left out.")
    judged_as: str | None = Field(None, description="The one mode every pair was judged as.")
    modes: dict[str, ModeNumbers] = Field(default_factory=dict, description="Numbers per requested mode.")


class JudgeEval(Stage[JudgeEvalConfig, JudgeEvalMetrics]):
    name = NAME
    config = JudgeEvalConfig
    metrics = JudgeEvalMetrics

    def work(self, work: Work, pools: dict[str, EnginePool] | None = None) -> Outcome:
        """Judge every labeled pair once (the largest requested mode), score every mode from that one pass,
        write the rows per mode (``<out>/<mode>/*.parquet``, schema ``preference``); the per-mode table is
        the summary's ``metrics.modes``."""
        cfg, out = work.cfg, work.out
        assert isinstance(cfg, JudgeEvalConfig)
        planned, skipped = plan(cfg)  # the labeled file is checked before the output folder is touched
        jc = cfg.pass_judge()
        manifest, committed = shards.run(
            work,
            planned,
            load=load_pairs,
            pipeline=lambda ds, turn, pools: judge.build_judge_pipeline(ds, jc, pools),
            commit=partial(commit, cfg=cfg, provenance=work.provenance(policy_model=None)),
            models=cfg.engine_models(),
            pools=pools,
        )
        names = cfg.judge.judge_names()
        report = {}
        for mode in cfg.modes:
            rows = [
                r
                for f in storage.list_files(storage.join(out, mode), ".parquet")
                for r in storage.read_parquet(f).to_pylist()
            ]
            report[mode] = ModeNumbers(**metrics(rows, names))
        tot = shards.totals(manifest)
        return Outcome(
            manifest,
            rows=tot["rows"],
            errors=tot["errors"],
            outputs={mode: storage.join(out, mode) for mode in cfg.modes},
            tokens=tot["tokens"],
            metrics=JudgeEvalMetrics(
                data=cfg.data,
                skipped_unlabeled=skipped,
                judged_as=jc.mode,
                **shards.progress(manifest, committed),
                modes=report,
            ),
        )

    def one_line(self, s: Summary) -> str:
        """The summary line, then the per-mode table."""
        m = self.read(s)
        return (
            f"{NAME}: {s.rows} labeled pairs from {m.data} ({m.skipped_unlabeled} without a label "
            f"skipped), judged as {m.judged_as} in {s.wall_s} s -> {', '.join(s.outputs.values())}\n"
            + table({k: v.model_dump() for k, v in m.modes.items()})
        )

    def key_numbers(self, s: Summary) -> str:
        m = self.read(s)
        return f"modes {', '.join(m.modes)} on {num(s.rows)} labeled pairs" if m.modes else ""


STAGE = JudgeEval()
run = STAGE.run
one_line = STAGE.one_line
