"""generate_dpo on the real engine: real Ray Data, real vLLM (CPU build), tiny local models (random
weights, so their answers and evaluations are noise; the verdicts are constrained and must all parse).

One MoA-judge run (2 judges + aggregator judge, n=3) over two prompt shards is checked end to end, rerun
(resume: nothing redone) and its Parquet is trained on by train_dpo as is. The moa_sft strategy runs on the
data of a real tiny generate_sft run (single-turn, multi-turn and failed rows)."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import NO_SYSTEM_TEMPLATE

from moaa.benchmarks import verifiable
from moaa.core import schemas, storage
from moaa.core.config import load_config
from moaa.core.manifests import ResumeError
from moaa.stages import generate_dpo, generate_sft
from moaa.stages.generate_dpo import GenerateDPOConfig
from moaa.stages.generate_sft import GenerateSFTConfig

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

QUESTIONS = ["Name a red fruit.", "What is 2+2?", "Say hi.", "Pick a color.", "Count to 3."]
LONG = "Summarize: " + "lorem ipsum dolor sit amet " * 160  # > 4096 byte tokens


# Verifiable instructions on four prompts (prepare's constraints column): the tiny policy's random texts
# sometimes hold a comma and are some words long, so candidates of one prompt pass and fail differently.
NO_COMMA = {"id": "punctuation:no_comma", "kwargs": "{}"}
WORDS = {"id": "length_constraints:number_words", "kwargs": '{"num_words": 3, "relation": "at least"}'}
CONSTRAINTS = {"q0": [NO_COMMA], "q1": [NO_COMMA, WORDS], "q2": [WORDS], "q3": [NO_COMMA]}


def _row(pid, turns):
    msgs = []
    for k, u in enumerate(turns):
        msgs.append({"role": "user", "content": u})
        if k < len(turns) - 1:
            msgs.append({"role": "assistant", "content": "ok"})
    return {
        "prompt_id": pid,
        "source": "test",
        "messages": msgs,
        "n_turns": len(turns),
        "constraints": CONSTRAINTS.get(pid, []),
    }


@pytest.fixture(scope="module")
def prompts_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("prompts")
    rows = [_row(f"q{i}", [q]) for i, q in enumerate(QUESTIONS[:3])]
    storage.write_parquet(schemas.to_table(rows, "prompts"), str(d / "part-00000.parquet"))
    rows = [_row(f"q{i}", [q]) for i, q in enumerate(QUESTIONS[3:], 3)]
    rows += [_row("long", [LONG]), _row("multi", ["Hi", "Bye"])]
    storage.write_parquet(schemas.to_table(rows, "prompts"), str(d / "part-00001.parquet"))
    return d


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
def moa_run(tmp_path_factory, tiny_models, prompts_dir, engines):
    out = tmp_path_factory.mktemp("dpo") / "generate_dpo"
    cfg = _cfg(tiny_models, prompts_dir, out)
    summary = generate_dpo.run(cfg, pools=engines.get(cfg.engine_models()))
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


def _value(verdicts: dict, a: int, b: int) -> float:
    return verdicts.get((a, b), 0.5)


def test_candidates_are_checked_and_judge_accuracy_on_verifiable_pairs_matches_a_recount(moa_run):
    """Each candidate carries IFEval's verdicts; the summary's chosen/rejected pass counts and each way of
    judging's accuracy on the verifiable pairs equal a recount from the stored verdicts."""
    rows = [r for r in moa_run["rows"] if r["status"] != "error"]
    checks = moa_run["summary"].metrics["checks"]
    assert checks["prompts"] == sum(bool(r["constraints"]) for r in rows) == 4
    counts = {k: {"pairs": 0, "correct": 0, "wrong": 0, "ties": 0} for k in ("moa", "single:tiny-llama-b")}
    chosen_passed = rejected_passed = n_pairs = 0
    for r in rows:
        if not r["constraints"]:
            assert all(c["follows"] == [] for c in r["candidates"])
            continue
        user = r["prompt"][-1]["content"]
        ok = []
        for c in r["candidates"]:
            assert (
                c["follows"]
                == verifiable.check(r["constraints"], c["content"], r["prompt_id"], user)["strict"]
            )
            ok.append(all(c["follows"]))
        if r["status"] == "pair":
            n_pairs += 1
            chosen_passed += ok[r["chosen_index"]]
            rejected_passed += ok[r["rejected_index"]]
        # the deciding (aggregator's) verdicts as stored, and the first judge's own, by hand
        moa = {(v["a"], v["b"]): v["value"] for v in r["final_verdicts"]}
        first = {
            (j["a"], j["b"]): {"A": 1.0, "B": 0.0}.get(j["verdict"], 0.5)
            for j in r["judgments"]
            if j["judge"] == "tiny-llama-b" and j["role"] == "judge"
        }
        texts = [c["content"] for c in r["candidates"]]
        for i in range(3):
            for j in range(i + 1, 3):
                if ok[i] == ok[j] or texts[i] == texts[j]:
                    continue
                p, f = (i, j) if ok[i] else (j, i)
                for label, verdicts in (("moa", moa), ("single:tiny-llama-b", first)):
                    value = (_value(verdicts, p, f) + 1 - _value(verdicts, f, p)) / 2
                    c = counts[label]
                    c["pairs"] += 1
                    c["correct" if value > 0.5 else "wrong" if value < 0.5 else "ties"] += 1
    assert checks["chosen"]["answers"] == checks["rejected"]["answers"] == n_pairs
    assert (checks["chosen"]["passed"], checks["rejected"]["passed"]) == (chosen_passed, rejected_passed)
    assert counts["moa"]["pairs"] > 0, "no verifiable pair: the instructions did not split the candidates"
    assert set(checks["accuracy"]) == {"moa", "jury", "single:tiny-llama-b", "single:tiny-qwen2-c"}
    for label, c in counts.items():
        got = checks["accuracy"][label]
        assert {k: got[k] for k in c} == c
        assert got["lower"] <= got["accuracy_ties_half"] <= got["upper"]


def test_the_verifier_mode_picks_pairs_by_the_checks_alone(
    moa_run, tiny_models, prompts_dir, tmp_path, engines
):
    # 8 samples a prompt: the tiny policy's random texts then split on the checks on some prompt whatever it
    # samples (with 3, one suite run had no prompt whose candidates differed, so no pair at all)
    cfg = _cfg(tiny_models, prompts_dir, tmp_path / "verifier", "judge.mode=verifier", "n=8")
    assert [m.display_name for m in cfg.engine_models()] == ["tiny-qwen2-a"]  # the policy, no judge
    summary = generate_dpo.run(cfg, pools=engines.get(cfg.engine_models()))
    rows = pq.read_table(tmp_path / "verifier" / "data").to_pylist()
    assert summary.metrics["judge_tokens"] == 0 and all(r["judgments"] == [] for r in rows)
    for r in rows:
        if r["status"] == "error":
            continue
        if not r["constraints"]:
            assert r["status"] != "pair" and "no verifiable instructions" in r["error"]
            continue
        passed = [sum(c["follows"]) for c in r["candidates"]]
        if r["status"] == "pair":
            assert passed[r["chosen_index"]] == max(passed) > passed[r["rejected_index"]] == min(passed)
        else:
            assert len(set(passed)) == 1 or len({c["content"] for c in r["candidates"]}) == 1
    assert summary.metrics["checks"]["accuracy"] == {}  # the oracle is not scored against itself


def test_a_judge_whose_template_rejects_a_system_role_still_judges(
    tiny_models, prompts_dir, tmp_path, engines
):
    """Gemma-2 (the paper's judge) has no system role: its template raises. The judge prompt's system text
    goes into the user turn, so every pair is judged instead of every row failing "chat template failed"."""
    import shutil

    judge_model = tmp_path / "tiny-no-system"
    shutil.copytree(tiny_models / "tiny-llama-b", judge_model)
    (judge_model / "chat_template.jinja").write_text(NO_SYSTEM_TEMPLATE)
    cfg = _cfg(
        tiny_models, prompts_dir, tmp_path / "out", "judge.mode=single", f"judge.judges.0.model={judge_model}"
    )
    summary = generate_dpo.run(cfg, pools=engines.get(cfg.engine_models()))
    rows = pq.read_table(tmp_path / "out" / "data").to_pylist()
    assert not [r["error"] for r in rows if r["error"] and "template" in r["error"]]
    judged = [r for r in rows if r["judgments"]]
    assert judged and summary.metrics["judge_tokens"] > 0
    assert all(j["verdict"] is not None for r in judged for j in r["judgments"])


def test_rerun_of_the_finished_stage_writes_nothing(moa_run):
    before = {p: p.stat().st_mtime_ns for p in moa_run["out"].rglob("*")}
    assert generate_dpo.run(moa_run["cfg"]) == moa_run["summary"]
    assert {p: p.stat().st_mtime_ns for p in moa_run["out"].rglob("*")} == before
    manifest = json.loads((moa_run["out"] / "manifest.json").read_text())
    assert manifest["status"] == "complete" and "resumed" not in manifest


def test_preference_parquet_trains_in_train_dpo(moa_run, tiny_models, tmp_path):
    from jobs import train_dpo
    from moaa.stages.train import TrainDPOConfig

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


# ------------------------------------------------------------------------------------- pairs=moa_sft

SFT_QUESTIONS = [*QUESTIONS, "Name a tree.", "Is ice cold?", "Spell cat."]


@pytest.fixture(scope="module")
def moa_sft_run(tmp_path_factory, tiny_models, engines):
    """A tiny generate_sft run (2 proposers + aggregator) in a run folder, then generate_dpo pairs=moa_sft
    chaining on it by the run layout; the engines are shared (same settings as the tiny judges)."""
    runs_dir = tmp_path_factory.mktemp("moa_sft")
    prompts = runs_dir / "prompts"
    rows = [_row(f"s{i}", [q]) for i, q in enumerate(SFT_QUESTIONS[:4])]
    storage.write_parquet(schemas.to_table(rows, "prompts"), str(prompts / "part-00000.parquet"))
    rows = [_row(f"s{i}", [q]) for i, q in enumerate(SFT_QUESTIONS[4:], 4)]
    rows += [_row("long", [LONG]), _row("multi", ["Hi", "Bye"])]
    storage.write_parquet(schemas.to_table(rows, "prompts"), str(prompts / "part-00001.parquet"))
    roles = {"proposers.0": "tiny-qwen2-a", "proposers.1": "tiny-llama-b", "aggregator": "tiny-qwen2-c"}
    engine = [f"{r}.{k}" for r in roles for k in ("max_model_len=4096", "num_cpus=0.4")]
    sft_cfg = load_config(
        GenerateSFTConfig,
        ROOT / "configs/generate_sft/tiny.yaml",
        [*(f"{r}.model={tiny_models}/{m}" for r, m in roles.items()), *engine]
        + [f"input_dir={prompts}", f"runs_dir={runs_dir}", "run_id=test"],
    )
    out = runs_dir / "generate_dpo-moa_sft"
    cfg = _cfg(tiny_models, prompts, out, f"runs_dir={runs_dir}", "pairs=moa_sft")
    pools = engines.get([*sft_cfg.engine_models(), *cfg.engine_models()])
    assert len(pools) == 3  # the three tiny models, each one engine for every role
    generate_sft.run(sft_cfg, pools=pools)
    summary = generate_dpo.run(cfg, pools=pools)
    sft_data = runs_dir / "test/generate_sft/data"
    return {
        "out": out,
        "cfg": cfg,
        "prompts": prompts,
        "summary": summary,
        "rows": pq.read_table(out / "data").to_pylist(),
        "sft_data": sft_data,
        "sft": {r["prompt_id"]: r for r in pq.read_table(sft_data).to_pylist()},
    }


def test_moa_sft_keeps_every_sft_row_once_with_the_aggregate_as_chosen(moa_sft_run):
    rows, sft = moa_sft_run["rows"], moa_sft_run["sft"]
    assert (
        sorted(r["prompt_id"] for r in rows)
        == sorted(sft)
        == sorted([f"s{i}" for i in range(8)] + ["long", "multi"])
    )
    files = sorted(f.name for f in (moa_sft_run["out"] / "data").glob("*.parquet"))
    assert files == sorted(f.name for f in moa_sft_run["sft_data"].glob("*.parquet"))
    for f in files:
        schemas.validate(pq.read_table(moa_sft_run["out"] / "data" / f), "preference", where=f)
    long = next(r for r in rows if r["prompt_id"] == "long")
    assert sft["long"]["error"] and long["status"] == "error" and long["error"] == sft["long"]["error"]
    assert long["error_stage"].startswith("generate_sft/turn1/") and long["chosen"] == []
    for r in rows:
        assert r["policy_model"] is None and r["judge_mode"] == "moa"
        if r["status"] == "error":
            continue
        s = sft[r["prompt_id"]]
        last = [p for p in s["proposals"] if p["turn"] == s["n_turns"] and p["layer"] == 1]
        assert r["prompt"] == s["messages"][:-1] and r["prompt"][-1]["role"] == "user"
        assert [c["content"] for c in r["candidates"]] == [s["messages"][-1]["content"]] + [
            p["content"] for p in last
        ]
        assert {t["role"] for t in r["tokens"]} <= {"criteria", "judge", "aggregate"}
        if r["status"] == "pair":
            assert r["error"] is None and r["chosen_index"] == 0 and r["rejected_index"] >= 1
            assert r["chosen"][0]["content"] == s["messages"][-1]["content"]
            assert r["rejected"][0]["content"] in [p["content"] for p in last]
            assert r["rejected"][0]["content"] != r["chosen"][0]["content"] and r["score_margin"] > 0
            assert r["rejected_score"] == min(
                c["score"] for c in r["candidates"][1:] if c["content"] != r["chosen"][0]["content"]
            )
        else:
            assert r["chosen"] == [] and r["error"].startswith("no pair")
    multi = next(r for r in rows if r["prompt_id"] == "multi")
    assert [m["role"] for m in multi["prompt"]] == ["user", "assistant", "user"]


def test_moa_sft_summary_has_the_default_keys_and_the_aggregate_top_rate(moa_sft_run, moa_run):
    s, rows = moa_sft_run["summary"], moa_sft_run["rows"]
    m = s.metrics
    assert set(m) == set(moa_run["summary"].metrics)
    assert m["pairs_strategy"] == "moa_sft" and m["n"] is None and m["multi_turn_skipped"] == 0
    assert m["pairs"] == sum(r["status"] == "pair" for r in rows) > 0
    assert s.rows == len(rows) and s.errors == 1 and m["verdict_parse_rate"] == 1.0
    judged = [r for r in rows if r["status"] in ("pair", "tie")]
    top = sum(generate_dpo.aggregate_on_top(r["candidates"]) for r in judged)
    assert m["aggregate_top_rate"] == round(top / len(judged), 4)
    assert not any(k.startswith("policy/") for k in s.tokens)
    d = moa_run["summary"].metrics
    assert d["pairs_strategy"] == "policy_samples" and d["aggregate_top_rate"] is None and d["n"] == 3
    assert all(r["policy_model"] == "tiny-qwen2-a" for r in moa_run["rows"])


def test_moa_sft_rerun_does_nothing_and_the_other_strategy_is_refused_there(moa_sft_run):
    assert generate_dpo.run(moa_sft_run["cfg"]) == moa_sft_run["summary"]
    other = moa_sft_run["cfg"].model_copy(update={"pairs": "policy_samples"})
    with pytest.raises(ResumeError, match="config hash"):
        generate_dpo.run(other)
