"""The run report: one HTML page and one Markdown file per run folder, built from what the stages wrote.

    <runs_dir>/<run_id>/report.html     self-contained (PNGs as data URIs, inline CSS): opens offline
    <runs_dir>/<run_id>/report.md       the same content; links the PNGs below by relative path
    <runs_dir>/<run_id>/report/*.png    the plots

It reads every stage folder present, round by round (``moaa/core/layout.py``): each ``summary.json``
(rows, errors, tokens, cost, wall time), the judge's numbers of ``generate_dpo`` and ``judge_eval``, the
preference pairs' score margins, ``evaluate/results.parquet`` and a few SFT and DPO examples. A judge built
on an embedded model (SmolLM2-135M, a tiny random model), or whose ``judge_eval`` accuracy is within the 95%
binomial interval of a coin flip, is reported as at chance: its pairs and win rates show the mechanics, not
quality.

The report is not a stage (no manifest, no summary of its own) and writing it again replaces it.
``write(run_dir)`` is the API (the ``report`` job and the pipeline's end call it); the other functions are
pure: they read outputs and return tables, text and PNG bytes.
"""

from __future__ import annotations

import base64
import html
import io
import math
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

import pyarrow.parquet as pq
from pydantic import Field

from moaa.benchmarks import registry as benchmark_registry
from moaa.core import layout, manifests, storage
from moaa.core.config import Config, OutputPath, UserError, absolute
from moaa.core.stage import Summary, num, pct
from moaa.embedded import is_embedded, smollm
from moaa.stages import registry

STAGES = layout.STAGES
JUDGING_STAGES = ("generate_dpo", "evaluate", "judge_eval")
REPORT_DIR = "report"
HTML_FILE = "report.html"
MD_FILE = "report.md"
MAX_CHARS = 600  # longest example text shown before it is cut
EXAMPLES = 3  # examples per stage and round
Z95 = 1.959964
ROUND_DIR = re.compile(r"^round-([1-9][0-9]*)$")
BENCHMARK_ORDER = benchmark_registry.NAMES
MECHANICS = "they show the mechanics, not quality"


class ReportConfig(Config):
    """Which run folder to report on. Not a stage: it writes report.html, report.md and report/*.png into
    the run folder and nothing else."""

    run_id: str = Field(
        "demo", description="Run name: the report reads and is written into <runs_dir>/<run_id>/."
    )
    runs_dir: OutputPath = Field(
        "runs", description="Folder or URI (s3://, gs://) holding run folders; relative: to where you run."
    )

    def run_dir(self) -> str:
        return storage.join(self.runs_dir, self.run_id)


# ---------------------------------------------------------------------------------------- reading the run


@dataclass
class StageResult:
    """One stage folder of one round, as found on disk."""

    stage: str
    round: int
    folder: str
    summary: Summary | None = None
    metrics: Any = None  # the summary's metrics as the stage's typed model (moaa.core.stage.StageMetrics)
    manifest: dict[str, Any] | None = None
    problem: str | None = None  # why there is no summary (unfinished, unreadable)

    @property
    def label(self) -> str:
        return f"r{self.round} {self.stage}"

    @property
    def config(self) -> dict[str, Any]:
        return (self.manifest or {}).get("config") or {}


@dataclass
class Run:
    run_dir: str
    stages: list[StageResult] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return posixpath.basename(self.run_dir.rstrip("/")) or self.run_dir

    def of(self, stage: str) -> list[StageResult]:
        return [s for s in self.stages if s.stage == stage]

    def finished(self) -> list[StageResult]:
        return [s for s in self.stages if s.summary is not None]


def round_folders(run_dir: str) -> list[tuple[int, str]]:
    """(round, folder) of every round in the run: round 1 is the run folder, round r >= 2 ``round-<r>/``."""
    found = [(1, run_dir)]
    for d in storage.list_dirs(run_dir):
        m = ROUND_DIR.match(posixpath.basename(d.rstrip("/")))
        if m and int(m.group(1)) >= 2:
            found.append((int(m.group(1)), d))
    return sorted(found)


def load_stage(stage: str, round: int, folder: str) -> StageResult:
    result = StageResult(stage=stage, round=round, folder=folder)
    try:
        result.manifest = manifests.load_manifest(folder)
    except (OSError, ValueError) as e:
        result.problem = f"manifest.json unreadable ({type(e).__name__}: {e})"
    path = storage.join(folder, manifests.SUMMARY)
    if not storage.exists(path):
        status = (result.manifest or {}).get("status", "no manifest")
        result.problem = f"not finished: no summary.json (manifest status: {status})"
        return result
    try:
        summary = Summary.model_validate(storage.read_json(path))
        result.metrics, result.summary = registry.of(stage).read(summary), summary
    except (OSError, ValueError) as e:
        result.problem = f"summary.json unreadable ({type(e).__name__}: {str(e).splitlines()[0]})"
    return result


def load_run(run_dir: str) -> Run:
    """Every stage folder of the run, round by round, in pipeline order. A missing run folder is a
    ``UserError``; a run folder without stages is an empty ``Run``."""
    run_dir = absolute(run_dir)
    if not storage.exists(run_dir):
        raise UserError(
            f"no run folder at {run_dir}: run the stages first (e.g. python -m jobs.prepare "
            "run_id=<run>), or name an existing run with run_id=<run> (and runs_dir=<folder> if it is not "
            "under runs/)"
        )
    run = Run(run_dir=run_dir)
    for r, folder in round_folders(run_dir):
        for stage in STAGES:
            if stage == layout.PREPARE and r > 1:
                continue
            stage_folder = storage.join(folder, stage)
            if storage.exists(stage_folder):
                run.stages.append(load_stage(stage, r, stage_folder))
    return run


def _parquet_files(folder: str) -> list[str]:
    if folder.endswith(".parquet"):
        return [folder] if storage.exists(folder) else []
    return storage.list_files(folder, ".parquet")


def read_columns(folder: str, columns: list[str] | None = None) -> list[dict[str, Any]]:
    """The given columns (None: all) of every Parquet file in a folder (or one file), as rows; columns missing
    from a file are left out of its rows."""
    rows: list[dict[str, Any]] = []
    for path in _parquet_files(folder):
        names = storage.read_schema(path).names
        cols = None if columns is None else [c for c in columns if c in names]
        rows.extend(storage.read_parquet(path, columns=cols).to_pylist())
    return rows


def first_rows(folder: str, keep: Any, n: int, columns: list[str] | None = None) -> list[dict[str, Any]]:
    """The first ``n`` rows (in file order) for which ``keep(row)`` is true, read batch by batch so that a
    large output is not loaded whole."""
    out: list[dict[str, Any]] = []
    for path in _parquet_files(folder):
        fs, p = storage.resolve(path)
        with fs.open_input_file(p) as f:
            pf = pq.ParquetFile(f)
            cols = [c for c in columns if c in pf.schema_arrow.names] if columns else None
            for batch in pf.iter_batches(batch_size=64, columns=cols):
                for row in batch.to_pylist():
                    if keep(row):
                        out.append(row)
                        if len(out) >= n:
                            return out
    return out


def data_folder(s: StageResult) -> str:
    if s.summary is not None and s.summary.outputs.get("data"):
        return s.summary.outputs["data"]
    return storage.join(s.folder, "data")


# ------------------------------------------------------------------------------------------ formatting


def clip(text: str | None, limit: int = MAX_CHARS) -> str:
    """At most ``limit`` characters of ``text``, with a note saying how much was cut."""
    text = text or ""
    if len(text) <= limit:
        return text
    return f"{text[:limit]} … [truncated: first {limit} of {len(text):,} characters shown]"


def model_name(m: dict[str, Any] | None) -> str:
    if not m:
        return "?"
    return m.get("name") or posixpath.basename(str(m.get("model", "?")).rstrip("/"))


# --------------------------------------------------------------------------------------- report blocks
# The report is a list of blocks, rendered once as HTML and once as Markdown, so both say the same.


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Para:
    text: str
    kind: str = "p"  # "p", "warn" (the judge is at chance), "note"


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    text: bool = False  # cells hold long texts (examples): wrap, top-aligned


@dataclass
class Image:
    name: str  # file name under report/
    alt: str
    png: bytes


Block = Heading | Para | Bullets | Table | Image


# ----------------------------------------------------------------------------------------------- plots


def _figure(width: float, height: float) -> Any:
    # The object API with the Agg canvas, so no global pyplot state or backend is touched (the pipeline
    # calls write() inside its own process).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def wall_time_png(run: Run) -> bytes | None:
    """Horizontal bars: wall time per round x stage, labeled with seconds and share of the total."""
    done = run.finished()
    if not done:
        return None
    total = sum(s.summary.wall_s for s in done) or 1.0  # type: ignore[union-attr]
    fig = _figure(8, 0.45 * len(done) + 1.2)
    ax = fig.add_subplot()
    labels = [s.label for s in done][::-1]
    values = [s.summary.wall_s for s in done][::-1]  # type: ignore[union-attr]
    colors = [f"C{STAGES.index(s.stage)}" for s in done][::-1]
    bars = ax.barh(labels, values, color=colors)
    for bar, v in zip(bars, values):
        ax.text(
            bar.get_width(),
            bar.get_y() + bar.get_height() / 2,
            f" {v:,.1f} s ({v / total:.0%})",
            va="center",
            fontsize=9,
        )
    ax.set_xlabel("wall time (s)")
    ax.set_title(f"Wall time per round and stage (total {total:,.1f} s)")
    ax.set_xlim(0, max(values) * 1.3 if max(values) > 0 else 1)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def margins_png(margins: dict[int, list[dict[str, Any]]], chance: bool) -> bytes | None:
    """Histogram of the pairs' score margins (chosen - rejected), one series per round."""
    if not any(margins.values()):
        return None
    fig = _figure(8, 3.6)
    ax = fig.add_subplot()
    bins = [i / 20 for i in range(21)]
    for r, rows in sorted(margins.items()):
        values = [
            x["score_margin"] for x in rows if x.get("status") == "pair" and x.get("score_margin") is not None
        ]
        counts = _status_counts(rows)
        label = f"round {r}: " + ", ".join(f"{n} {k}" for k, n in counts.items())
        ax.hist(
            values,
            bins=bins,
            histtype="stepfilled" if len(margins) == 1 else "step",
            alpha=0.8,
            linewidth=1.5,
            label=label,
            color=f"C{r - 1}",
        )
    ax.set_xlabel("score margin (chosen score - rejected score)")
    ax.set_ylabel("pairs")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=9, frameon=False)
    title = "Preference pairs: score margin"
    if chance:
        title += "\n(judge at chance: margins show the mechanics, not quality)"
    ax.set_title(title, fontsize=11)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def _status_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for x in rows:
        key = x.get("status") or "?"
        key = {"pair": "pairs", "tie": "ties", "error": "errors"}.get(key, key)
        counts[key] = counts.get(key, 0) + 1
    order = ["pairs", "ties", "identical", "errors"]
    return dict(sorted(counts.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 9))


def eval_png(results: list[dict[str, Any]], chance: bool) -> bytes | None:
    """Score with its interval per benchmark (one panel each: their scales differ), one point per model."""
    scored = [r for r in results if r.get("benchmark")]
    if not scored:
        return None
    benchmarks = sorted({r["benchmark"] for r in scored}, key=_benchmark_key)
    models = list(dict.fromkeys(r["label"] for r in scored))
    fig = _figure(max(4.0, 3.6 * len(benchmarks)), 3.9)
    axes = fig.subplots(1, len(benchmarks), squeeze=False)[0]
    for ax, bench in zip(axes, benchmarks):
        rows = {r["label"]: r for r in scored if r["benchmark"] == bench}
        for i, m in enumerate(models):
            r = rows.get(m)
            if r is None:
                continue
            if r.get("score") is None:
                ax.annotate("n/a", (i, 0), xycoords=("data", "axes fraction"), ha="center", va="bottom")
                continue
            lo = r["lower"] if r.get("lower") is not None else r["score"]
            hi = r["upper"] if r.get("upper") is not None else r["score"]
            ax.errorbar(
                [i],
                [r["score"]],
                yerr=[[r["score"] - lo], [hi - r["score"]]],
                fmt="o",
                capsize=5,
                color=f"C{i}",
                markersize=7,
            )
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels(models, rotation=25, ha="right", fontsize=9)
        ax.set_xlim(-0.6, len(models) - 0.4)
        metric = next(iter(rows.values())).get("metric") or bench
        ci = next(iter(rows.values())).get("ci")
        ax.set_title(bench if judged(bench) else f"{bench} (checked by code)", fontsize=11)
        ax.set_ylabel(metric + (f" ({ci:.0%} interval)" if ci else ""), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    title = "Benchmark scores with their intervals"
    if chance and any(judged(b) for b in benchmarks):
        title += " (judge at chance: the judged ones show the mechanics, not quality)"
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _png(fig)


def judged(benchmark: str) -> bool:
    """Whether a results row's benchmark is scored by a judge (one unknown to this version: assume so)."""
    return benchmark not in BENCHMARK_ORDER or benchmark_registry.get(benchmark).judged


def _benchmark_key(b: str) -> tuple[int, str]:
    return (BENCHMARK_ORDER.index(b) if b in BENCHMARK_ORDER else len(BENCHMARK_ORDER), b)


# ----------------------------------------------------------------------------------------------- judge


def chance_interval(n: int, z: float = Z95) -> tuple[float, float]:
    """The 95% binomial interval of a coin flip's accuracy over ``n`` pairs (normal approximation)."""
    half = z * math.sqrt(0.25 / n)
    return 0.5 - half, 0.5 + half


def accuracy_at_chance(accuracy: float, n: int) -> bool:
    """Whether an accuracy (ties as half) over ``n`` pairs is within the 95% interval of a coin flip."""
    lo, hi = chance_interval(n)
    return lo <= accuracy <= hi


def judge_models(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The judge (and aggregator) model settings of a stage config, as its manifest stored them."""
    j = cfg.get("judge") or {}
    models = list(j.get("judges") or [])
    if j.get("aggregator") and j.get("mode", "moa") == "moa":
        models.append(j["aggregator"])
    return models


def embedded_kind(models: list[dict[str, Any]]) -> str | None:
    """'smollm2' when a judge is the embedded SmolLM2-135M, 'tiny' for a tiny random model, else None."""
    paths = [str(m.get("model", "")) for m in models if is_embedded(str(m.get("model", "")))]
    if any(posixpath.basename(p.rstrip("/")) == smollm.NAME for p in paths):
        return "smollm2"
    return "tiny" if paths else None


@dataclass
class JudgeFinding:
    """Whether one stage's judge is at chance, and why (None: not measured)."""

    stage: StageResult
    judges: list[str]
    at_chance: bool | None
    why: str


def judge_eval_modes(s: StageResult) -> dict[str, dict[str, Any]]:
    modes = s.metrics.modes if s.summary else {}
    out = {}
    for mode, m in modes.items():
        acc, n = m.accuracy_ties_half, m.pairs
        row = m.model_dump()
        if acc is not None and n:
            row["chance_lo"], row["chance_hi"] = chance_interval(n)
            row["at_chance"] = accuracy_at_chance(acc, n)
        else:
            row["chance_lo"] = row["chance_hi"] = row["at_chance"] = None
        out[mode] = row
    return out


def _model_set(models: list[dict[str, Any]]) -> frozenset[str]:
    return frozenset(str(m.get("model")) for m in models)


def judge_findings(run: Run) -> list[JudgeFinding]:
    """One finding per judging stage: at chance when its judge is an embedded model, when ``judge_eval``
    measured it (or the same judge models) within the coin-flip interval, or when evaluate says so."""
    measured: list[tuple[frozenset[str], str, bool, str]] = []  # (models, mode, at chance, why)
    findings = []
    for s in run.of("judge_eval"):
        if s.summary is None:
            continue
        models = judge_models(s.config)
        kind = embedded_kind(models)
        parts, verdicts = [], []
        for mode, m in judge_eval_modes(s).items():
            if m["at_chance"] is None:
                continue
            verdicts.append(m["at_chance"])
            acc = m["accuracy_ties_half"]
            where = "within" if m["at_chance"] else "above" if acc > 0.5 else "below (worse than chance)"
            parts.append(
                f"{mode} {m['accuracy_ties_half']:.3f} on {m['pairs']} pairs, {where} "
                f"[{m['chance_lo']:.3f}, {m['chance_hi']:.3f}]"
            )
            measured.append((_model_set(models), mode, m["at_chance"], parts[-1]))
        why = (
            "accuracy against the labels (ties as half) vs the 95% binomial interval of a coin flip: "
            + "; ".join(parts)
            if parts
            else "no accuracy measured"
        )
        at_chance: bool | None = any(verdicts) if verdicts else None
        if kind and at_chance is None:
            at_chance = True  # an embedded judge is at chance until measured otherwise
            why = f"{_kind_words(kind)}; {why}"
        findings.append(JudgeFinding(s, [model_name(m) for m in models], at_chance, why))
    for s in run.of("generate_dpo") + run.of("evaluate"):
        if s.summary is None:
            continue
        models = judge_models(s.config)
        kind = embedded_kind(models)
        caveat = None
        if s.stage == "evaluate":
            mode = "moa" if (s.config.get("judge") or {}).get("aggregator") else "single"
            caveat = s.metrics.caveat
        else:
            mode = (s.config.get("judge") or {}).get("mode") or s.metrics.judge_mode
        same = [m for m in measured if models and m[0] == _model_set(models) and m[1] == mode]
        verified = verifiable_accuracy(s, mode)
        if verified is not None:
            # measured on this stage's own candidates, by code: it replaces any prior about the judge
            finding = JudgeFinding(
                s,
                [model_name(m) for m in models],
                not verified.above_chance,
                "accuracy on verifiable pairs (the candidate that follows every instruction vs one that "
                f"does not, ties as half): {verified.text()}",
            )
        elif kind:
            finding = JudgeFinding(s, [model_name(m) for m in models], True, _kind_words(kind))
        elif caveat:
            finding = JudgeFinding(s, [model_name(m) for m in models], True, str(caveat))
        elif same:
            finding = JudgeFinding(
                s,
                [model_name(m) for m in models],
                same[0][2],
                f"judge_eval with the same judge: {same[0][3]}",
            )
        else:
            finding = JudgeFinding(
                s,
                [model_name(m) for m in models] or ["unknown (no manifest)"],
                None,
                "not measured: no judge_eval of the same judge in this run",
            )
        findings.append(finding)
    order = {s.label: i for i, s in enumerate(run.stages)}
    return sorted(findings, key=lambda f: order[f.stage.label])


def verifiable_accuracy(s: StageResult, mode: str | None) -> Any:
    """The judge mode's accuracy on a generate_dpo run's verifiable pairs (``JudgeAccuracy``), or None when
    the stage measured none (no instructions, or no pair that split them)."""
    checks = getattr(s.metrics, "checks", None) if s.stage == "generate_dpo" else None
    if checks is None or mode is None:
        return None
    # a single-mode run has one view, its judge's ("single:<name>")
    label = next((k for k in checks.accuracy if k.startswith("single:")), mode) if mode == "single" else mode
    found = checks.accuracy.get(label)
    return found if found is not None and found.pairs else None


def measured_section(run: Run) -> list[Block]:
    """The numbers checked by code, not by a judge: verifiable instructions at each stage and the benchmarks
    scored without a judge (IFEval), with their intervals. They hold whatever the judge is worth."""
    items = []
    for s in run.of("generate_sft"):
        c = getattr(s.metrics, "checks", None)
        if s.summary and c is not None and c.prompts:
            answers = ", ".join(f"{k} {r.text()}" for k, r in c.answers.items())
            items.append(f"{s.label}: answers following every instruction (strict): {answers}. {c.text()}.")
    for s in run.of("generate_dpo"):
        c = getattr(s.metrics, "checks", None)
        if s.summary and c is not None and c.prompts:
            items.append(
                f"{s.label}: chosen {c.chosen.text()} vs rejected {c.rejected.text()} follow every "
                f"instruction (chosen minus rejected {c.chosen_vs_rejected.text()})"
                + (
                    "; judge accuracy on verifiable pairs: "
                    + "; ".join(f"{k} {a.text()}" for k, a in c.accuracy.items())
                    if c.accuracy
                    else ""
                )
                + "."
            )
    for r in eval_rows(run):
        b = str(r.get("benchmark"))
        if judged(b) or r.get("score") is None:
            continue
        interval = (
            f" [{r['lower']:.1f}, {r['upper']:.1f}]"
            if r.get("lower") is not None and r.get("upper") is not None
            else ""
        )
        items.append(
            f"{b} ({r.get('metric')}): {r['label']} {r['score']:.1f}{interval} on {r.get('judged')} prompts."
        )
    if not items:
        return []
    return [
        Heading("Measured without a judge"),
        Para(
            "Checked by code (IFEval's checkers on the prompts' verifiable instructions; 95% intervals): "
            "these numbers are measurements whatever the judge is worth. Intervals as wide as a demo's few "
            "prompts give tell apart only large effects.",
            "note",
        ),
        Bullets(items),
    ]


def _kind_words(kind: str) -> str:
    if kind == "smollm2":
        return (
            "the judge is the embedded SmolLM2-135M-Instruct, which is at chance as a judge "
            "(LLMBar Natural: 0.50 accuracy)"
        )
    return "the judge is a tiny random-weight model: its verdicts are noise"


# ------------------------------------------------------------------------------------------- sections


def _tokens(s: Summary) -> tuple[int, int, int]:
    t = s.tokens.values()
    return (sum(x.prompt_tokens for x in t), sum(x.completion_tokens for x in t), sum(x.calls for x in t))


def stages_section(run: Run) -> list[Block]:
    blocks: list[Block] = [Heading("Stages")]
    if not run.stages:
        return blocks + [Para(f"No stage folders in {run.run_dir} yet: nothing to report.", "note")]
    found = {s.stage for s in run.stages}
    missing = [st for st in STAGES if st not in found]
    done = run.finished()
    total = sum(s.summary.wall_s for s in done)  # type: ignore[union-attr]
    blocks.append(
        Para(
            f"{len(run.stages)} stage folder(s) in {len(round_folders(run.run_dir))} round(s); "
            f"{len(done)} finished, total wall time {total:,.1f} s."
            + (f" Not in this run: {', '.join(missing)}." if missing else "")
        )
    )
    rows = []
    sums = [0, 0, 0, 0, 0, 0.0, 0.0]
    for s in run.stages:
        if s.summary is None:
            rows.append([str(s.round), s.stage] + ["-"] * 8 + [s.problem or ""])
            continue
        p, c, calls = _tokens(s.summary)
        sm = s.summary
        rows.append(
            [
                str(s.round),
                s.stage,
                num(sm.rows),
                num(sm.errors),
                num(c),
                num(p),
                num(calls),
                f"${sm.usd:,.2f}",
                num(sm.wall_s, 1),
                pct(sm.wall_s / total) if total else "-",
                registry.of(sm).key_numbers(sm),
            ]
        )
        for i, v in enumerate([sm.rows, sm.errors, c, p, calls, sm.usd, sm.wall_s]):
            sums[i] += v
    rows.append(
        [
            "",
            "total",
            "",  # rows and errors count different things per stage: no sum
            "",
            *(num(int(v)) for v in sums[2:5]),
            f"${sums[5]:,.2f}",
            num(sums[6], 1),
            "100%" if total else "-",
            "",
        ]
    )
    blocks.append(
        Table(
            [
                "round",
                "stage",
                "rows",
                "errors",
                "completion tokens",
                "prompt tokens",
                "calls",
                "cost (est.)",
                "wall time (s)",
                "share of time",
                "key numbers",
            ],
            rows,
        )
    )
    png = wall_time_png(run)
    if png:
        blocks.append(Image("wall_time.png", "Wall time per round and stage", png))
    token_rows = [
        [
            str(s.round),
            s.stage,
            key,
            num(t.completion_tokens),
            num(t.prompt_tokens),
            num(t.calls),
            f"${t.usd:,.4f}",
        ]
        for s in done
        for key, t in s.summary.tokens.items()  # type: ignore[union-attr]
    ]
    if token_rows:
        blocks.append(Heading("Tokens per role and model", 3))
        blocks.append(
            Table(
                [
                    "round",
                    "stage",
                    "role/model",
                    "completion tokens",
                    "prompt tokens",
                    "calls",
                    "cost (est.)",
                ],
                token_rows,
            )
        )
    blocks.append(
        Para(
            "Cost is the estimate from each stage's prices table ($0 without one); wall time is that of the "
            "invocation that finished the stage.",
            "note",
        )
    )
    return blocks


def judge_section(run: Run, findings: list[JudgeFinding]) -> list[Block]:
    dpo = [s for s in run.of("generate_dpo") if s.summary]
    evals = [s for s in run.of("judge_eval") if s.summary]
    if not findings and not dpo and not evals:
        return []
    blocks: list[Block] = [Heading("Judge")]
    items = []
    for f in findings:
        verdict = {True: "AT CHANCE", False: "not at chance", None: "not measured"}[f.at_chance]
        items.append(f"{f.stage.label} (judges: {', '.join(f.judges)}): {verdict}: {f.why}")
    if items:
        blocks.append(Bullets(items))
    chance_dpo = any(f.at_chance for f in findings if f.stage.stage in ("generate_dpo", "judge_eval"))
    if dpo:
        blocks.append(Heading("Preference pairs (generate_dpo)", 3))
        if any(f.at_chance for f in findings if f.stage.stage == "generate_dpo"):
            blocks.append(
                Para(
                    "The judge that picked these pairs is at chance: the pair counts, scores and margins "
                    "below show the mechanics, not quality (chosen is not shown to be the better answer).",
                    "warn",
                )
            )
        rows = []
        for s in dpo:
            m = s.metrics
            judges = ", ".join(model_name(x) for x in judge_models(s.config)) or "?"
            rows.append(
                [
                    str(s.round),
                    str(m.judge_mode or "?"),
                    judges,
                    num(s.summary.rows),  # type: ignore[union-attr]
                    num(m.pairs),
                    num(m.ties),
                    num(m.identical),
                    num(s.summary.errors),  # type: ignore[union-attr]
                    num(m.position_consistency, 3),
                    num(m.verdict_parse_rate, 3),
                    num(m.mean_score_margin, 3),
                    num(m.judge_tokens_per_pair, 0),
                ]
            )
        blocks.append(
            Table(
                [
                    "round",
                    "mode",
                    "judges",
                    "prompts",
                    "pairs",
                    "ties",
                    "identical",
                    "errors",
                    "position consistency",
                    "verdict parse rate",
                    "mean margin",
                    "judge tokens/pair",
                ],
                rows,
            )
        )
        blocks.append(
            Para(
                "Position consistency: of the candidate pairs judged in both orders, the share whose "
                "verdict mirrors when the order flips (1.0 = no position bias). Ties: prompts whose "
                "candidates all tied (no pair).",
                "note",
            )
        )
        margins: dict[int, list[dict[str, Any]]] = {}
        for s in dpo:
            margins[s.round] = read_columns(data_folder(s), ["score_margin", "status"])
        png = margins_png(margins, chance_dpo)
        if png:
            blocks.append(Image("score_margins.png", "Histogram of the preference pairs' score margins", png))
    if evals:
        blocks.append(Heading("Judge accuracy against labels (judge_eval)", 3))
        rows = []
        for s in evals:
            for mode, m in judge_eval_modes(s).items():
                n = m.get("pairs") or 0
                ties = m.get("ties")
                rows.append(
                    [
                        str(s.round),
                        mode,
                        num(n),
                        num(m.get("accuracy_ties_half"), 3),
                        f"[{m['chance_lo']:.3f}, {m['chance_hi']:.3f}]"
                        if m["chance_lo"] is not None
                        else "-",
                        {
                            True: "AT CHANCE",
                            False: "better" if (m.get("accuracy_ties_half") or 0) > 0.5 else "WORSE",
                            None: "-",
                        }[m["at_chance"]],
                        num(m.get("accuracy"), 3),
                        f"{num(round(ties * n))} ({pct(ties)})" if ties is not None else "-",
                        num(m.get("wrong"), 3),
                        num(m.get("position_consistency"), 3),
                        num(m.get("verdict_parse_rate"), 3),
                        num(m.get("judge_tokens_per_decision"), 0),
                    ]
                )
        blocks.append(
            Table(
                [
                    "round",
                    "mode",
                    "pairs",
                    "accuracy (ties half)",
                    "coin flip 95%",
                    "vs chance",
                    "accuracy (strict)",
                    "ties",
                    "wrong",
                    "position consistency",
                    "verdict parse rate",
                    "tokens/decision",
                ],
                rows,
            )
        )
        blocks.append(
            Para(
                "A judge whose accuracy (ties as half) is within the coin-flip interval "
                "(0.5 ± 1.96·√(0.25/n)) is at chance on these pairs: its verdicts carry no measured signal.",
                "note",
            )
        )
    return blocks


def eval_rows(run: Run) -> list[dict[str, Any]]:
    """Every evaluate results row of the run, with the round and a plot label."""
    evals = [s for s in run.of("evaluate") if s.summary]
    many = len(evals) > 1
    rows = []
    for s in evals:
        path = s.summary.outputs.get("results") or storage.join(s.folder, "results.parquet")  # type: ignore[union-attr]
        found = read_columns(path)
        if not found:
            found = list(s.metrics.results)
        for r in found:
            r = dict(r)
            r["round"] = s.round
            r["label"] = f"{r.get('model')} (eval r{s.round})" if many else str(r.get("model"))
            r["caveat"] = s.metrics.caveat
            rows.append(r)
    return rows


def split_note(note: str | None, caveat: str | None) -> list[str]:
    """A results row's note as its parts: evaluate appends the judge caveat to the benchmark's own note
    with '; ' (which a note may hold too, so only a trailing caveat is split off)."""
    note = (note or "").strip()
    if caveat and note.endswith(caveat) and note != caveat:
        return [n for n in (note[: -len(caveat)].strip().removesuffix(";").strip(), caveat) if n]
    return [note] if note else []


def evaluation_section(run: Run, findings: list[JudgeFinding]) -> list[Block]:
    results = eval_rows(run)
    if not run.of("evaluate"):
        return []
    blocks: list[Block] = [Heading("Evaluation")]
    if not results:
        return blocks + [Para("evaluate has no results table yet.", "note")]
    chance = [f for f in findings if f.stage.stage == "evaluate" and f.at_chance]
    if chance:
        blocks.append(
            Para(
                "The benchmark judge is at chance ("
                + "; ".join(f"{f.stage.label}: {f.why}" for f in chance)
                + "): these scores and win rates show that answering, judging and scoring run end to "
                f"end; {MECHANICS}. A difference between models here is not a gain or a loss.",
                "warn",
            )
        )
        by_code = sorted({str(r["benchmark"]) for r in results if not judged(str(r.get("benchmark")))})
        if by_code:
            blocks.append(
                Para(
                    f"The {', '.join(by_code)} rows are checked by code, not by the judge: the judge "
                    "being at chance does not touch them (they still rest on few questions).",
                    "note",
                )
            )
    notes: list[str] = []
    rows = []
    for r in sorted(results, key=lambda r: (r["round"], _benchmark_key(str(r.get("benchmark"))))):
        refs = []
        for note in split_note(r.get("note"), r.get("caveat")):
            if note not in notes:
                notes.append(note)
            refs.append(f"[{notes.index(note) + 1}]")
        ci = r.get("ci")
        rows.append(
            [
                str(r["round"]),
                str(r.get("model")),
                str(r.get("benchmark")),
                str(r.get("metric", "")),
                num(r.get("score")),
                f"[{num(r.get('lower'))}, {num(r.get('upper'))}]" + (f" @{ci:.0%}" if ci else ""),
                num(r.get("lc_win_rate")),
                num(r.get("judged")),
                num(r.get("unparsed")),
                num(r.get("parse_rate")),
                num(r.get("first_position_rate")),
                num(r.get("position_consistency")),
                str(r.get("judge", "")),
                " ".join(refs),
            ]
        )
    blocks.append(
        Table(
            [
                "round",
                "model",
                "benchmark",
                "metric",
                "score",
                "interval",
                "LC win rate",
                "judged",
                "unparsed",
                "parse rate",
                "first-position rate",
                "position consistency",
                "judge",
                "notes",
            ],
            rows,
        )
    )
    if notes:
        blocks.append(Heading("Notes", 3))
        blocks.append(Bullets([f"[{i + 1}] {n}" for i, n in enumerate(notes)]))
    png = eval_png(results, bool(chance))
    if png:
        blocks.append(
            Image("eval_scores.png", "Benchmark scores with their intervals, one point per model", png)
        )
    return blocks


def sft_examples(s: StageResult, n: int = EXAMPLES) -> list[Block]:
    """The last turn's proposals next to the aggregated answer, for the first ``n`` rows without an error."""
    rows = first_rows(
        data_folder(s),
        lambda r: r.get("error") is None,
        n,
        ["prompt_id", "messages", "proposals", "n_turns", "error"],
    )
    blocks: list[Block] = []
    for i, r in enumerate(rows, 1):
        messages = r.get("messages") or []
        users = [m for m in messages if m["role"] == "user"]
        turn = r.get("n_turns") or len(users)
        props = [p for p in r.get("proposals") or [] if p["turn"] == turn]
        last_layer = max((p["layer"] for p in props), default=0)
        answer = messages[-1]["content"] if messages and messages[-1]["role"] == "assistant" else ""
        aggregator = next((p["model"] for p in props if p["layer"] == last_layer), "aggregator")
        shown = [p for p in props if p["layer"] < last_layer]
        multi_layer = last_layer > 2
        headers = [
            f"proposal: {p['model']}" + (f" (layer {p['layer']})" if multi_layer else "") for p in shown
        ]
        headers.append(f"aggregated (MoA answer): {aggregator}")
        cells = [clip(p["content"]) for p in shown] + [clip(answer)]
        prompt = users[-1]["content"] if users else ""
        blocks.append(
            Para(
                f"Round {s.round}, example {i} ({r['prompt_id'][:12]}), turn {turn} of {turn}: "
                + clip(prompt, 300)
            )
        )
        blocks.append(Table(headers, [cells], text=True))
    return blocks


def dpo_examples(s: StageResult, n: int = EXAMPLES) -> list[Block]:
    """Chosen next to rejected, with their scores, for the first ``n`` rows with a pair."""
    rows = first_rows(
        data_folder(s),
        lambda r: r.get("status") == "pair",
        n,
        [
            "prompt_id",
            "prompt",
            "chosen",
            "rejected",
            "chosen_score",
            "rejected_score",
            "score_margin",
            "status",
        ],
    )
    blocks: list[Block] = []
    for i, r in enumerate(rows, 1):
        users = [m for m in r.get("prompt") or [] if m["role"] == "user"]
        prompt = users[-1]["content"] if users else ""
        chosen = (r.get("chosen") or [{"content": ""}])[0]["content"]
        rejected = (r.get("rejected") or [{"content": ""}])[0]["content"]
        blocks.append(
            Para(
                f"Round {s.round}, pair {i} ({r['prompt_id'][:12]}), margin "
                f"{num(r.get('score_margin'), 3)}: {clip(prompt, 300)}"
            )
        )
        blocks.append(
            Table(
                [
                    f"chosen (score {num(r.get('chosen_score'), 3)})",
                    f"rejected (score {num(r.get('rejected_score'), 3)})",
                ],
                [[clip(chosen), clip(rejected)]],
                text=True,
            )
        )
    return blocks


def examples_section(run: Run, findings: list[JudgeFinding]) -> list[Block]:
    blocks: list[Block] = []
    for s in run.of("generate_sft"):
        try:
            found = sft_examples(s)
        except (OSError, ValueError, KeyError) as e:
            found = [Para(f"r{s.round} generate_sft: examples unreadable ({type(e).__name__}: {e})", "note")]
        if found:
            if not any(isinstance(b, Heading) and b.text.startswith("MoA-SFT") for b in blocks):
                blocks.append(Heading("MoA-SFT: proposals vs the aggregated answer (generate_sft)", 3))
            blocks.extend(found)
    for s in run.of("generate_dpo"):
        try:
            found = dpo_examples(s)
        except (OSError, ValueError, KeyError) as e:
            found = [Para(f"r{s.round} generate_dpo: examples unreadable ({type(e).__name__}: {e})", "note")]
        if found:
            if not any(isinstance(b, Heading) and b.text.startswith("DPO pairs") for b in blocks):
                blocks.append(Heading("DPO pairs: chosen vs rejected (generate_dpo)", 3))
                if any(f.at_chance for f in findings if f.stage.stage == "generate_dpo"):
                    blocks.append(
                        Para(
                            "Picked by a judge at chance: chosen is not shown to be the better answer.",
                            "warn",
                        )
                    )
            blocks.extend(found)
    if not blocks:
        return []
    return [
        Heading("Examples"),
        Para(
            f"The first rows of each output, texts cut at {MAX_CHARS} characters (the prompt at 300).", "note"
        ),
        *blocks,
    ]


def build(run: Run) -> list[Block]:
    """Every block of the report, in order."""
    findings = judge_findings(run)
    blocks: list[Block] = [Heading(f"moaa run report: {run.run_id}", 1)]
    versions = sorted({s.summary.moaa_version for s in run.finished()})  # type: ignore[union-attr]
    blocks.append(
        Para(
            # No timestamp: the same run folder gives the same report, so a rerun rewrites nothing.
            f"Run folder {run.run_dir}"
            + (f"; outputs written by moaa {', '.join(versions)}" if versions else "")
            + ".",
            "note",
        )
    )
    chance = [f for f in findings if f.at_chance]
    if chance:
        stages = ", ".join(dict.fromkeys(f.stage.label for f in chance))
        blocks.append(
            Para(
                f"The judge is at chance in this run ({stages}). The DPO pairs, judge scores, margins and "
                f"benchmark win rates below show how the recipe runs; {MECHANICS}. Only the numbers "
                "measured without a judge (verifiable instructions, IFEval) are measurements.",
                "warn",
            )
        )
    blocks += measured_section(run)
    blocks += stages_section(run)
    blocks += judge_section(run, findings)
    blocks += evaluation_section(run, findings)
    blocks += examples_section(run, findings)
    return blocks


# ---------------------------------------------------------------------------------------------- render

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:24px auto;
  max-width:1240px;padding:0 16px;color:#1f2328;line-height:1.45;font-size:15px}
h1{font-size:26px;margin-bottom:4px}h2{font-size:21px;border-bottom:1px solid #d0d7de;padding-bottom:4px;
  margin-top:32px}h3{font-size:17px;margin-top:22px}
.wrap{overflow-x:auto;margin:8px 0 14px}
table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa;font-weight:600}
tr:nth-child(even) td{background:#fafbfc}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.s{white-space:nowrap}
table.text td{white-space:pre-wrap;min-width:260px;max-width:520px;font-size:13px}
p.note{color:#57606a;font-size:13px}
p.warn{background:#fff8c5;border:1px solid #d4a72c;border-left:6px solid #bf8700;padding:8px 12px;
  border-radius:4px;font-weight:600}
img{max-width:100%;height:auto;display:block;margin:10px 0 18px;border:1px solid #eaeef2}
ul{padding-left:22px}li{margin:3px 0}
"""

SCRIPT = """
window.addEventListener("load", function () {
  var imgs = document.querySelectorAll("img");
  var loaded = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (imgs[i].complete && imgs[i].naturalWidth > 0) loaded++;
  }
  document.body.dataset.images = loaded + "/" + imgs.length;
});
"""

_NUMERIC = re.compile(r"^[-+$]?[\d,]*\.?\d+%?$|^-$")


def _cell_class(cell: str, text: bool) -> str:
    if text:
        return ""
    if _NUMERIC.match(cell):
        return ' class="n"'
    return ' class="s"' if len(cell) <= 32 else ""


def to_html(blocks: list[Block], title: str) -> str:
    """One self-contained page: inline CSS, PNGs as data URIs, no network."""
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title><style>{CSS}</style>",
        f"<script>{SCRIPT}</script></head><body>",
    ]
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            out.append(f'<p class="{b.kind}">{e(b.text)}</p>')
        elif isinstance(b, Bullets):
            out.append("<ul>" + "".join(f"<li>{e(x)}</li>" for x in b.items) + "</ul>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{e(h)}</th>" for h in b.headers)
            body = "".join(
                "<tr>" + "".join(f"<td{_cell_class(c, b.text)}>{e(c)}</td>" for c in row) + "</tr>"
                for row in b.rows
            )
            cls = ' class="text"' if b.text else ""
            table = f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            out.append(f'<div class="wrap">{table}</div>')
        elif isinstance(b, Image):
            data = base64.b64encode(b.png).decode()
            src = f"data:image/png;base64,{data}"
            out.append(f'<img src="{src}" alt="{e(b.alt)}" title="{e(REPORT_DIR)}/{e(b.name)}">')
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _md_cell(text: str) -> str:
    # Markdown renderers pass HTML through: escape it, then keep the table on one line per row.
    return html.escape(text, quote=False).replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def to_markdown(blocks: list[Block]) -> str:
    """The same report as Markdown; images link report/<name>.png by relative path."""
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {_md_text(b.text)}")
        elif isinstance(b, Para):
            text = _md_text(b.text)
            out.append(
                f"> **Warning:** {text}" if b.kind == "warn" else f"*{text}*" if b.kind == "note" else text
            )
        elif isinstance(b, Bullets):
            out.append("\n".join(f"- {_md_text(x)}" for x in b.items))
        elif isinstance(b, Table):
            out.append(
                "\n".join(
                    [
                        "| " + " | ".join(_md_cell(h) for h in b.headers) + " |",
                        "|" + "|".join("---" for _ in b.headers) + "|",
                        *("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows),
                    ]
                )
            )
        elif isinstance(b, Image):
            out.append(f"![{_md_text(b.alt)}]({REPORT_DIR}/{b.name})")
    return "\n\n".join(out) + "\n"


def _md_text(text: str) -> str:
    return html.escape(text, quote=False).replace("\n", " ").replace("*", "\\*").replace("_", "\\_")


# ----------------------------------------------------------------------------------------------- write


def _write_bytes(path: str, data: bytes) -> bool:
    """Write ``data`` unless the file already holds exactly it; whether it wrote."""
    fs, p = storage.resolve(path)
    if storage.exists(path):
        with fs.open_input_stream(p) as f:
            if f.read() == data:
                return False
    fs.create_dir(posixpath.dirname(p), recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(data)
    return True


def write(run_dir: str) -> dict[str, Any]:
    """Write ``report.html``, ``report.md`` and ``report/*.png`` into the run folder ``run_dir`` (a local
    path or URI) from whatever stages it holds; files that would not change are not rewritten. Returns
    ``{"written": files written, "html": path, "md": path, "pngs": [paths], "stages": ["r1 prepare", ...],
    "judge_at_chance": bool}``. A missing run folder is a ``UserError``."""
    run = load_run(run_dir)
    blocks = build(run)
    images = [b for b in blocks if isinstance(b, Image)]
    png_dir = storage.join(run.run_dir, REPORT_DIR)
    pngs, written = [], 0
    for img in images:
        path = storage.join(png_dir, img.name)
        written += _write_bytes(path, img.png)
        pngs.append(path)
    for stale in storage.list_files(png_dir, ".png"):  # plots of an earlier report that no longer apply
        if stale not in pngs:
            fs, p = storage.resolve(stale)
            fs.delete_file(p)
            written += 1
    html_path = storage.join(run.run_dir, HTML_FILE)
    md_path = storage.join(run.run_dir, MD_FILE)
    written += _write_bytes(html_path, to_html(blocks, f"moaa run report: {run.run_id}").encode())
    written += _write_bytes(md_path, to_markdown(blocks).encode())
    return {
        "written": written,
        "html": html_path,
        "md": md_path,
        "pngs": pngs,
        "stages": [s.label for s in run.stages],
        "judge_at_chance": any(f.at_chance for f in judge_findings(run)),
    }


def one_line(result: dict[str, Any]) -> str:
    if not result.get("written", 1):
        return f"[report] {result['html']} is up to date with the run folder: nothing to do"
    stages = ", ".join(result["stages"]) or "no stages"
    chance = " (judge at chance: the mechanics, not quality)" if result["judge_at_chance"] else ""
    return (
        f"report: {stages}{chance}\n  {result['html']}\n  {result['md']}\n"
        f"  {len(result['pngs'])} plot(s): " + ", ".join(result["pngs"])
    )
