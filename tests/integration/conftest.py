"""Fixtures that several integration modules share (test modules never import each other)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import chat_tokenizer, gpt2_with_chat_token, save_tiny_llama, tiny_chat_model, train_small_ru_tokenizer


@pytest.fixture(scope="session")
def chat_tok(shared):
    """GPT-2's tokenizer with a chat template and token."""
    return chat_tokenizer(shared)


@pytest.fixture(scope="session")
def tiny_chat(tmp_path_factory, chat_tok):
    """A random tiny Llama folder that reads `chat_tok` (read-only: tests must not change it)."""
    return tiny_chat_model(tmp_path_factory.mktemp("tiny_chat") / "tiny", chat_tok)


# -- `lingraft init` and `fit-head`: a GPT-2-vocabulary tiny Llama given a Russian tokenizer ---------

CHAT_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|endoftext|>\n{% endfor %}"
EXTRA_ROWS = 6          # the source checkpoints pad their embeddings past len(tokenizer)


@pytest.fixture(scope="module")
def old_tokenizer(shared):
    tok = gpt2_with_chat_token(shared)
    tok.chat_template = CHAT_TEMPLATE
    return tok


@pytest.fixture(scope="module")
def new_tokenizer_dir(shared, tmp_path_factory) -> Path:
    """A 1,500-token SentencePiece-style BPE (byte fallback) on a RusLit slice."""
    return train_small_ru_tokenizer(shared, tmp_path_factory.mktemp("tok") / "ru1500", 1500, 300_000)


def _model(folder: Path, old_tokenizer, tied: bool, shard: str | None) -> Path:
    save_tiny_llama(folder, vocab=len(old_tokenizer) + EXTRA_ROWS, tied=tied, shard=shard)
    eot = old_tokenizer.convert_tokens_to_ids("<|endoftext|>")
    for name in ("config.json", "generation_config.json"):
        config = json.loads((folder / name).read_text())
        config.update(bos_token_id=eot, eos_token_id=[eot, old_tokenizer.convert_tokens_to_ids("<|im_start|>")])
        (folder / name).write_text(json.dumps(config))
    old_tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def untied_model(tmp_path_factory, old_tokenizer) -> Path:
    return _model(tmp_path_factory.mktemp("untied") / "m", old_tokenizer, tied=False, shard="1MB")


@pytest.fixture(scope="module")
def tied_model(tmp_path_factory, old_tokenizer) -> Path:
    return _model(tmp_path_factory.mktemp("tied") / "m", old_tokenizer, tied=True, shard=None)


@pytest.fixture(scope="module")
def ud_corpus(shared, tmp_path_factory) -> Path:
    """120 UD Russian sentences: what the distillation and the head fit read."""
    corpus = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    with open(shared / "ru_text" / "ud_russian_sentences.jsonl", encoding="utf-8") as fh:
        corpus.write_text("".join(line for line, _ in zip(fh, range(120))), encoding="utf-8")
    return corpus
