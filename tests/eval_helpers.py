"""Tiny random chat models for the evaluation tests (a real GPT-2 tokenizer, a 2-layer Llama)."""
from __future__ import annotations

import json
from pathlib import Path

from tests.test_checkpoint import save_tiny_llama

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|endoftext|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def chat_tokenizer(shared: Path):
    from lingraft.vocabulary.loading import load_tokenizer
    tok = load_tokenizer(shared / "tokenizers" / "gpt2")
    tok.add_tokens(["<|im_start|>"], special_tokens=True)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_chat_model(folder: Path, tok, seed: int = 0) -> Path:
    """A random Llama in float32 whose BOS/EOS are GPT-2's <|endoftext|>, with `tok` saved beside it."""
    import torch
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
