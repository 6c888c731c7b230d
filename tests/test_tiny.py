"""The tiny local models: distinct, two architectures, deterministic, loadable, with a chat template."""

import hashlib
import subprocess
import sys
from pathlib import Path

from moaa.embedded.models import ensure
from moaa.embedded.tiny import TINY_MODELS

ROOT = Path(__file__).resolve().parent.parent


def _digest(path: Path) -> str:
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def test_three_distinct_models_of_two_architectures(tiny_models):
    import json

    archs = {
        json.loads((tiny_models / s.name / "config.json").read_text())["architectures"][0]
        for s in TINY_MODELS
    }
    assert archs == {"Qwen2ForCausalLM", "LlamaForCausalLM"}
    assert len({_digest(tiny_models / s.name) for s in TINY_MODELS}) == 3


def test_same_seed_same_bytes_via_the_cli(tmp_path, tiny_models):
    out = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "make-tiny-models", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    for s in TINY_MODELS:
        assert _digest(tmp_path / s.name) == _digest(tiny_models / s.name)


def test_tokenizer_round_trips_any_text_and_marks_assistant_turns(tiny_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models / "tiny-llama-b")
    text = "héllo wörld ✓ 你好"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    msgs = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "ok"},
    ]
    out = tok.apply_chat_template(msgs, return_dict=True, return_assistant_tokens_mask=True)
    assert sum(out["assistant_masks"]) == len("ok") + 1  # the answer and its end-of-turn token
    prompt = tok.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    model = AutoModelForCausalLM.from_pretrained(tiny_models / "tiny-qwen2-a")
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    assert model.config.hidden_size // model.config.num_attention_heads == 64  # vLLM CPU needs head_dim 64


def test_ensure_builds_only_missing_tiny_models(tmp_path):
    target = tmp_path / "tiny-llama-b"
    ensure([str(target), str(tmp_path / "not-a-tiny-model"), "org/hub-model"])
    assert (target / "config.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-llama-b"]
