"""Helpers shared by test modules: tiny models and tokenizers built in a second.

Test modules of both tiers import from here (and from integration/train_tiny.py for training
runs), never from each other; conftest.py holds the fixtures.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from functools import lru_cache
from pathlib import Path
from types import ModuleType

import torch

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|endoftext|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def load_script(path: Path) -> ModuleType:
    """A script outside the package (bench/, launch/, scripts/) as a module. It is registered in
    sys.modules, where dataclasses look their module up, under a name no package uses
    (launch/train.py must not shadow the `train` package)."""
    spec = importlib.util.spec_from_file_location(f"_script_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# -- packed folders ----------------------------------------------------------------------------
PACK_SEQ_LEN = 16
PACK_FINGERPRINT = "ab" * 32
PACK_EOS = 0


def build_packed_folder(folder: Path, shards: list[list[tuple]], vocab: int = 1000, bos_id: int | None = None,
                        sample_start: str = "stream") -> Path:
    """A packed folder written through the format API, as any packing stage would: each shard a list
    of (ids, loss mask or None) documents, each document closed by PACK_EOS."""
    from lingraft.data_prep.packed_format import ShardBuilder, packed_outputs, shard_name, token_dtype
    from lingraft.manifest import new_manifest
    folder.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(vocab)
    records = []
    for k, docs in enumerate(shards):
        builder = ShardBuilder(dtype, bos_id=bos_id, eos_id=PACK_EOS)
        for ids, mask in docs:
            builder.add(ids, mask=mask, source="synthetic")
        records.append(builder.write(folder, shard_name(k), PACK_SEQ_LEN, sample_start))
    manifest = new_manifest("test.pack", {})
    manifest.outputs = packed_outputs(records, tokenizer={"spec": "test", "fingerprint": PACK_FINGERPRINT,
                                                          "vocab_size": vocab},
                                      dtype=dtype.name, seq_len=PACK_SEQ_LEN, sample_start=sample_start,
                                      bos_id=bos_id, eos_id=PACK_EOS)
    manifest.write(folder)
    return folder


# -- checkpoints -------------------------------------------------------------------------------
def save_tiny_llama(folder: Path, vocab: int, tied: bool, shard: str | None = "40KB", seed: int = 0,
                    hidden_size: int = 32) -> Path:
    """A random 2-layer Llama in bf16, sharded when `shard` is given (the output of any HF save)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden_size, intermediate_size=64, num_hidden_layers=2,
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


# -- LEP vocabulary variants on the real base tokenizers (built once per session, read-only) ---
BASES = {"llama3": "tokenizers/llama3/tokenizer.json.xz", "mistral": "tokenizers/mistral/mistral7b_v0.1_tokenizer.model"}
MIXED = ("Привет, мир! Как дела у тебя сегодня? Hello world, this is English text.\n"
         "«Ёлки-палки», — сказал он в 1984 году.  Tabs\tand   spaces; emoji 🙂 and 日本語.")


@lru_cache(maxsize=None)
def base_tokenizer(shared: Path, name: str):
    from lingraft.vocabulary.loading import load_tokenizer
    return load_tokenizer(shared / BASES[name])


@lru_cache(maxsize=None)
def russian(shared: Path, max_chars: int = 600_000) -> tuple[str, ...]:
    from lingraft.vocabulary.corpus import CorpusText
    return tuple(CorpusText([str(shared / "ru_text/ruslit.jsonl.xz")], "text", max_chars))


@lru_cache(maxsize=None)
def english(shared: Path) -> tuple[str, ...]:
    from lingraft.vocabulary.corpus import CorpusText
    return tuple(CorpusText([str(shared / "en_text/fineweb_en_sample.jsonl")], "text"))


@lru_cache(maxsize=None)
def ud_sentences(shared: Path) -> tuple[str, ...]:
    with open(shared / "ru_text/ud_russian_sentences.jsonl", encoding="utf-8") as fh:
        return tuple(json.loads(line)["text"] for line in fh)


@lru_cache(maxsize=None)
def new_tokenizer(shared: Path, name: str, vocab_size: int = 3000):
    """A small Russian BPE trained with the base's pipeline (training.py's `like: base`)."""
    from lingraft.vocabulary.training import TrainParams, base_pipeline, train_tokenizer
    base = base_tokenizer(shared, name)
    return train_tokenizer(russian(shared), base_pipeline(base, []), TrainParams("bpe", vocab_size))


def n_tokens(tok, texts) -> int:
    """Tokens for `texts` (same texts, so comparing counts compares tokens per word)."""
    return sum(len(e.ids) for e in tok.backend_tokenizer.encode_batch(list(texts), add_special_tokens=False))


@lru_cache(maxsize=None)
def extended(shared: Path, name: str):
    """Extended with every acceptable new token, protecting the first 300 fineweb documents."""
    from lingraft.vocabulary.extend import extend
    return extend(base_tokenizer(shared, name), new_tokenizer(shared, name), None, english(shared)[:300])


KEEP = {"llama3": 20_000, "mistral": 8_000}


@lru_cache(maxsize=None)
def optimized(shared: Path, name: str, add: int):
    """Optimized: the KEEP most used base tokens plus `add` new ones."""
    from lingraft.vocabulary.optimize import optimize
    return optimize(base_tokenizer(shared, name), new_tokenizer(shared, name), russian(shared), KEEP[name], add)


# -- a propagation family: B, its instruct sibling I, and A (B adapted to a new tokenizer) ---
EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"
FAMILY_HIDDEN = 32
INSTRUCT_CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|eot_id|>{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_llama(folder: Path, tok, tied: bool, layers: int = 2, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    config = LlamaConfig(vocab_size=len(tok) + 6, hidden_size=FAMILY_HIDDEN, intermediate_size=64,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=tied, bos_token_id=eos,
                         eos_token_id=eos, pad_token_id=None)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(folder), max_shard_size="60KB")
    tok.save_pretrained(str(folder))
    return model


def true_map(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.eye(FAMILY_HIDDEN) + 0.2 * torch.randn(FAMILY_HIDDEN, FAMILY_HIDDEN, generator=g)


def make_instruct(base: Path, out: Path, tok, maps: dict[str, torch.Tensor], layers_noise: float = 0.01) -> Path:
    """I: B's tables under known maps, its layers moved, plus a trained `<|eot_id|>` and a chat template."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(base))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name == EMBED:
                param.copy_(param @ maps["input"])
            elif name == HEAD:
                param.copy_(param @ maps["head"])
            else:
                param.add_(layers_noise * torch.randn_like(param))
    instruct_tok = type(tok).from_pretrained(str(base))
    instruct_tok.add_tokens(["<|eot_id|>"], special_tokens=True)
    instruct_tok.chat_template = INSTRUCT_CHAT
    eot = instruct_tok.convert_tokens_to_ids("<|eot_id|>")
    assert eot < model.config.vocab_size                      # fits into the padding rows
    with torch.no_grad():
        model.get_input_embeddings().weight[eot] = 3.0      # a recognisable "trained" row
    model.generation_config.eos_token_id = eot
    model.save_pretrained(str(out), max_shard_size="60KB")
    instruct_tok.save_pretrained(str(out))
    return out


def make_adapted(init_out: Path, out: Path, seed: int = 5) -> Path:
    """A: the init output with every table perturbed (as training would), re-saved like an export."""
    from lingraft.vocabulary.token_map import TOKEN_MAP_NAME
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(init_out))
    torch.manual_seed(seed)
    with torch.no_grad():
        for table in {id(t): t for t in (model.get_input_embeddings().weight,
                                         model.get_output_embeddings().weight)}.values():
            table.add_(0.05 * torch.randn_like(table))
    model.save_pretrained(str(out))
    for name in ("tokenizer.json", "tokenizer_config.json", TOKEN_MAP_NAME):
        shutil.copy2(init_out / name, out / name)
    return out


def propagation_family(root: Path, base_tok, new_tok_dir: Path, tied: bool):
    """B, I (B's tables under known maps), init and A in `root`; returns (root, maps)."""
    from lingraft.cli import main
    maps = {"input": true_map(1), "head": true_map(2)}
    tiny_llama(root / "B", base_tok, tied)
    make_instruct(root / "B", root / "I", base_tok, maps)
    assert main(["init", "--model", str(root / "B"), "--tokenizer", str(new_tok_dir), "--out", str(root / "init"),
                 "--method", "mean", "--shrink-table", "true"]) == 0
    make_adapted(root / "init", root / "A")
    return root, maps


# -- packing: whitespace corner cases around paragraph breaks ----------------------------------
PACK_CORNER_CASES = [
    "Глава I\n\nОн вошёл.\n— Да, — сказал он.\n\n\n  Отступ после пустых строк.\n12 лет спустя.",
    "trailing spaces  \n\nthen a paragraph\r\n\r\nwindows breaks\n\t tab-indented\n\n\n",
    "x.\n\n\n\ny\n \nz\n<|end_of_text|>\n<|begin_of_text|>special-looking text\n's and 're after breaks",
    "\u00a0nbsp\n\u00a0after a newline\n\u2028line separator\u2029paragraph separator\nend",
    "один абзац без переводов строки " * 300,
]
