"""Shared by the real-model tests: the CLI in a subprocess, SmolLM2 loaded once, a fixed chat prompt."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHAT = [{"role": "user", "content": "What is the capital of France? Tell me about it."}]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "compressor", *args], capture_output=True, text=True)


def chat_prompt(tok) -> list[int]:
    return tok(tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)).input_ids


@pytest.fixture(scope="session")
def smollm2():
    from compressor.loading import load_model

    return load_model("smollm2-135m")
