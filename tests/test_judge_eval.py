"""judge_eval: readers for the three labeled layouts (fast) and a real-engine run of all three modes on a
small labeled set built from the shared UltraFeedback copy (slow)."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from moaa.core import schemas, storage
from moaa.core.config import ConfigError, load_config
from moaa.stages import judge_eval
from moaa.stages.judge_eval import JudgeEvalConfig

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"


def test_ultrafeedback_layout_labels_best_over_worst():
    rows, skipped = judge_eval.labeled_pairs(str(ROOT / "data/samples/ultrafeedback.jsonl"))
    records = [json.loads(x) for x in (ROOT / "data/samples/ultrafeedback.jsonl").read_text().splitlines()]
    assert len(rows) + skipped == len(records)
    r, rec = rows[0], records[int(rows[0]["prompt_id"])]
    scored = sorted(rec["completions"], key=lambda c: c["overall_score"])
    assert r["candidates"] == [scored[-1]["response"], scored[0]["response"]]
    assert r["messages"] == [{"role": "user", "content": rec["instruction"]}]


def test_pairs_layout_strings_and_conversations(tmp_path):
    conv = {
        "prompt": [{"role": "user", "content": "Q"}],
        "chosen": [{"role": "assistant", "content": "good"}],
        "rejected": [{"role": "assistant", "content": "bad"}],
    }
    storage.write_parquet(
        schemas.to_table([{**conv, "prompt_id": "x", "error": None}], "preference"),
        str(tmp_path / "p.parquet"),
    )
    plain = tmp_path / "p.jsonl"
    plain.write_text(json.dumps({"prompt": "Q", "chosen": "good", "rejected": "bad"}) + "\n")
    for path in (tmp_path / "p.parquet", plain):
        rows, _ = judge_eval.labeled_pairs(str(path))
        assert rows[0]["messages"] == [{"role": "user", "content": "Q"}] and rows[0]["candidates"] == [
            "good",
            "bad",
        ]


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data not present")
def test_real_files_read():
    rows, _ = judge_eval.labeled_pairs(
        str(SHARED / "ultrafeedback/trl-lib_ultrafeedback_binarized.eval_clean.jsonl")
    )
    assert len(rows) == 200
    rows, _ = judge_eval.labeled_pairs(str(SHARED / "human_pref/LLMBar_Natural.dataset.json"))
    raw = json.loads((SHARED / "human_pref/LLMBar_Natural.dataset.json").read_text())
    assert len(rows) == len(raw)
    assert rows[0]["candidates"][0] == raw[0][f"output_{raw[0]['label']}"]
    with pytest.raises(ValueError, match="cannot tell the layout"):
        judge_eval.detect_format({"question": "?"})


def _row(scores, status="pair", tokens=10, consistent=1, flips=0):
    cands = [{"index": i, "content": str(i), "score": s} for i, s in enumerate(scores)]
    return {
        "status": status,
        "candidates": cands,
        "judge_mode": "single",
        "judge_tokens": tokens,
        "position_pairs": 1,
        "position_consistent": consistent,
        "position_flips": flips,
        "judgments": [
            {"role": "judge", "judge": "j", "verdict": "A"},
            {"role": "judge", "judge": "j", "verdict": None},
        ],
    }


def test_metrics_accuracy_ties_and_consistency():
    rows = [
        _row([1, 0]),
        _row([0.75, 0.25]),
        _row([0, 1], flips=1, consistent=0),
        _row([0.5, 0.5], status="tie"),
        _row([0.5, 0.5], status="error"),
    ]
    m = judge_eval.metrics(rows, ["j"])
    assert m["pairs"] == 4 and m["errors"] == 1
    assert m["accuracy"] == 0.5 and m["wrong"] == 0.25 and m["ties"] == 0.25
    assert m["accuracy_ties_half"] == 0.625
    assert m["position_consistency"] == 0.75 and m["position_flip_rate"] == 0.25
    assert m["verdict_parse_rate"] == 0.5 and m["judge_tokens_per_decision"] == 10
    assert "accuracy" in judge_eval.table({"single": m}).splitlines()[0]


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data not present")
def test_judge_eval_runs_all_modes_on_real_labeled_pairs(tmp_path, tiny_models, engines):
    # The shortest real UltraFeedback pairs (the tiny models' tokenizer is byte-level), as plain JSONL.
    src = SHARED / "ultrafeedback/trl-lib_ultrafeedback_binarized.eval_clean.jsonl"
    records = [json.loads(x) for x in src.read_text().splitlines()]
    records.sort(key=lambda r: len(r["prompt"]) + len(r["chosen"]) + len(r["rejected"]))
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records[:4]))
    cfg = load_config(
        JudgeEvalConfig,
        ROOT / "configs/judge_eval/tiny.yaml",
        [
            f"data={data}",
            f"output_dir={tmp_path / 'out'}",
            f"judge.judges.0.model={tiny_models}/tiny-llama-b",
            f"judge.judges.1.model={tiny_models}/tiny-qwen2-c",
            f"judge.aggregator.model={tiny_models}/tiny-qwen2-a",
        ],
    )
    summary = judge_eval.run(cfg, pools=engines.get(cfg.engine_models()))
    report = summary.metrics
    assert summary.rows == 4 and report["judged_as"] == "moa" and summary.wall_s > 0
    assert set(report["modes"]) == {"moa", "jury", "single"}
    for mode, m in report["modes"].items():
        assert m["pairs"] + m["errors"] == 4
        assert 0 <= m["accuracy"] <= 1 and m["accuracy"] + m["wrong"] + m["ties"] == pytest.approx(1)
        assert m["verdict_parse_rate"] == 1.0
        rows = pq.read_table(tmp_path / "out" / mode).to_pylist()
        assert {r["judge_mode"] for r in rows} == {mode}
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*")}
    assert judge_eval.run(cfg) == summary  # finished: the stored summary, nothing written
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*")} == before
    # single pays for one judge, jury for two, moa for two plus the aggregator
    t = {k: v["judge_tokens_per_decision"] for k, v in report["modes"].items()}
    assert t["single"] < t["jury"] < t["moa"]
    print(judge_eval.table(report["modes"]))


def test_jury_and_single_need_no_aggregator():
    cfg = load_config(JudgeEvalConfig, None, ["modes=[jury, single]", "judge.aggregator=null"])
    assert cfg.pass_judge().mode == "jury" and cfg.pass_judge().models() == cfg.judge.judges
    with pytest.raises(ConfigError, match="mode moa needs judge.aggregator"):
        load_config(JudgeEvalConfig, None, ["modes=[moa, single]", "judge.aggregator=null"])


def test_bad_inputs_are_user_errors(tmp_path):
    from moaa.core.config import UserError

    with pytest.raises(UserError, match="not found"):
        judge_eval.labeled_pairs(str(tmp_path / "nope.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"prompt": "Q", "chosen": "a", "rejected": "b"})
        + "\n"
        + json.dumps({"prompt": "Q"})
        + "\n"
    )
    with pytest.raises(UserError, match="row 1 does not fit the pairs layout"):
        judge_eval.labeled_pairs(str(bad), "pairs")


def test_generate_dpo_without_prompts_leaves_no_output(tmp_path):
    from moaa.core.manifests import MissingInputError
    from moaa.stages import generate_dpo

    (tmp_path / "empty").mkdir()
    cfg = load_config(
        generate_dpo.GenerateDPOConfig,
        None,
        [f"input_dir={tmp_path / 'empty'}", f"output_dir={tmp_path / 'out'}"],
    )
    with pytest.raises(MissingInputError, match="jobs.prepare"):
        generate_dpo.run(cfg)
    assert not (tmp_path / "out").exists()
    cfg = load_config(generate_dpo.GenerateDPOConfig, None, [f"runs_dir={tmp_path}", "run_id=none"])
    with pytest.raises(MissingInputError, match="prepare"):
        generate_dpo.run(cfg)


def test_a_generate_dpo_folder_reads_as_verifiable_pairs(tmp_path):
    """Each (passing, failing) candidate pair of a checked preference row becomes a labeled pair, the
    passing one first; rows without such a pair are counted as skipped."""
    from moaa.judging import judge

    def row(pid, candidates, constraints):
        state = judge.init_state(
            {"prompt_id": pid, "messages": [{"role": "user", "content": "Q?"}], "constraints": constraints},
            "s",
        )
        state["candidates"] = candidates
        state["candidate_meta"] = [{"finish_reason": "stop", "completion_tokens": 1}] * len(candidates)
        return judge.decide(state, "verifier", ["j"])

    no_comma = [{"id": "punctuation:no_comma", "kwargs": "{}"}]
    rows = [
        row("a", ["x, y", "x y", "z, w"], no_comma),  # 1 passes: (1, 0) and (1, 2)
        row("b", ["x y", "z w"], no_comma),  # both pass: no pair
        row("c", ["x, y", "z"], []),  # no instructions
    ]
    (tmp_path / "data").mkdir()
    storage.write_parquet(schemas.to_table(rows, "preference"), str(tmp_path / "data" / "part-00000.parquet"))
    got, skipped = judge_eval.labeled_pairs(str(tmp_path / "data"))
    assert skipped == 2
    assert [(r["prompt_id"], r["candidates"]) for r in got] == [
        ("a:1>0", ["x y", "x, y"]),
        ("a:1>2", ["x y", "z, w"]),
    ]
    assert got[0]["messages"] == [{"role": "user", "content": "Q?"}]
    # the label's verdicts travel with the pair: its state is not checked again
    assert [r["checks"] for r in got] == [[[True], [False]]] * 2
    assert judge.init_state(got[0], "s")["checks"] == [[True], [False]]
    with pytest.raises(judge_eval.LabeledDataError, match="none of its 1 rows has a verifiable pair"):
        storage.write_parquet(schemas.to_table(rows[1:2], "preference"), str(tmp_path / "one.parquet"))
        judge_eval.labeled_pairs(str(tmp_path / "one.parquet"))
