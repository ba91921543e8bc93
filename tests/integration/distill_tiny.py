"""A tiny teacher/student pair for the distillation tests, built from real Russian text.

The teacher is a random tiny Llama with a small byte-level BPE; the student is what
`lingraft init` makes of it with a larger BPE trained the same way (its first merges are
the teacher's, so the old ids come first, as in an Extended vocabulary); the data is that
text packed with the student's tokenizer. Tokens often end inside a Cyrillic character
(two bytes each), so the byte alignment is exercised for real.
"""
from __future__ import annotations

import json
import lzma
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

OLD_VOCAB, NEW_VOCAB = 320, 448
SEQ = 48


def russian_texts(shared: Path, docs: int = 40, chars: int = 600) -> list[str]:
    """`docs` passages of RusLit, each about `chars` characters, cut at a space."""
    out = []
    with lzma.open(shared / "ru_text" / "ruslit.jsonl.xz", "rt", encoding="utf-8") as fh:
        for line in islice(fh, 4):
            text = json.loads(line)["text"]
            for start in range(0, min(len(text), docs * chars), chars):
                window = text[start:start + chars]
                out.append(window[:window.rfind(" ")].strip() if " " in window else window)
    return [t for t in out if t][:docs * 2]


def byte_level_bpe(texts: list[str], vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


@dataclass(frozen=True)
class DistillPair:
    teacher: Path     # HF folder with the old tokenizer
    student: Path     # `lingraft init` output: new tokenizer, token map, manifest naming the teacher
    data: Path        # packed with the student's tokenizer


def make_distill_pair(shared: Path, folder: Path, tied: bool = False) -> DistillPair:
    import numpy as np

    from lingraft.cli import main as lingraft
    from lingraft.data_prep.packed_format import ShardBuilder, packed_outputs, shard_name, token_dtype
    from lingraft.manifest import new_manifest
    from lingraft.vocabulary.loading import load_tokenizer, tokenizer_fingerprint
    from tests.integration.train_tiny import make_tiny_llama
    texts = russian_texts(shared)
    old, new = byte_level_bpe(texts, OLD_VOCAB), byte_level_bpe(texts, NEW_VOCAB)
    teacher = make_tiny_llama(folder / "teacher", vocab=len(old), tied=tied)
    sharpen_head(teacher)
    old.save_pretrained(teacher)
    new.save_pretrained(folder / "new_tok")
    student = folder / "student"
    assert lingraft(["init", "--model", str(teacher), "--tokenizer", str(folder / "new_tok"), "--out", str(student),
                     "--method", "mean"]) == 0
    tok = load_tokenizer(student)
    builder = ShardBuilder(token_dtype(len(tok)), eos_id=tok.eos_token_id)
    for ids in tok(texts, add_special_tokens=False)["input_ids"]:
        builder.add(np.asarray(ids), source="ruslit")
    data = folder / "data"
    data.mkdir()
    record = builder.write(data, shard_name(0), SEQ, "stream")
    manifest = new_manifest("test.pack", {})
    manifest.outputs = packed_outputs([record], tokenizer={"spec": str(student), "fingerprint": tokenizer_fingerprint(tok),
                                                           "vocab_size": len(tok)},
                                      dtype=token_dtype(len(tok)).name, seq_len=SEQ, sample_start="stream", bos_id=None,
                                      eos_id=tok.eos_token_id)
    manifest.write(data)
    return DistillPair(teacher, student, data)


def sharpen_head(folder: Path, scale: float = 40.0) -> None:
    """A random model's next-token distributions are nearly uniform, so any two models agree;
    a scaled head makes them peaked, so the teacher has something to teach."""
    from safetensors.torch import load_file, save_file
    path = folder / "model.safetensors"
    tensors = load_file(path)
    key = "lm_head.weight" if "lm_head.weight" in tensors else "model.embed_tokens.weight"
    tensors[key] = tensors[key] * scale
    save_file(tensors, path, metadata={"format": "pt"})
