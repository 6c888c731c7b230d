"""Mixture-of-Agents row functions: pure functions over one row's state, no engine, no Ray.

A row's state is a plain dict (carried between Ray Data stages as one JSON string)::

    prompt_id, source, shard     from the prompts schema (shard: the input file it came from)
    constraints                  the verifiable instructions of the last user turn (prompts schema)
    n_turns, system, user_turns  the conversation to regenerate (system may be None)
    answers                      the final (aggregated) answer of each finished turn
    proposals                    every answer of every turn and layer: {turn, layer, model, content,
                                 prompt_tokens, completion_tokens, finish_reason, prompt}; the aggregator's
                                 is the last layer's; prompt (the messages sent) only with keep_prompts
    error, error_stage           the first failure's message; every model of that layer that failed
                                 (comma-separated); later layers and turns skip the row

Turns are regenerated in order: turn t's history carries the aggregated answers of turns < t, never the
dataset's original assistant answers.
"""

from __future__ import annotations

import copy
from typing import Any

from moaa.benchmarks import verifiable
from moaa.engine.settings import Completion
from moaa.judging.prompts import AGGREGATE_AND_SYNTHESIZE

Messages = list[dict[str, str]]


def init_state(row: dict[str, Any], shard: str) -> dict[str, Any]:
    """State of a prompts-schema row before any generation."""
    messages = row["messages"]
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    return {
        "prompt_id": row["prompt_id"],
        "source": row["source"],
        "shard": shard,
        "n_turns": int(row["n_turns"]),
        "constraints": list(row.get("constraints") or []),
        "system": system,
        "user_turns": [m["content"] for m in messages if m["role"] == "user"],
        "answers": [],
        "proposals": [],
        "error": None,
        "error_stage": None,
    }


def history(state: dict[str, Any], turn: int) -> Messages:
    """The conversation up to turn ``turn``'s user message (1-based), with earlier turns' MoA answers."""
    messages: Messages = [{"role": "system", "content": state["system"]}] if state["system"] else []
    for k in range(turn - 1):
        messages.append({"role": "user", "content": state["user_turns"][k]})
        messages.append({"role": "assistant", "content": state["answers"][k]})
    messages.append({"role": "user", "content": state["user_turns"][turn - 1]})
    return messages


def inject_references(messages: Messages, references: list[str]) -> Messages:
    """MoA's aggregator input: the synthesize prompt and the numbered references in the system message
    (appended to an existing system message), the conversation unchanged after it. References are the
    proposals' texts: passing anything else (a dict, its keys) is a bug some MoA ports have."""
    if not all(isinstance(r, str) for r in references):
        raise TypeError(f"references must be answer texts, got {[type(r).__name__ for r in references]}")
    system = AGGREGATE_AND_SYNTHESIZE + "".join(f"\n{i + 1}. {ref}" for i, ref in enumerate(references))
    messages = copy.deepcopy(messages)
    if messages and messages[0]["role"] == "system":
        messages[0]["content"] += "\n\n" + system
    else:
        messages.insert(0, {"role": "system", "content": system})
    return messages


def layer_answers(state: dict[str, Any], turn: int, layer: int) -> list[str]:
    return [p["content"] for p in state["proposals"] if p["turn"] == turn and p["layer"] == layer]


def _stage_name(turn: int, layer: int, model: str) -> str:
    return f"turn{turn}/layer{layer}/{model}"


def _pending(state: dict[str, Any], turn: int, layer: int, model: str) -> bool:
    if turn > state["n_turns"]:
        return False
    # A row that failed in an earlier step goes no further; the other models of the failing layer still
    # answer it, so that error_stage names every model that failed there (e.g. a prompt too long for all).
    if state["error"] is not None and not state["error_stage"].startswith(f"turn{turn}/layer{layer}/"):
        return False
    # Idempotent: a row that already holds this stage's answer is not sent again.
    return not any(
        p["turn"] == turn and p["layer"] == layer and p["model"] == model for p in state["proposals"]
    )


def build_messages(state: dict[str, Any], *, turn: int, layer: int, model: str) -> Messages | None:
    """Conversation for ``model`` at (turn, layer), or None when the row needs nothing from it. Layer 1
    sees the plain conversation; every later layer (the aggregator is the last) sees the previous layer's
    answers through ``inject_references``."""
    if not _pending(state, turn, layer, model):
        return None
    messages = history(state, turn)
    if layer == 1:
        return messages
    return inject_references(messages, layer_answers(state, turn, layer - 1))


def apply_completion(
    state: dict[str, Any],
    completion: Completion,
    messages: Messages,
    *,
    turn: int,
    layer: int,
    model: str,
    final: bool,
    keep_prompt: bool = False,
) -> None:
    """Record ``model``'s answer at (turn, layer); the final layer's answer becomes the turn's answer.
    ``keep_prompt`` stores the exact messages sent (for audits; it multiplies the output size)."""
    if completion.error is not None:
        if state["error"] is None:
            state["error"], state["error_stage"] = completion.error, _stage_name(turn, layer, model)
        else:
            state["error_stage"] += ", " + _stage_name(turn, layer, model)
        return
    state["proposals"].append(
        {
            "turn": turn,
            "layer": layer,
            "model": model,
            "content": completion.text,
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens[0],
            "finish_reason": completion.finish_reasons[0],
            "prompt": messages if keep_prompt else None,
        }
    )
    if final:
        state["answers"].append(completion.text)


def checked_proposals(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Every proposal with ``follows`` / ``follows_loose``: IFEval's strict and loose verdict on each of the
    row's instructions, for the answers to the last turn (the one that carries them); empty elsewhere."""
    constraints, last = state.get("constraints") or [], state["n_turns"]
    out = []
    for p in state["proposals"]:
        if constraints and p["turn"] == last:
            v = verifiable.check(constraints, p["content"], state["prompt_id"], state["user_turns"][last - 1])
            out.append({**p, "follows": v["strict"], "follows_loose": v["loose"]})
        else:
            out.append({**p, "follows": [], "follows_loose": []})
    return out


def to_sft_row(state: dict[str, Any], **provenance: Any) -> dict[str, Any]:
    """The output row (schema ``sft``): TRL ``messages`` with the MoA answers, all proposals (checked
    against the row's instructions), error."""
    done = len(state["answers"])
    messages = history(state, done + 1)[:-1] if done < state["n_turns"] else history(state, done)
    if done == state["n_turns"]:
        messages.append({"role": "assistant", "content": state["answers"][-1]})
    return {
        "prompt_id": state["prompt_id"],
        "source": state["source"],
        "messages": messages,
        "n_turns": state["n_turns"],
        "constraints": state.get("constraints") or [],
        "proposals": checked_proposals(state),
        "error": state["error"],
        "error_stage": state["error_stage"],
        **provenance,
    }
