"""Judge row functions on hand-written verdicts: parsing, scoring, ties, both-order logic, position bias."""

import pytest

from moaa.core import schemas
from moaa.engine.settings import Completion
from moaa.judging import judge
from moaa.judging.prompts import JUDGE_CRITERIA


def test_criteria_choices_are_distinct_triples_and_parse_back():
    choices = judge.criteria_choices(JUDGE_CRITERIA, 3)
    assert len(choices) == 20 and len(set(choices)) == 20
    for c in choices:
        assert judge.parse_criteria(c, JUDGE_CRITERIA, 3) == c.split(", ")


def test_parse_criteria_tolerates_free_text():
    text = "1. Accuracy\n2. Instruction-following\n3) clarity, and also accuracy again"
    assert judge.parse_criteria(text, JUDGE_CRITERIA, 3) == ["accuracy", "instruction following", "clarity"]
    assert judge.parse_criteria("no idea", JUDGE_CRITERIA, 3) == []


@pytest.mark.parametrize(
    "text,verdict",
    [
        ("Evaluation: A is concise.\nVerdict: A", "A"),
        ("Evaluation: x\nVerdict: tie", "tie"),
        ("Verdict: A ... on reflection, Verdict: B", "B"),
        ("My final verdict is [[C]]", "tie"),
        ("[[B]]", "B"),
        ("B", "B"),
        (" tie.", "tie"),
        ("Assistant A is better overall.", "A"),
        ("\x00\x13garbage", None),
        ("", None),
    ],
)
def test_parse_verdict(text, verdict):
    assert judge.parse_verdict(text) == verdict


def test_pair_regex_output_parses():
    import re

    out = "Evaluation: B misses the point; A is right.\nVerdict: A"
    assert re.fullmatch(judge.pair_regex(64), out)
    assert not re.fullmatch(judge.pair_regex(5), out)
    assert judge.parse_verdict(out) == "A"


def test_ordered_pairs_skip_identical_texts():
    assert judge.ordered_pairs(["x", "y", "x"]) == [(0, 1), (1, 0), (1, 2), (2, 1)]
    assert judge.ordered_pairs(["x", "x"]) == []


def _finals(d):
    return {p: (v, judge.VALUE[v]) for p, v in d.items()}


def test_scores_both_orders_and_ties():
    # 0 beats 1 in both orders; 0 vs 2 is a tie one way and a win for 2 the other; 1 vs 2: 2 wins twice
    finals = _finals({(0, 1): "A", (1, 0): "B", (0, 2): "tie", (2, 0): "A", (1, 2): "B", (2, 1): "A"})
    s = judge.scores(["a", "b", "c"], finals)
    assert s == pytest.approx([2.5 / 4, 0 / 4, 3.5 / 4])
    assert sum(s) == pytest.approx(1.5)  # every comparison hands out exactly one win
    assert judge.select(["a", "b", "c"], s) == (2, 1, "pair")


def test_missing_verdict_and_identical_texts_count_as_ties():
    s = judge.scores(["a", "a", "b"], _finals({(0, 2): "A", (2, 0): "B", (1, 2): "A", (2, 1): "B"}))
    assert s[0] == s[1] == pytest.approx(3 / 4) and s[2] == 0
    chosen, rejected, status = judge.select(["a", "a", "b"], s)
    assert (chosen, rejected, status) == (0, 2, "pair")


def test_all_tie_and_identical_have_no_pair():
    assert judge.select(["a", "b"], [0.5, 0.5]) == (None, None, "tie")
    assert judge.select(["a", "a", "a"], [0.5] * 3) == (None, None, "identical")
    # position bias that cancels out (A always wins) is a tie, not a preference
    finals = _finals({(0, 1): "A", (1, 0): "A"})
    assert judge.select(["a", "b"], judge.scores(["a", "b"], finals))[2] == "tie"


def test_rejected_never_has_chosens_text():
    # candidate 0 and 2 are the same text with different scores: rejected must be another text
    assert judge.select(["x", "y", "x"], [1.0, 0.5, 0.0]) == (0, 1, "pair")


def test_combine_majority_and_mean():
    assert judge.combine(["A", "A", "B"], "majority") == ("A", 1.0)
    assert judge.combine(["A", "B"], "majority") == ("tie", 0.5)
    assert judge.combine(["A", None, None], "majority") == ("A", 1.0)  # unparsed abstain
    assert judge.combine([None], "majority") == ("tie", 0.5)
    assert judge.combine(["A", "tie", "B", "A"], "mean") == ("A", pytest.approx(0.625))
    assert judge.combine(["A", "B"], "mean") == ("tie", 0.5)


def _j(name, role, a, b, v):
    return {"judge": name, "role": role, "a": a, "b": b, "raw": str(v), "verdict": v}


def test_final_verdicts_per_mode():
    js = [
        _j("j1", "judge", 0, 1, "A"),
        _j("j2", "judge", 0, 1, "B"),
        _j("j3", "judge", 0, 1, "B"),
        _j("agg", "aggregator", 0, 1, "tie"),
    ]
    assert judge.final_verdicts(js, "moa", ["j1", "j2", "j3"])[(0, 1)] == ("tie", 0.5)
    assert judge.final_verdicts(js, "single", ["j1", "j2", "j3"])[(0, 1)] == ("A", 1.0)
    assert judge.final_verdicts(js, "jury", ["j1", "j2", "j3"])[(0, 1)] == ("B", 0.0)
    assert judge.final_verdicts(js, "jury", ["j1", "j2", "j3"], "mean")[(0, 1)][1] == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        judge.final_verdicts(js, "vote", ["j1"])


def test_position_stats():
    v = {(0, 1): "A", (1, 0): "A", (0, 2): "A", (2, 0): "B", (1, 2): "tie", (2, 1): "tie", (0, 3): "B"}
    assert judge.position_stats(v) == {"pairs": 3, "consistent": 2, "flips": 1}


def _completion(text, ptok=10):
    return Completion(
        texts=[text], prompt_tokens=ptok, completion_tokens=[len(text)], finish_reasons=["stop"]
    )


def _state(cands):
    row = {
        "prompt_id": "p",
        "source": "t",
        "messages": [{"role": "user", "content": "Q?"}],
        "candidates": cands,
    }
    return judge.init_state(row, "part-0.parquet")


def test_stages_end_to_end_on_a_state_and_schema():
    state = _state(["good", "bad", "good"])
    judges = ["j1", "j2"]
    for name in judges:
        conv = judge.build_criteria(state, judge=name, criteria=list(JUDGE_CRITERIA), k=3)
        judge.apply_criteria(
            state,
            _completion("accuracy, depth, safety"),
            conv,
            judge=name,
            criteria=list(JUDGE_CRITERIA),
            k=3,
        )
        convs = judge.build_pairs(state, judge=name)
        assert len(convs) == 4  # 3 candidates, two identical: (0,1),(1,0),(1,2),(2,1)
        assert "accuracy, depth, safety" in convs[0][0]["content"]
        # the shared prefix: the system prompt is the same for every pair of the row
        assert len({c[0]["content"] for c in convs}) == 1
        verdicts = {(0, 1): "A", (1, 0): "B", (1, 2): "B", (2, 1): "A"}
        pairs = judge.ordered_pairs(state["candidates"])
        judge.apply_pairs(
            state, [_completion(f"Evaluation: x\nVerdict: {verdicts[p]}") for p in pairs], convs, judge=name
        )
        assert judge.build_pairs(state, judge=name) is None  # idempotent
    convs = judge.build_aggregate(state, aggregator="agg", judges=judges)
    assert "Judge 2 (criteria: accuracy, depth, safety)" in convs[0][1]["content"]
    judge.apply_aggregate(
        state,
        [_completion("A"), _completion("B"), _completion("B"), _completion("A")],
        convs,
        aggregator="agg",
    )
    for mode in ("moa", "jury", "single"):  # the verifier needs instructions (tests below)
        row = judge.decide(state, mode, judges)
        assert row["status"] == "pair" and row["error"] is None
        assert row["chosen"][0]["content"] == "good" and row["rejected"][0]["content"] == "bad"
        assert row["chosen_score"] > row["rejected_score"] and row["score_margin"] > 0
        assert row["position_pairs"] == 2 and row["position_consistent"] == 2
        assert row["judge_tokens"] > 0
        schemas.to_table(
            [{**row, "policy_model": None, "run_id": "r", "config_hash": "h", "moaa_version": "0"}],
            "preference",
        )


def test_errors_and_identical_rows_are_kept_with_a_reason():
    state = _state(["same", "same"])
    assert judge.build_criteria(state, judge="j", criteria=list(JUDGE_CRITERIA), k=3) is None
    row = judge.decide(state, "moa", ["j"])
    assert row["status"] == "identical" and row["error"].startswith("no pair") and row["chosen"] == []
    state = _state(["a", "b"])
    convs = judge.build_pairs(state, judge="j")
    judge.apply_pairs(
        state, [Completion(error="prompt too long: 5000 tokens"), _completion("B")], convs, judge="j"
    )
    row = judge.decide(state, "single", ["j"])
    assert row["status"] == "error" and row["error_stage"] == "judge/j" and "too long" in row["error"]
    assert judge.build_pairs(state, judge="k") is None  # later stages skip an error row


def test_decide_counts_only_the_modes_calls():
    state = _state(["a", "b"])
    for name in ("j1", "j2"):
        convs = judge.build_pairs(state, judge=name)
        judge.apply_pairs(state, [_completion("Verdict: A"), _completion("Verdict: B")], convs, judge=name)
    convs = judge.build_aggregate(state, aggregator="agg", judges=["j1", "j2"])
    judge.apply_aggregate(state, [_completion("A"), _completion("A")], convs, aggregator="agg")
    rows = {m: judge.decide(state, m, ["j1", "j2"]) for m in judge.MODES}
    assert {j["judge"] for j in rows["single"]["judgments"]} == {"j1"}
    assert {j["role"] for j in rows["jury"]["judgments"]} == {"judge"}
    assert rows["single"]["judge_tokens"] < rows["jury"]["judge_tokens"] < rows["moa"]["judge_tokens"]
    # the aggregator says A both ways (position bias): a tie in moa; the judges mirror: consistent
    assert rows["moa"]["status"] == "tie" and rows["moa"]["position_flips"] == 1
    assert rows["single"]["position_consistent"] == 1


def test_shipped_configs_load():
    from pathlib import Path

    from moaa.core.config import load_config
    from moaa.stages.generate_dpo import GenerateDPOConfig
    from moaa.stages.judge_eval import JudgeEvalConfig

    root = Path(__file__).resolve().parent.parent
    assert GenerateDPOConfig().n == 3 and GenerateDPOConfig().judge.mode == "moa"
    paper = load_config(GenerateDPOConfig, root / "configs/generate_dpo/paper.yaml")
    assert (paper.n, paper.limit, paper.judge.n_criteria) == (5, 6000, 3)
    tiny = load_config(GenerateDPOConfig, root / "configs/generate_dpo/tiny.yaml")
    assert len(tiny.judge.judges) == 2 and tiny.judge.aggregator is not None
    for name in ("tiny", "paper"):
        assert load_config(JudgeEvalConfig, root / f"configs/judge_eval/{name}.yaml").modes == list(
            judge.MODES[:3]
        )
    with pytest.raises(Exception, match="aggregator"):
        load_config(GenerateDPOConfig, None, ["judge.aggregator=null"])
    with pytest.raises(Exception, match="n must be"):
        load_config(GenerateDPOConfig, None, ["n=1"])


# ------------------------------------------------------------------------- verifiable pairs and the verifier


def _planted(candidates: list[str]) -> dict:
    state = judge.init_state(
        {
            "prompt_id": "p",
            "messages": [{"role": "user", "content": "List fruits. Do not use a single comma."}],
            "constraints": [{"id": "punctuation:no_comma", "kwargs": "{}"}],
        },
        "s",
    )
    state["candidates"] = candidates
    state["candidate_meta"] = [{"finish_reason": "stop", "completion_tokens": 3}] * len(candidates)
    return state


def test_the_verifier_picks_the_candidate_that_follows_the_instructions():
    row = judge.decide(_planted(["apples, pears", "apples and pears", "plums, figs"]), "verifier", ["j"])
    assert row["status"] == "pair" and row["chosen_index"] == 1 and row["rejected_index"] in (0, 2)
    assert [c["follows"] for c in row["candidates"]] == [[False], [True], [False]]
    assert row["judgments"] == [] and row["judge_tokens"] == 0
    tied = judge.decide(_planted(["a, b", "c, d"]), "verifier", ["j"])
    assert tied["status"] == "tie" and tied["chosen_index"] is None
    plain = _planted(["a", "b"])
    plain["constraints"] = []
    row = judge.decide(plain, "verifier", ["j"])
    assert row["status"] == "tie" and "no verifiable instructions" in row["error"]


def _judgment(name: str, role: str, a: int, b: int, verdict: str) -> dict:
    return {"judge": name, "role": role, "a": a, "b": b, "raw": verdict, "verdict": verdict}


def test_accuracy_on_a_planted_verifiable_pair_per_way_of_judging():
    """Candidate 1 follows the instruction, 0 does not. Judge j1 prefers 1 in both orders, j2 follows the
    position (A both times: a tie over both orders), the aggregator prefers 0: each view is scored on its
    own verdicts."""
    state = _planted(["apples, pears", "apples and pears"])
    for name, verdicts in (("j1", ("B", "A")), ("j2", ("A", "A")), ("agg", ("A", "B"))):
        role = "aggregator" if name == "agg" else "judge"
        state["judgments"] += [
            _judgment(name, role, 0, 1, verdicts[0]),
            _judgment(name, role, 1, 0, verdicts[1]),
        ]
    row = judge.decide(state, "moa", ["j1", "j2"])
    acc = judge.verifiable_accuracy(row, ["j1", "j2"], "majority")
    assert acc["single:j1"] == {"pairs": 1, "correct": 1, "wrong": 0, "ties": 0}
    assert acc["single:j2"] == {"pairs": 1, "correct": 0, "wrong": 0, "ties": 1}
    assert acc["moa"] == {"pairs": 1, "correct": 0, "wrong": 1, "ties": 0}
    # jury of j1 and j2: (0,1): B vs A -> no majority, tie; (1,0): A, A -> A: candidate 1 wins once
    assert acc["jury"] == {"pairs": 1, "correct": 1, "wrong": 0, "ties": 0}
    a = judge.JudgeAccuracy.of({"pairs": 40, "correct": 30, "wrong": 10, "ties": 0})
    assert a.accuracy == 0.75 and a.above_chance and 0.5 < a.lower < 0.75 < a.upper
    coin = judge.JudgeAccuracy.of({"pairs": 40, "correct": 18, "wrong": 18, "ties": 4})
    assert coin.accuracy_ties_half == 0.5 and not coin.above_chance
