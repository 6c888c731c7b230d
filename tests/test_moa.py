"""Pure MoA row functions: message building, reference injection, turn history, output rows."""

import pytest

from moaa.engine.settings import Completion
from moaa.judging import moa
from moaa.judging.prompts import AGGREGATE_AND_SYNTHESIZE


def _state(user_turns, system=None, n_turns=None):
    row = {
        "prompt_id": "p1",
        "source": "test",
        "messages": ([{"role": "system", "content": system}] if system else [])
        + [
            m
            for u in user_turns
            for m in ({"role": "user", "content": u}, {"role": "assistant", "content": "ORIG"})
        ],
        "n_turns": n_turns or len(user_turns),
    }
    return moa.init_state(row, "part-00000.parquet")


def _done(text, prompt_tokens=5, completion_tokens=3, finish="stop"):
    return Completion(
        texts=[text],
        prompt_tokens=prompt_tokens,
        completion_tokens=[completion_tokens],
        finish_reasons=[finish],
    )


def test_aggregate_prompt_is_moa_wording_verbatim():
    assert AGGREGATE_AND_SYNTHESIZE.startswith(
        "You have been provided with a set of responses from various open-source"
    )
    assert "adheres to the highest standards of accuracy and reliability.\n\nResponses from models:" in (
        AGGREGATE_AND_SYNTHESIZE
    )
    assert AGGREGATE_AND_SYNTHESIZE.endswith("Responses from models:")


def test_inject_references_numbers_every_text_into_a_new_system_message():
    msgs = [{"role": "user", "content": "Q"}]
    out = moa.inject_references(msgs, ["first answer", "second answer"])
    assert out[0] == {
        "role": "system",
        "content": AGGREGATE_AND_SYNTHESIZE + "\n1. first answer\n2. second answer",
    }
    assert out[1:] == msgs
    assert msgs == [{"role": "user", "content": "Q"}]  # the input is not modified


def test_inject_references_appends_to_an_existing_system_message():
    out = moa.inject_references(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q"}], ["a"]
    )
    assert out[0]["content"] == "Be brief.\n\n" + AGGREGATE_AND_SYNTHESIZE + "\n1. a"
    assert len(out) == 2


def test_inject_references_refuses_anything_but_texts():
    # The bug of some MoA ports: iterating a dict of {model: answer} passes the model names.
    with pytest.raises(TypeError):
        moa.inject_references([{"role": "user", "content": "Q"}], [{"model": "m", "content": "a"}])


def test_history_carries_aggregated_answers_not_the_original_ones():
    state = _state(["u1", "u2", "u3"], system="sys")
    state["answers"] = ["A1", "A2"]
    assert moa.history(state, 3) == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "u2"},
        {"role": "assistant", "content": "A2"},
        {"role": "user", "content": "u3"},
    ]


def test_a_turn_of_two_proposers_and_an_aggregator():
    state = _state(["question"])
    for model, text in [("p1", "answer one"), ("p2", "answer two")]:
        msgs = moa.build_messages(state, turn=1, layer=1, model=model)
        assert msgs == [{"role": "user", "content": "question"}]
        moa.apply_completion(state, _done(text), msgs, turn=1, layer=1, model=model, final=False)
    agg = moa.build_messages(state, turn=1, layer=2, model="agg")
    assert agg[0]["role"] == "system" and "\n1. answer one\n2. answer two" in agg[0]["content"]
    moa.apply_completion(
        state, _done("final"), agg, turn=1, layer=2, model="agg", final=True, keep_prompt=True
    )
    assert state["answers"] == ["final"]
    assert state["proposals"][-1]["prompt"] == agg and state["proposals"][0]["prompt"] is None
    # idempotent: a stage that already answered is not asked again
    assert moa.build_messages(state, turn=1, layer=2, model="agg") is None
    row = moa.to_sft_row(state, aggregator_model="agg")
    assert row["messages"] == [
        {"role": "user", "content": "question"},
        {"role": "assistant", "content": "final"},
    ]
    assert [p["model"] for p in row["proposals"]] == ["p1", "p2", "agg"]
    assert row["error"] is None and row["aggregator_model"] == "agg"


def test_middle_layers_see_the_previous_layer_only():
    state = _state(["q"])
    for layer, texts in [(1, ["l1a", "l1b"]), (2, ["l2a", "l2b"])]:
        for model, text in zip(["a", "b"], texts):
            msgs = moa.build_messages(state, turn=1, layer=layer, model=model)
            moa.apply_completion(state, _done(text), msgs, turn=1, layer=layer, model=model, final=False)
    layer2 = moa.build_messages(
        _state(["q"]) | {"proposals": state["proposals"][:2]}, turn=1, layer=2, model="a"
    )
    assert "1. l1a\n2. l1b" in layer2[0]["content"]
    agg = moa.build_messages(state, turn=1, layer=3, model="agg")
    assert "1. l2a\n2. l2b" in agg[0]["content"] and "l1a" not in agg[0]["content"]


def test_rows_past_their_last_turn_or_failed_are_passed_through():
    state = _state(["only turn"])
    assert moa.build_messages(state, turn=2, layer=1, model="a") is None
    moa.apply_completion(
        state, Completion(error="prompt too long: 9 tokens"), [], turn=1, layer=1, model="a", final=False
    )
    assert state["error_stage"] == "turn1/layer1/a"
    # the layer's other models still answer, so that every model that fails there is named
    assert moa.build_messages(state, turn=1, layer=1, model="b") is not None
    moa.apply_completion(
        state, Completion(error="prompt too long: 11 tokens"), [], turn=1, layer=1, model="b", final=False
    )
    assert state["error_stage"] == "turn1/layer1/a, turn1/layer1/b"
    assert moa.build_messages(state, turn=1, layer=2, model="agg") is None  # the next layer skips it
    row = moa.to_sft_row(state)
    assert row["error"] == "prompt too long: 9 tokens" and row["messages"] == []


def test_an_error_in_turn_two_keeps_turn_one():
    state = _state(["u1", "u2"])
    state["answers"] = ["A1"]
    moa.apply_completion(state, Completion(error="boom"), [], turn=2, layer=1, model="a", final=False)
    row = moa.to_sft_row(state)
    assert row["messages"] == [{"role": "user", "content": "u1"}, {"role": "assistant", "content": "A1"}]
    assert row["n_turns"] == 2 and row["error"] == "boom"
