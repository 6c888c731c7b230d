"""The models moaa builds on first use from what the install brought: SmolLM2-135M-Instruct
(``smollm``) and the tiny random models (``tiny``); ``models`` builds whichever a job names.

This module holds only their names, so that the config checks of the lowest layer can recognise an
embedded model without importing what builds it."""

from __future__ import annotations

from pathlib import Path

SMOLLM_NAME = "SmolLM2-135M-Instruct"
TINY_NAMES = ("tiny-qwen2-a", "tiny-llama-b", "tiny-qwen2-c")


def is_embedded(path: str) -> bool:
    """A local path naming an embedded model, which moaa builds on first use."""
    return "://" not in path and Path(path).name in {SMOLLM_NAME, *TINY_NAMES}
