"""Tiny local causal LMs and a locally built tokenizer, for the embedded default and the tests.

    moaa make-tiny-models models/tiny

Nothing is downloaded. The tokenizer is byte-level (every UTF-8 byte is a token, so any text encodes) with
a ChatML chat template whose assistant turns carry ``{% generation %}`` markers (TRL's assistant-only loss
needs them). The models are random-weight Qwen2 and Llama networks of ~0.3M parameters with head_dim 64
(the smallest head size vLLM's CPU attention supports). Same seed, same bytes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
    "{%- else %}"
    "{{- message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB_SIZE = 320  # 256 bytes + specials, padded to a multiple of 64


@dataclass(frozen=True)
class TinySpec:
    name: str
    architecture: str  # "qwen2" or "llama"
    seed: int


# Three distinct models, two architectures: two proposers and an aggregator in the embedded default.
TINY_MODELS = (
    TinySpec("tiny-qwen2-a", "qwen2", 1),
    TinySpec("tiny-llama-b", "llama", 2),
    TinySpec("tiny-qwen2-c", "qwen2", 3),
)


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
    )


def build_model(spec: TinySpec, tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        dtype="float32",
    )
    torch.manual_seed(spec.seed)
    if spec.architecture == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common))
    if spec.architecture == "llama":
        return LlamaForCausalLM(LlamaConfig(**common))
    raise ValueError(f"unknown tiny architecture {spec.architecture!r}; use 'qwen2' or 'llama'")


def make_tiny_models(out_dir: str | os.PathLike, specs: tuple[TinySpec, ...] = TINY_MODELS) -> list[Path]:
    """Write each model (weights, config, tokenizer) to ``out_dir/<name>``; existing ones are kept."""
    out = Path(out_dir)
    paths = []
    tokenizer = None
    for spec in specs:
        path = out / spec.name
        paths.append(path)
        if (path / "config.json").exists() and (path / "tokenizer_config.json").exists():
            continue
        tokenizer = tokenizer or build_tokenizer()
        model = build_model(spec, tokenizer)
        tmp = out / f".{spec.name}.tmp"
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "moaa_tiny.json").write_text(
            json.dumps({"name": spec.name, "arch": spec.architecture, "seed": spec.seed})
        )
        tmp.rename(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        raise SystemExit("usage: moaa make-tiny-models DIR")
    for p in make_tiny_models(args[0]):
        print(p)
