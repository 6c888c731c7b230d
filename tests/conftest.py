import os
from pathlib import Path

import pytest

from moaa.embedded.tiny import make_tiny_models

# vLLM's CPU backend reads its KV cache size from the environment; the tiny models need very little.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """The three tiny local models (tiny-qwen2-a, tiny-llama-b, tiny-qwen2-c), built once per session."""
    out = tmp_path_factory.mktemp("models")
    make_tiny_models(out)
    return out
