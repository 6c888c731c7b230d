"""generate_dpo on the real engine: real Ray Data, real vLLM (CPU build), tiny local models (random
weights, so their answers and evaluations are noise; the verdicts are constrained and must all parse).

One MoA-judge run (2 judges + aggregator judge, n=3) over two prompt shards is checked end to end, rerun
(resume: nothing redone) and its Parquet is trained on by train_dpo as is."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from moaa import preference, schemas, storage
from moaa.config import load_config
from moaa.preference import GenerateDPOConfig

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

QUESTIONS = ["Name a red fruit.", "What is 2+2?", "Say hi.", "Pick a color.", "Count to 3."]
LONG = "Summarize: " + "lorem ipsum dolor sit amet " * 160  # > 4096 byte tokens


def _row(pid, turns):
    msgs = []
    for k, u in enumerate(turns):
        msgs.append({"role": "user", "content": u})
        if k < len(turns) - 1:
            msgs.append({"role": "assistant", "content": "ok"})
    return {"prompt_id": pid, "source": "test", "messages": msgs, "n_turns": len(turns)}


@pytest.fixture(scope="module")
def prompts_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("prompts")
    rows = [_row(f"q{i}", [q]) for i, q in enumerate(QUESTIONS[:3])]
    storage.write_parquet(schemas.to_table(rows, "prompts"), str(d / "part-00000.parquet"))
    rows = [_row(f"q{i}", [q]) for i, q in enumerate(QUESTIONS[3:], 3)]
    rows += [_row("long", [LONG]), _row("multi", ["Hi", "Bye"])]
    storage.write_parquet(schemas.to_table(rows, "prompts"), str(d / "part-00001.parquet"))
    return d


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=3, include_dashboard=False)
    yield
    ray.shutdown()


def _cfg(tiny_models: Path, prompts_dir: Path, out: Path, *extra: str) -> GenerateDPOConfig:
    return load_config(
        GenerateDPOConfig,
        ROOT / "configs/generate_dpo/tiny.yaml",
        [
            f"policy.model={tiny_models}/tiny-qwen2-a",
            f"judge.judges.0.model={tiny_models}/tiny-llama-b",
            f"judge.judges.1.model={tiny_models}/tiny-qwen2-c",
            f"judge.aggregator.model={tiny_models}/tiny-qwen2-a",
            f"input_dir={prompts_dir}",
            f"output_dir={out}",
            "run_id=test",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def moa_run(tmp_path_factory, tiny_models, prompts_dir, ray_local):
    out = tmp_path_factory.mktemp("dpo") / "generate_dpo"
    cfg = _cfg(tiny_models, prompts_dir, out)
    summary = preference.run(cfg)
    rows = pq.read_table(out / "data").to_pylist()
    return {"out": out, "cfg": cfg, "summary": summary, "rows": rows}


def test_every_prompt_is_kept_and_the_schema_holds(moa_run):
    rows = moa_run["rows"]
    assert sorted(r["prompt_id"] for r in rows) == sorted([f"q{i}" for i in range(5)] + ["long"])
    for f in sorted((moa_run["out"] / "data").glob("*.parquet")):
        schemas.validate(pq.read_table(f), "preference", where=str(f))
    assert moa_run["summary"].metrics["multi_turn_skipped"] == 1
    long = next(r for r in rows if r["prompt_id"] == "long")
    assert long["status"] == "error" and "prompt too long" in long["error"] and long["chosen"] == []


def test_pairs_have_different_answers_and_ordered_scores(moa_run):
    rows = [r for r in moa_run["rows"] if r["prompt_id"] != "long"]
    pairs = [r for r in rows if r["status"] == "pair"]
    assert pairs, "no prompt gave a pair"
    for r in pairs:
        assert r["error"] is None and r["judge_mode"] == "moa"
        assert r["chosen"][0]["content"] != r["rejected"][0]["content"]
        assert r["chosen_score"] >= r["rejected_score"] and r["score_margin"] > 0
        assert r["candidates"][r["chosen_index"]]["content"] == r["chosen"][0]["content"]
        assert max(c["score"] for c in r["candidates"]) == r["chosen_score"]
    for r in rows:
        if r["status"] != "pair":
            assert r["error"].startswith("no pair") and r["status"] in ("tie", "identical")


def test_judge_calls_are_complete_and_every_final_verdict_parses(moa_run):
    for r in moa_run["rows"]:
        if r["status"] in ("error", "identical"):
            continue
        assert len(r["candidates"]) == 3
        distinct = {c["content"] for c in r["candidates"]}
        n_pairs = 6 if len(distinct) == 3 else 4
        by_role = {}
        for j in r["judgments"]:
            by_role.setdefault((j["role"], j["judge"]), []).append((j["a"], j["b"]))
        assert set(by_role) == {
            ("judge", "tiny-llama-b"),
            ("judge", "tiny-qwen2-c"),
            ("aggregator", "tiny-qwen2-a"),
        }
        for pairs in by_role.values():
            assert len(pairs) == n_pairs and len(set(pairs)) == n_pairs  # every ordered pair, both orders
        for j in r["judgments"]:
            assert j["raw"] and j["verdict"] in ("A", "B", "tie"), j  # judges' regex output parses too
        assert [c["judge"] for c in r["criteria"]] == ["tiny-llama-b", "tiny-qwen2-c"]
        assert all(len(c["criteria"]) == 3 for c in r["criteria"])
        assert r["position_pairs"] == n_pairs // 2
        roles = {t["role"] for t in r["tokens"]}
        assert roles == {"policy", "criteria", "judge", "aggregate"}
    s = moa_run["summary"].metrics
    assert s["verdict_parse_rate"] == 1.0
    assert s["judge_tokens_per_pair"] and s["judge_tokens_per_pair"] > 0
    assert s["pairs_per_min"] and 0 <= s["position_consistency"] <= 1
    # the policy and the aggregator judge are the same model with the same engine settings: one engine
    assert set(moa_run["summary"].tokens) >= {"policy/tiny-qwen2-a", "aggregate/tiny-qwen2-a"}


def test_rerun_of_the_finished_stage_writes_nothing(moa_run):
    before = {p: p.stat().st_mtime_ns for p in moa_run["out"].rglob("*")}
    assert preference.run(moa_run["cfg"]) == moa_run["summary"]
    assert {p: p.stat().st_mtime_ns for p in moa_run["out"].rglob("*")} == before
    manifest = json.loads((moa_run["out"] / "manifest.json").read_text())
    assert manifest["status"] == "complete" and "resumed" not in manifest


def test_preference_parquet_trains_in_train_dpo(moa_run, tiny_models, tmp_path):
    from jobs import train_dpo
    from moaa.train import TrainDPOConfig

    if moa_run["summary"].metrics["pairs"] == 0:
        pytest.skip("no pairs to train on")
    cfg = load_config(
        TrainDPOConfig,
        ROOT / "configs/train_dpo/tiny.yaml",
        [
            f"data={moa_run['out'] / 'data'}",
            f"model={tiny_models}/tiny-qwen2-a",
            f"runs_dir={tmp_path}",
            "per_device_batch_size=1",
        ],
    )
    result = train_dpo.main(cfg)
    assert result.rows == moa_run["summary"].metrics["pairs"]
