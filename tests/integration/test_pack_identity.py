"""`prep pack` output against a plain reference packer kept here: byte for byte.

The reference is the packer as it was before documents were split for tokenization: every
document tokenized whole with `Tokenizer.encode`, paragraph starts from its character
offsets, samples planned by `plan_samples`. Whatever the packer does for speed (splitting
long documents at paragraph starts, worker processes, batching, overlapped writing) must
give these bytes. The inputs are slices of real text (RusLit novels with dialogue
paragraphs, English web pages) plus whitespace corner cases around paragraph breaks.
"""
from __future__ import annotations

import io
import json
import lzma
import re
from itertools import islice
from pathlib import Path

import numpy as np
import pytest

from lingraft.data_prep.clean_config import CleanConfig, CleanStageConfig, NearDedupConfig
from lingraft.data_prep.clean_stage import run_clean
from lingraft.data_prep.pack import run_pack
from lingraft.data_prep.pack_config import PackConfig
from lingraft.data_prep.packed_format import plan_samples
from lingraft.data_prep.readers import SourceConfig
from lingraft.manifest import read_manifest
from tests.helpers import PACK_CORNER_CASES

LLAMA3 = "tokenizers/llama3/tokenizer.json.xz"      # byte-level BPE: long documents are split
MISTRAL = "tokenizers/mistral/mistral7b_v0.1_tokenizer.model"   # SentencePiece: never split
PARAGRAPH_START = re.compile(r"\n\s*(?=\S)")


def _long_texts(shared: Path) -> list[str]:
    with lzma.open(shared / "ru_text/ruslit.jsonl.xz", "rt", encoding="utf-8") as fh:
        ru = [json.loads(line)["text"][:60_000] for line in islice(fh, 4)]
    with open(shared / "en_text/fineweb_en_sample.jsonl", encoding="utf-8") as fh:
        en = [json.loads(line)["text"] for line in islice(fh, 60)]
    return [*ru, *en]


@pytest.fixture(scope="module")
def clean_dir(shared, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("identity")
    texts = _long_texts(shared) + PACK_CORNER_CASES
    src = tmp / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    cfg = CleanStageConfig(sources=[SourceConfig(path=str(src), name="mix")], out=str(tmp / "clean"),
                           clean=CleanConfig(near_dedup=NearDedupConfig(enabled=False)),
                           part_chars=sum(map(len, texts)) // 5)
    return run_clean(cfg)


def _reference_shard(backend, part: Path, seq_len: int, mode: str, bos: int | None, eos: int | None,
                     dtype: np.dtype) -> dict[str, bytes]:
    tokens: list[int] = []
    doc_starts: list[int] = []
    boundaries: list[int] = []
    for line in part.read_bytes().split(b"\n")[:-1]:   # not splitlines(): texts hold U+2028
        text = json.loads(line)["text"]
        enc = backend.encode(text, add_special_tokens=False)
        doc_starts.append(len(tokens))
        inner = len(tokens) + (bos is not None)
        for match in PARAGRAPH_START.finditer(text):
            token = enc.char_to_token(match.end())
            if token:
                boundaries.append(inner + token)
        tokens += ([bos] if bos is not None else []) + enc.ids + ([eos] if eos is not None else [])
    starts = np.asarray(doc_starts, dtype=np.int64)
    cut = {"stream": None, "document": starts, "paragraph": np.union1d(starts, np.asarray(boundaries, np.int64))}
    samples = plan_samples(len(tokens), seq_len, cut[mode])
    return {".tokens.bin": np.asarray(tokens, dtype=dtype).tobytes(), ".docs.npy": _npy(starts),
            ".samples.npy": _npy(samples)}


def _npy(values: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(values, dtype=np.int64), allow_pickle=False)
    return buf.getvalue()


@pytest.mark.parametrize("tokenizer, mode, workers, extra", [
    (LLAMA3, "paragraph", 2, {"split_chars": 1_000, "batch_chars": 20_000}),
    (LLAMA3, "stream", 1, {"split_chars": 3_000}),
    (MISTRAL, "document", 1, {"split_chars": 1_000}),
])
def test_packed_bytes_equal_the_whole_document_reference(shared, clean_dir, tmp_path, tokenizer, mode, workers, extra):
    from lingraft.vocabulary.loading import load_tokenizer
    out = run_pack(PackConfig(out=tmp_path / "packed", tokenizer=str(shared / tokenizer), input=clean_dir,
                              seq_len=48, sample_start=mode, bos=True, eos_token="</s>" if tokenizer == MISTRAL
                              else "<|end_of_text|>", bos_token=None if tokenizer == MISTRAL else "<|begin_of_text|>",
                              workers=workers, **extra))
    tok = load_tokenizer(shared / tokenizer)
    outputs = read_manifest(out)["outputs"]
    parts = read_manifest(clean_dir)["outputs"]["parts"]
    assert len(outputs["shards"]) == len(parts) >= 4
    for shard, part in zip(outputs["shards"], parts):
        expected = _reference_shard(tok.backend_tokenizer, clean_dir / part["file"], 48, mode, outputs["bos_id"],
                                    outputs["eos_id"], np.dtype(outputs["dtype"]))
        for suffix, data in expected.items():
            assert (out / f"{shard['shard']}{suffix}").read_bytes() == data, f"{shard['shard']}{suffix}"
