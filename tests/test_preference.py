"""generate_dpo's pair strategies without engines: moa_sft's row functions on hand-made generate_sft rows,
its pick against the aggregated answer, the config and the plan (the engine run is in test_generate_dpo)."""

import hashlib
import json

import pytest

from moaa.core import manifests, schemas, storage
from moaa.core.config import load_config
from moaa.engine.settings import Completion
from moaa.judging import judge
from moaa.judging.judge import JudgeConfig
from moaa.stages import generate_dpo
from moaa.stages.generate_dpo import GenerateDPOConfig


def _p(turn, layer, model, content):
    return {
        "turn": turn,
        "layer": layer,
        "model": model,
        "content": content,
        "prompt_tokens": 5,
        "completion_tokens": len(content),
        "finish_reason": "stop" if model != "b" else "length",
        "prompt": None,
    }


def _sft_row(pid="p1", turns=(("Q?", ["pa", "pb"], "AGG"),), layers=2, error=None, error_stage=None):
    """A generate_sft row: per turn (user text, the proposals of every proposer layer, the aggregated
    answer); layer l's proposals are named f"{text}@{l}" below the last proposer layer."""
    messages = [{"role": "system", "content": "Be brief."}]
    proposals = []
    for t, (user, props, answer) in enumerate(turns, 1):
        messages.append({"role": "user", "content": user})
        for layer in range(1, layers):
            last = layer == layers - 1
            proposals += [_p(t, layer, m, c if last else f"{c}@{layer}") for m, c in zip("ab", props)]
        proposals.append(_p(t, layers, "agg", answer))
        messages.append({"role": "assistant", "content": answer})
    return {
        "prompt_id": pid,
        "source": "test",
        "messages": messages,
        "n_turns": len(turns),
        "proposals": proposals,
        "aggregator_model": "agg",
        "error": error,
        "error_stage": error_stage,
        "run_id": "r",
        "config_hash": "h",
        "moaa_version": "0",
    }


def test_a_single_turn_row_gives_the_aggregate_first_then_its_proposals():
    s = generate_dpo.sft_state(_sft_row(), "part-00000.parquet")
    assert s["prompt"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q?"}]
    assert s["candidates"] == ["AGG", "pa", "pb"]
    assert s["candidate_meta"] == [
        {"finish_reason": "stop", "completion_tokens": 3},
        {"finish_reason": "stop", "completion_tokens": 2},
        {"finish_reason": "length", "completion_tokens": 2},
    ]
    assert s["error"] is None and s["shard"] == "part-00000.parquet" and s["prompt_id"] == "p1"


def test_verifiable_checks_are_computed_once_and_generate_sft_s_verdicts_are_reused(monkeypatch):
    """decide runs once per mode on a judge_eval state, and moa_sft candidates were already checked in
    generate_sft: the IFEval checkers run once per state, and not at all for a moa_sft state."""
    from moaa.benchmarks import verifiable

    constraints = [{"id": "punctuation:no_comma", "kwargs": "{}"}]
    row = _sft_row(turns=(("Q?", ["a, b", "ab"], "AGG"),))
    row["constraints"] = constraints
    for p in row["proposals"]:
        p["follows"] = ["," not in p["content"]]
    s = generate_dpo.sft_state(row, "x")
    calls = []
    real = verifiable.check
    monkeypatch.setattr(verifiable, "check", lambda *a: calls.append(a) or real(*a))
    assert judge.candidate_checks(s) == [[True], [False], [True]] and calls == []
    fresh = {**s, "checks": None}
    for _ in range(3):  # three modes on one state
        assert judge.candidate_checks(fresh) == [[True], [False], [True]]
    assert len(calls) == 3  # once per candidate, on the first call only
    row["proposals"][0].pop("follows")  # an older generate_sft row without verdicts: checked here
    assert generate_dpo.sft_state(row, "x")["checks"] is None


def test_a_multi_turn_row_uses_its_last_turn_and_last_proposer_layer():
    row = _sft_row(turns=(("Hi", ["h1", "h2"], "HELLO"), ("Bye?", ["b1", "b2"], "BYE")), layers=3)
    s = generate_dpo.sft_state(row, "x")
    assert [m["content"] for m in s["prompt"]] == ["Be brief.", "Hi", "HELLO", "Bye?"]
    assert s["prompt"][-1]["role"] == "user"
    # layer 2 is the last proposer layer (layer 1's texts are "b1@1", "b2@1"); turn 1 is history
    assert s["candidates"] == ["BYE", "b1", "b2"]


def test_a_failed_sft_row_keeps_its_error_and_gets_no_candidates():
    row = _sft_row(error="prompt too long: 5000 tokens", error_stage="turn1/layer1/a, turn1/layer1/b")
    row["messages"], row["proposals"] = [{"role": "system", "content": "Be brief."}], []
    s = generate_dpo.sft_state(row, "x")
    assert s["candidates"] == [] and s["error"] == "prompt too long: 5000 tokens"
    assert s["error_stage"] == "generate_sft/turn1/layer1/a, turn1/layer1/b"
    out = generate_dpo.decide_against_aggregate(s, JudgeConfig(mode="single"))
    assert out["status"] == "error" and out["chosen"] == [] and out["error"].startswith("prompt too long")
    # a row without its last turn's answers (not written by generate_sft) is an error row too, not dropped
    broken = _sft_row()
    broken["proposals"] = []
    s = generate_dpo.sft_state(broken, "x")
    assert s["candidates"] == [] and s["error_stage"] == "moa_sft" and "last turn" in s["error"]


@pytest.mark.parametrize(
    "cands,score,expected",
    [
        (["A", "p", "q"], [0.75, 0.5, 0.25], (0, 2, "pair")),
        (["A", "p", "q"], [0.5, 1.0, 0.0], (0, 2, "pair")),  # not the top, but above the worst: a pair
        (["A", "p", "q"], [0.25, 0.5, 0.75], (None, None, "tie")),  # below every proposal
        (["A", "p", "q"], [0.5, 0.5, 0.5], (None, None, "tie")),  # equal is not better
        (["A", "p", "q"], [0.75, 0.25, 0.25], (0, 1, "pair")),  # first index on equal scores
        (["A", "A", "q"], [0.5, 0.0, 0.5], (None, None, "tie")),  # a copy of A is never rejected
        (["A", "A"], [0.5, 0.5], (None, None, "identical")),
    ],
)
def test_the_pick_is_the_aggregate_against_the_worst_different_proposal(cands, score, expected):
    assert generate_dpo.select_against_aggregate(cands, score) == expected


def _judged(cands, quality):
    """A state judged by one judge (mode single) that prefers the higher ``quality`` in both orders."""
    jc = JudgeConfig(mode="single")
    name = jc.judge_names()[0]
    state = judge.init_state(
        {
            "prompt_id": "p",
            "source": "t",
            "messages": [{"role": "user", "content": "Q?"}],
            "candidates": cands,
        },
        "x",
    )
    convs = judge.build_pairs(state, judge=name)
    verdicts = []
    for a, b in judge.ordered_pairs(cands):
        v = "A" if quality[a] > quality[b] else "B" if quality[a] < quality[b] else "tie"
        verdicts.append(Completion(texts=[f"Evaluation: x\nVerdict: {v}"], completion_tokens=[3]))
    judge.apply_pairs(state, verdicts, convs, judge=name)
    return state, jc


def test_decide_keeps_the_judges_scores_and_picks_against_the_aggregate():
    # the judge likes proposal 1 best: the default strategy would choose it; moa_sft still chooses the
    # aggregate, and rejects proposal 2, which it beats
    state, jc = _judged(["AGG", "best", "worst"], [1, 2, 0])
    row = generate_dpo.decide_against_aggregate(state, jc)
    assert judge.decide(state, jc.mode, jc.judge_names())["chosen_index"] == 1
    assert (row["status"], row["chosen_index"], row["rejected_index"], row["error"]) == ("pair", 0, 2, None)
    assert row["chosen"] == [{"role": "assistant", "content": "AGG"}]
    assert row["rejected"] == [{"role": "assistant", "content": "worst"}]
    assert row["score_margin"] == row["chosen_score"] - row["rejected_score"] > 0
    assert not generate_dpo.aggregate_on_top(row["candidates"])
    provenance = {"policy_model": None, "run_id": "r", "config_hash": "h", "moaa_version": "0"}
    schemas.to_table([{**row, **provenance}], "preference")

    state, jc = _judged(["AGG", "p", "q"], [0, 1, 1])  # the aggregate loses to both
    row = generate_dpo.decide_against_aggregate(state, jc)
    assert (row["status"], row["chosen"], row["rejected"]) == ("tie", [], [])
    assert row["error"] == "no pair: the aggregated answer does not score above the worst proposal"

    state, jc = _judged(["AGG", "p", "q"], [2, 1, 0])
    row = generate_dpo.decide_against_aggregate(state, jc)
    assert row["status"] == "pair" and generate_dpo.aggregate_on_top(row["candidates"])


def test_aggregate_on_top_ignores_copies_of_the_aggregate():
    c = [{"content": "A", "score": 0.5}, {"content": "A", "score": 0.75}, {"content": "q", "score": 0.25}]
    assert generate_dpo.aggregate_on_top(c)
    assert not generate_dpo.aggregate_on_top(c[:2]) and not generate_dpo.aggregate_on_top([])
    assert not generate_dpo.aggregate_on_top([c[0], {"content": "q", "score": 0.5}])  # a tie is not on top


# ----------------------------------------------------------------------------------------- config, plan


def test_moa_sft_ignores_the_policy_and_reads_this_rounds_generate_sft_data(tmp_path):
    cfg = load_config(GenerateDPOConfig, None, [f"runs_dir={tmp_path}", "run_id=r", "pairs=moa_sft", "n=1"])
    assert cfg.in_dir() == str(tmp_path / "r/generate_sft/data")
    round2 = load_config(GenerateDPOConfig, None, [f"runs_dir={tmp_path}", "pairs=moa_sft", "round=2"])
    assert round2.in_dir() == str(tmp_path / "demo/round-2/generate_sft/data")
    assert cfg.engine_models() == cfg.judge.models()  # no policy engine
    other_policy = load_config(
        GenerateDPOConfig,
        None,
        [f"runs_dir={tmp_path}", "run_id=r", "pairs=moa_sft", "policy.model=some/hub-model", "n=7"],
    )
    assert other_policy.fingerprint() == cfg.fingerprint()
    with pytest.raises(Exception, match="n must be"):
        load_config(GenerateDPOConfig, None, ["n=1"])


def test_the_strategy_is_in_the_fingerprint_and_the_default_hash_is_unchanged(tmp_path):
    base = [f"runs_dir={tmp_path}", "run_id=r"]
    default = load_config(GenerateDPOConfig, None, base)
    sft = load_config(GenerateDPOConfig, None, [*base, "pairs=moa_sft"])
    assert default.fingerprint() != sft.fingerprint()
    # a folder written before there were strategies still resumes under policy_samples
    old = {
        "policy": default.policy_model().output_settings(),
        "n": default.n,
        "judge": default.judge.fingerprint_data(),
        "input": default.in_dir(),
        "limit": default.limit,
    }
    assert default.fingerprint() == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]


def _write_sft(folder, name, rows):
    storage.write_parquet(schemas.to_table(rows, "sft"), str(folder / name))


def test_plan_sft_needs_a_finished_generate_sft_and_splits_the_limit_by_file(tmp_path):
    base = [f"runs_dir={tmp_path}", "run_id=r", "pairs=moa_sft"]
    with pytest.raises(manifests.MissingInputError, match="generate_sft"):
        generate_dpo.plan(load_config(GenerateDPOConfig, None, base))
    sft = tmp_path / "r/generate_sft"
    (sft / "data").mkdir(parents=True)
    _write_sft(sft / "data", "part-00000.parquet", [_sft_row(f"a{i}") for i in range(3)])
    _write_sft(sft / "data", "part-00001.parquet", [_sft_row("b0", turns=(("x", ["1", "2"], "y"),) * 2)])
    manifests.start_manifest(str(sft), "generate_sft", "r", "h", {})
    with pytest.raises(manifests.MissingInputError, match="not finished"):
        generate_dpo.plan(load_config(GenerateDPOConfig, None, base))
    manifests.finish_manifest(str(sft), manifests.load_manifest(str(sft)))
    planned, skipped = generate_dpo.plan(load_config(GenerateDPOConfig, None, base))
    assert [(s.name, s.rows) for s in planned] == [("part-00000.parquet", 3), ("part-00001.parquet", 1)]
    assert skipped == 0  # multi-turn rows are judged on their last turn
    planned, _ = generate_dpo.plan(load_config(GenerateDPOConfig, None, [*base, "limit=2"]))
    assert [s.rows for s in planned] == [2, 0]
    assert len(generate_dpo.load_sft(planned[0].source, planned[0].params)) == 2
    # sft_dir: any folder, no manifest needed; prompts shards there are refused by schema
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    rows = [{"prompt_id": "q", "source": "t", "messages": [{"role": "user", "content": "Q"}], "n_turns": 1}]
    storage.write_parquet(schemas.to_table(rows, "prompts"), str(prompts / "part-00000.parquet"))
    with pytest.raises(schemas.SchemaError, match="sft"):
        generate_dpo.plan(load_config(GenerateDPOConfig, None, [*base, f"sft_dir={prompts}"]))
    planned, _ = generate_dpo.plan(load_config(GenerateDPOConfig, None, [*base, f"sft_dir={sft / 'data'}"]))
    assert sum(s.rows for s in planned) == 4
