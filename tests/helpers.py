"""Helpers shared by test modules: tiny models and tokenizers built in a second.

Test modules import from here (and from train_tiny.py for training runs), never from each
other; conftest.py holds the fixtures.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|endoftext|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


# -- checkpoints -------------------------------------------------------------------------------
def save_tiny_llama(folder: Path, vocab: int, tied: bool, shard: str | None = "40KB", seed: int = 0) -> Path:
    """A random 2-layer Llama in bf16, sharded when `shard` is given (the output of any HF save)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=tied, bos_token_id=0, eos_token_id=0, pad_token_id=None)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(str(folder), max_shard_size=shard or "10GB")
    return folder


def all_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open
    out = {}
    for shard in sorted(folder.glob("model*.safetensors")):
        with safe_open(str(shard), framework="pt") as fh:
            out.update({k: fh.get_tensor(k) for k in fh.keys()})
    return out


# -- tokenizers (from the shared data) ---------------------------------------------------------
def gpt2_with_chat_token(shared: Path):
    """The real GPT-2 tokenizer plus one special chat token: a stand-in for a chat model's 'old' vocabulary."""
    from lingraft.vocabulary.loading import load_tokenizer
    tok = load_tokenizer(shared / "tokenizers" / "gpt2")
    tok.add_tokens(["<|im_start|>"], special_tokens=True)
    return tok


def train_small_ru_tokenizer(shared: Path, out: Path, vocab_size: int, max_chars: int) -> Path:
    """A small SentencePiece-style BPE (byte fallback) on a RusLit slice: a 'new' vocabulary."""
    from lingraft.vocabulary.config import TrainTokenizerConfig
    from lingraft.vocabulary.training import run_train
    run_train(TrainTokenizerConfig(data=[str(shared / "ru_text" / "ruslit.jsonl.xz")], out=str(out),
                                   vocab_size=vocab_size, style="sentencepiece", max_chars=max_chars))
    return out


# -- chat models for the evaluation tests ------------------------------------------------------
def chat_tokenizer(shared: Path):
    tok = gpt2_with_chat_token(shared)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_chat_model(folder: Path, tok, seed: int = 0) -> Path:
    """A random Llama in float32 whose BOS/EOS are GPT-2's <|endoftext|>, with `tok` saved beside it."""
    from transformers import AutoModelForCausalLM
    save_tiny_llama(folder, vocab=len(tok), tied=True, shard=None, seed=seed)
    AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).save_pretrained(str(folder))
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    for name in ("config.json", "generation_config.json"):
        config = json.loads((folder / name).read_text())
        config.update(bos_token_id=eot, eos_token_id=eot)
        (folder / name).write_text(json.dumps(config))
    tok.save_pretrained(str(folder))
    return folder
