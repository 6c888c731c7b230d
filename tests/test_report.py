"""The run report: built from a synthetic run folder (real summary.json files and Parquet files of the
contracts), checked as files, as words (the judge at chance), and rendered in a real headless browser."""

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from moaa.core import schemas, storage
from moaa.core.config import UserError, load_config
from moaa.core.stage import Summary, TokenCount
from moaa.stages import report

ROOT = Path(__file__).resolve().parent.parent
SMOLLM = "/opt/moaa/models/smollm2/SmolLM2-135M-Instruct"  # is_embedded looks at the folder name only
TINY = "/opt/moaa/models/tiny/tiny-qwen2-c"
HUB_JUDGE = "Qwen/Qwen2.5-72B-Instruct"
LONG = "A long answer. " * 80  # 1,200 characters: cut at 600 with a note
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _summary(
    stage: str, round: int = 1, *, rows: int = 10, errors: int = 0, wall_s: float = 1.0, **kw
) -> Summary:
    return Summary(
        stage=stage,
        run_id="synthetic",
        round=round,
        rows=rows,
        errors=errors,
        wall_s=wall_s,
        tokens=kw.pop("tokens", {}),
        usd=kw.pop("usd", 0.0),
        outputs=kw.pop("outputs", {}),
        metrics=kw.pop("metrics", {}),
        config_hash="0123456789abcdef",
        moaa_version="0.1.0",
    )


def _stage(folder: Path, summary: Summary | None, config: dict[str, Any] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    status = "complete" if summary is not None else "running"
    storage.write_json(str(folder / "manifest.json"), {"status": status, "config": config or {}})
    if summary is not None:
        storage.write_json(str(folder / "summary.json"), summary.model_dump(mode="json"))
    return folder


def _judge_config(model: str) -> dict[str, Any]:
    return {
        "judge": {
            "mode": "moa",
            "judges": [{"model": model, "name": "judge-a"}, {"model": model, "name": "judge-b"}],
            "aggregator": {"model": model, "name": "judge-agg"},
        }
    }


def _provenance() -> dict[str, str]:
    return {"run_id": "synthetic", "config_hash": "0123456789abcdef", "moaa_version": "0.1.0"}


def _sft_rows(round: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(4):
        turns = 2 if i == 1 else 1
        messages, proposals = [], []
        for t in range(1, turns + 1):
            messages.append({"role": "user", "content": f"question {i} turn {t} <b>bold?</b>"})
            for layer, model in ((1, "prop-a"), (1, "prop-b"), (2, "agg")):
                text = "<script>alert(1)</script> proposal" if (i, model) == (0, "prop-a") else LONG
                proposals.append(
                    {
                        "turn": t,
                        "layer": layer,
                        "model": model,
                        "content": f"r{round} {model} answer {i}.{t} "
                        + (text if model != "agg" else "final"),
                        "prompt_tokens": 10,
                        "completion_tokens": 20,
                        "finish_reason": "stop",
                        "prompt": None,
                    }
                )
            messages.append({"role": "assistant", "content": f"r{round} aggregated answer {i}.{t} | pipe"})
        rows.append(
            {
                "prompt_id": f"{round}{i:063d}",
                "source": "ultrafeedback",
                "messages": messages,
                "n_turns": turns,
                "proposals": proposals,
                "aggregator_model": "agg",
                "error": "prompt too long" if i == 2 else None,
                "error_stage": None,
                **_provenance(),
            }
        )
    return rows


def _preference_rows() -> list[dict[str, Any]]:
    rows = []
    for i, (status, margin) in enumerate([("pair", 0.5), ("tie", None), ("pair", 0.75), ("pair", 0.25)]):
        pair = status == "pair"
        rows.append(
            {
                "prompt_id": f"p{i:063d}",
                "prompt": [{"role": "user", "content": f"dpo prompt {i}"}],
                "chosen": [{"role": "assistant", "content": f"chosen answer {i} " + LONG}] if pair else [],
                "rejected": [{"role": "assistant", "content": f"rejected answer {i} <i>x</i>"}]
                if pair
                else [],
                "error": None if pair else "no pair: all candidates tie",
                "status": status,
                "judge_mode": "moa",
                "chosen_score": 0.5 + margin / 2 if pair else None,
                "rejected_score": 0.5 - margin / 2 if pair else None,
                "score_margin": margin,
                **_provenance(),
            }
        )
    return rows


def _eval_rows(models: list[str]) -> list[dict[str, Any]]:
    base = {
        "ci": 0.9,
        "questions": 8,
        "answer_errors": 0,
        "judged": 8,
        "unparsed": 0,
        "judge_errors": 0,
        "parse_rate": 1.0,
        "answer_tokens": 100,
        "judge_tokens": 1000,
        "usd": 0.0,
        "judge": "smollm2-judge",
        "details": "{}",
        **_provenance(),
    }
    rows = []
    for k, model in enumerate(models):
        for bench, metric, score, note in [
            ("mt_bench", "mt_bench_rating", 5.0 - k, None),
            ("arena_hard", "arena_hard_score", 60.0 - 10 * k, None),
            ("alpaca_eval", "alpaca_eval_win_rate", 40.0 + k, "LC not computed: no df_gamed.csv configured"),
        ]:
            rows.append(
                {
                    **base,
                    "model": model,
                    "benchmark": bench,
                    "metric": metric,
                    "score": score,
                    "lower": score * 0.8,
                    "upper": score * 1.2,
                    "note": note,
                }
            )
        # a benchmark checked by code: no judge, no judge tokens, no judge caveat
        rows.append(
            {
                **base,
                "model": model,
                "benchmark": "ifeval",
                "metric": "ifeval_prompt_level_strict_acc",
                "score": 25.0 + 5 * k,
                "lower": 10.0,
                "upper": 45.0,
                "parse_rate": None,
                "judge_tokens": 0,
                "judge": "none: checked by code (IFEval's checkers)",
                "note": None,
                "details": json.dumps({"prompt_level_loose_acc": 31.25, "inst_level_strict_acc": 40.0}),
            }
        )
    return rows


def build_run(
    runs_dir: Path, judge: str = SMOLLM, accuracy: float = 0.5429, pairs: int = 35, run_id: str = "synthetic"
) -> Path:
    """A run folder with every stage in round 1 and generate_sft + generate_dpo in round 2."""
    run = runs_dir / run_id
    tokens = {"propose/prop-a": TokenCount(prompt_tokens=100, completion_tokens=200, calls=4, usd=0.01)}
    _stage(run / "prepare", _summary("prepare", rows=4, errors=1, wall_s=0.2, metrics={"rows_in": 5}))
    for r, base in ((1, run), (2, run / "round-2")):
        sft = _stage(base / "generate_sft", None)
        storage.write_parquet(schemas.to_table(_sft_rows(r), "sft"), str(sft / "data" / "part-00000.parquet"))
        _stage(
            sft,
            _summary(
                "generate_sft",
                r,
                rows=4,
                errors=1,
                wall_s=30.0 * r,
                tokens=tokens,
                usd=0.01,
                outputs={"data": str(sft / "data")},
            ),
        )
        dpo = _stage(base / "generate_dpo", None)
        storage.write_parquet(
            schemas.to_table(_preference_rows(), "preference"), str(dpo / "data" / "part-00000.parquet")
        )
        metrics = {
            "judge_mode": "moa",
            "n": 3,
            "pairs": 3,
            "ties": 1,
            "identical": 0,
            "position_consistency": 0.2041,
            "verdict_parse_rate": 1.0,
            "mean_score_margin": 0.5,
            "judge_tokens_per_pair": 1800.0,
        }
        _stage(
            dpo,
            _summary(
                "generate_dpo", r, rows=4, wall_s=50.0, metrics=metrics, outputs={"data": str(dpo / "data")}
            ),
            _judge_config(judge),
        )
    _stage(
        run / "train_sft", _summary("train_sft", rows=3, wall_s=80.0, metrics={"steps": 2, "final_loss": 1.3})
    )
    _stage(
        run / "train_dpo",
        _summary("train_dpo", rows=3, wall_s=60.0, metrics={"steps": 2, "final_loss": 0.69}),
    )
    ev = _stage(run / "evaluate", None)
    storage.write_parquet(
        schemas.to_table(_eval_rows(["base", "train_dpo-r1"]), "eval_results"), str(ev / "results.parquet")
    )
    _stage(
        ev,
        _summary("evaluate", rows=48, wall_s=40.0, outputs={"results": str(ev / "results.parquet")}),
        {"judge": {"judges": [{"model": judge, "name": "eval-judge"}], "aggregator": None}},
    )
    mode = {
        "pairs": pairs,
        "accuracy": accuracy - 0.3,
        "accuracy_ties_half": accuracy,
        "ties": 0.6,
        "wrong": 0.1,
        "position_consistency": 0.25,
        "verdict_parse_rate": 1.0,
        "judge_tokens_per_decision": 900.0,
        "errors": 0,
    }
    _stage(
        run / "judge_eval",
        _summary("judge_eval", rows=pairs, wall_s=20.0, metrics={"modes": {"moa": mode}}),
        _judge_config(judge),
    )
    return run


def _png_size(path: str) -> tuple[int, int]:
    data = Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


# ------------------------------------------------------------------------------------------- the report


def test_report_of_a_whole_run_names_every_stage_plots_and_says_the_embedded_judge_is_at_chance(tmp_path):
    run = build_run(tmp_path)
    out = report.write(str(run))
    assert out["html"] == str(run / "report.html") and out["md"] == str(run / "report.md")
    html_text, md = Path(out["html"]).read_text(), Path(out["md"]).read_text()
    for stage in report.STAGES:
        assert stage in html_text and stage in md
    assert "r2 generate_sft" in out["stages"] and "r2 generate_dpo" in out["stages"]
    # every plot is a real PNG, in report/, embedded in the HTML and linked from the Markdown
    names = sorted(Path(p).name for p in out["pngs"])
    assert names == ["eval_scores.png", "score_margins.png", "wall_time.png"]
    for p in out["pngs"]:
        w, h = _png_size(p)
        assert w > 200 and h > 100 and Path(p).parent == run / "report"
        assert f"](report/{Path(p).name})" in md
    assert html_text.count('<img src="data:image/png;base64,') == len(out["pngs"])
    assert not re.search(r"(src|href)=\"(https?:)?//", html_text)  # nothing from the network
    # the judge at chance, in words, and no gain claimed
    assert out["judge_at_chance"]
    for text in (html_text, md):
        assert "The judge is at chance" in text and "the mechanics, not quality" in text
        assert "embedded SmolLM2-135M" in text
    # texts are escaped and long ones cut with a note
    assert "<script>alert" not in html_text and "&lt;script&gt;alert(1)&lt;/script&gt;" in html_text
    assert "<b>bold?</b>" not in html_text and "<b>bold?</b>" not in md
    assert "truncated: first 600 of" in html_text and "truncated: first 600 of" in md
    # the examples: proposals next to the aggregated answer, chosen next to rejected with scores
    assert "proposal: prop-a" in html_text and "aggregated (MoA answer): agg" in html_text
    assert "chosen (score 0.750)" in html_text and "rejected (score 0.250)" in html_text
    assert "r1 aggregated answer 1.2" in html_text  # the last turn of the 2-turn chat
    assert "prompt too long" not in html_text  # error rows are not examples
    # the evaluation notes are shown
    assert "LC not computed" in html_text and "LC not computed" in md
    # IFEval's rows: its metric, score and interval, "checked by code" as the judge, and the at-chance warning
    # says it is not about them
    row = next(line for line in md.splitlines() if "| ifeval |" in line and "| base |" in line)
    assert "ifeval_prompt_level_strict_acc" in row and "25.00" in row and "[10.00, 45.00]" in row, row
    assert "none: checked by code" in row and "[" not in row.split("none: checked by code")[1], row
    for text in (html_text, md):
        assert "The ifeval rows are checked by code, not by the judge: the judge being at chance does" in text
    assert report.write(str(run))["pngs"] == out["pngs"]  # written again, the same files


@pytest.mark.parametrize(
    ("judge", "accuracy", "pairs", "at_chance"),
    [
        (HUB_JUDGE, 0.5429, 35, True),  # within 0.5 +- 0.166: a coin flip
        (HUB_JUDGE, 0.9, 200, False),  # well outside 0.5 +- 0.069
        (TINY, 0.5429, 35, True),  # a tiny random model, measured at chance
    ],
    ids=["hub-judge-at-chance", "hub-judge-measured", "tiny-judge"],
)
def test_at_chance_follows_judge_eval_accuracy_and_the_judge_model(
    tmp_path, judge, accuracy, pairs, at_chance
):
    run = build_run(tmp_path, judge=judge, accuracy=accuracy, pairs=pairs)
    out = report.write(str(run))
    text = Path(out["html"]).read_text()
    assert out["judge_at_chance"] is at_chance
    assert ("The judge is at chance" in text) is at_chance
    if judge == TINY:
        assert "tiny random-weight model" in text
    if not at_chance:
        assert "not at chance" in text and "above [0.431, 0.569]" in text


@pytest.mark.parametrize(("correct", "above"), [(36, True), (22, False)], ids=["above-chance", "at-chance"])
def test_accuracy_on_verifiable_pairs_decides_the_warning_and_heads_the_report(tmp_path, correct, above):
    """generate_dpo's judge accuracy on its own verifiable pairs is a measurement: above the coin-flip
    interval the embedded judge is no longer called at chance there; inside it, it still is. The numbers
    checked by code come first, with their intervals."""
    run = build_run(tmp_path)
    summary = storage.read_json(str(run / "generate_dpo" / "summary.json"))
    summary["metrics"]["checks"] = {
        "prompts": 20,
        "chosen": {"answers": 10, "passed": 7, "rate": 0.7, "lower": 0.397, "upper": 0.892},
        "rejected": {"answers": 10, "passed": 2, "rate": 0.2, "lower": 0.057, "upper": 0.51},
        "accuracy": {
            "moa": {
                "pairs": 40,
                "correct": correct,
                "wrong": 40 - correct,
                "accuracy_ties_half": correct / 40,
                "lower": 0.77 if above else 0.39,
                "upper": 0.96 if above else 0.70,
                "above_chance": above,
            }
        },
    }
    storage.write_json(str(run / "generate_dpo" / "summary.json"), summary)
    sft = storage.read_json(str(run / "generate_sft" / "summary.json"))
    sft["metrics"]["checks"] = {
        "prompts": 20,
        "final": {"answers": 20, "passed": 9, "rate": 0.45, "lower": 0.26, "upper": 0.66},
        "answers": {"layer1/prop-a": {"answers": 20, "passed": 6, "rate": 0.3, "lower": 0.15, "upper": 0.52}},
        "final_vs": {"layer1/prop-a": {"prompts": 20, "difference": 0.15, "lower": -0.05, "upper": 0.35}},
    }
    storage.write_json(str(run / "generate_sft" / "summary.json"), sft)
    md = Path(report.write(str(run))["md"]).read_text()
    findings = {(f.stage.stage, f.stage.round): f for f in report.judge_findings(report.load_run(str(run)))}
    assert findings[("generate_dpo", 1)].at_chance is (not above)
    assert "accuracy on verifiable pairs" in findings[("generate_dpo", 1)].why
    assert (
        findings[("generate_dpo", 2)].at_chance and findings[("evaluate", 1)].at_chance
    )  # not measured there: the embedded prior stays
    measured = md.split("## Measured without a judge")[1].split("\n## ")[0].replace("\\_", "_")
    assert "chosen 70% [40, 89] of 10 vs rejected 20% [6, 51] of 10" in measured
    assert f"moa {correct / 40:.2f} [" in measured and ("(above chance)" in measured) is above
    assert "aggregated 45% [26, 66] of 20; vs prop-a +15 points [-5, +35]" in measured
    assert "ifeval (ifeval_prompt_level_strict_acc): base 25.0 [10.0, 45.0]" in measured
    assert md.index("## Measured without a judge") < md.index("## Stages")


def test_chance_interval():
    lo, hi = report.chance_interval(35)
    assert (round(lo, 3), round(hi, 3)) == (0.334, 0.666)
    assert report.accuracy_at_chance(0.5429, 35) and not report.accuracy_at_chance(0.7, 35)
    assert not report.accuracy_at_chance(0.3, 35)  # worse than chance is not "at chance"


def test_partial_run_unfinished_stage_and_empty_run(tmp_path):
    run = tmp_path / "partial"
    _stage(run / "prepare", _summary("prepare", rows=4, errors=1, wall_s=0.2))
    _stage(run / "generate_sft", None)  # started, not finished
    out = report.write(str(run))
    text = Path(out["html"]).read_text()
    assert out["stages"] == ["r1 prepare", "r1 generate_sft"]
    assert "not finished: no summary.json (manifest status: running)" in text
    assert "Not in this run: train_sft, generate_dpo, train_dpo, evaluate, judge_eval" in text
    assert [Path(p).name for p in out["pngs"]] == ["wall_time.png"] and not out["judge_at_chance"]
    empty = tmp_path / "empty"
    empty.mkdir()
    out = report.write(str(empty))
    assert out["pngs"] == [] and "No stage folders" in Path(out["md"]).read_text()


def test_a_missing_run_folder_is_a_user_error_naming_it_and_the_fix(tmp_path):
    with pytest.raises(UserError, match=r"no run folder at .*nope: run the stages first.*run_id="):
        report.write(str(tmp_path / "nope"))
    job = subprocess.run(
        [sys.executable, "-m", "jobs.report", f"runs_dir={tmp_path}", "run_id=nope"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert job.returncode == 1 and "no run folder at" in job.stderr and "Traceback" not in job.stderr


def test_job_prints_the_paths(tmp_path, capsys):
    from jobs import report as job

    build_run(tmp_path, run_id="exp1")
    cfg = load_config(
        job.CONFIG_CLASS, ROOT / "configs/report/tiny.yaml", [f"runs_dir={tmp_path}", "run_id=exp1"]
    )
    out = job.main(cfg)
    printed = capsys.readouterr().out
    assert out["html"] in printed and out["md"] in printed and all(p in printed for p in out["pngs"])


# --------------------------------------------------------------------------------- in a real browser


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium; installed with apt-get when missing and this runs as root (skip if that fails)."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(
            "chromium is not installed and cannot be (needs root and apt-get): apt-get install chromium"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    start = time.monotonic()
    try:
        done = subprocess.run(
            ["apt-get", "install", "-y", "chromium"], env=env, capture_output=True, text=True, timeout=900
        )
    except (subprocess.TimeoutExpired, OSError) as e:
        pytest.skip(f"could not install chromium: {e}")
    found = shutil.which("chromium")
    if done.returncode != 0 or not found:
        pytest.skip(f"could not install chromium (apt-get exit {done.returncode}): {done.stderr[-500:]}")
    print(f"\n[test_report] installed chromium in {time.monotonic() - start:.0f} s")
    return found


def _chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
    ]
    return subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=180)


def test_the_html_renders_offline_in_a_headless_browser_with_every_image_loaded(tmp_path, chromium):
    run = build_run(tmp_path / "runs")
    out = report.write(str(run))
    url = Path(out["html"]).as_uri()
    dom = _chromium(chromium, tmp_path / "profile", "--dump-dom", url)
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, f"no DOM dumped (exit {dom.returncode}): {dom.stderr[-2000:]}"
    n = len(out["pngs"])
    assert n == 3 and f'data-images="{n}/{n}"' in body.group(0)
    shot = tmp_path / "report_screenshot.png"
    done = _chromium(chromium, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,2000", url)
    assert shot.exists(), f"no screenshot (exit {done.returncode}): {done.stderr[-2000:]}"
    assert _png_size(str(shot)) == (1280, 2000)
    print(f"\n[test_report] screenshot of the report: {shot}")
