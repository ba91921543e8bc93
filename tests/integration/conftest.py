"""Fixtures that several integration modules share (test modules never import each other)."""
from __future__ import annotations

import pytest

from tests.helpers import chat_tokenizer, tiny_chat_model


@pytest.fixture(scope="session")
def chat_tok(shared):
    """GPT-2's tokenizer with a chat template and token."""
    return chat_tokenizer(shared)


@pytest.fixture(scope="session")
def tiny_chat(tmp_path_factory, chat_tok):
    """A random tiny Llama folder that reads `chat_tok` (read-only: tests must not change it)."""
    return tiny_chat_model(tmp_path_factory.mktemp("tiny_chat") / "tiny", chat_tok)
