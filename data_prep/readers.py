"""Readers: JSONL (plain, .gz, .xz, .zst), plain text, parquet, and HF `datasets`.

Every reader yields `Document`s and reports bad records (invalid JSON or UTF-8, missing
or non-string fields, empty texts) to a `DropLog` with their location. Readers never
normalise or filter: that is cleaning's job.
"""
from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator, Literal

from data_prep.records import Document, DropLog
from lingraft.config import require
from lingraft.errors import LingraftError

SourceFormat = Literal["auto", "jsonl", "text", "parquet", "hf"]
_JSONL_SUFFIXES = {".jsonl", ".json", ".ndjson"}
_TEXT_SUFFIXES = {".txt", ".text", ".md"}


@dataclass
class SourceConfig:
    """One corpus in the mix."""
    path: str                          # a file, a folder of files, or (format: hf) a hub id / local dataset
    name: str = ""                     # label in manifests; defaults to the file stem
    format: SourceFormat = "auto"
    text_field: str = "text"
    weight: float = 1.0                # share of the mixed output, by characters
    split: str = "train"               # format: hf only
    hf_config: str | None = None       # format: hf only (the dataset's configuration name)
    text_unit: Literal["file", "line", "paragraph"] = "line"   # format: text only: what one document is

    def __post_init__(self) -> None:
        require(self.weight > 0, "weight", f"must be > 0, got {self.weight}")
        if not self.name:
            self.name = _stem(self.path)


def _stem(path: str) -> str:
    name = Path(path).name
    for suffix in (".gz", ".xz", ".zst", ".bz2"):
        name = name.removesuffix(suffix)
    return Path(name).stem or name


def open_binary(path: str | Path) -> IO[bytes]:
    """Open a possibly compressed file for binary reading, by its suffix."""
    p = str(path)
    if p.endswith(".gz"):
        return gzip.open(p, "rb")
    if p.endswith(".xz"):
        return lzma.open(p, "rb")
    if p.endswith(".bz2"):
        return bz2.open(p, "rb")
    if p.endswith(".zst"):
        import zstandard
        return zstandard.ZstdDecompressor().stream_reader(open(p, "rb"), closefd=True)
    return open(p, "rb")


def detect_format(path: str | Path) -> SourceFormat:
    p = Path(path)
    if p.is_dir():
        if (p / "dataset_info.json").exists() or (p / "state.json").exists() or any(p.glob("*.arrow")):
            return "hf"
        files = _data_files(p)
        if not files:
            raise LingraftError(f"{p}: folder holds no .jsonl/.txt/.parquet files")
        return detect_format(files[0])
    name = p.name
    for suffix in (".gz", ".xz", ".zst", ".bz2"):
        name = name.removesuffix(suffix)
    ext = Path(name).suffix.lower()
    if ext in _JSONL_SUFFIXES:
        return "jsonl"
    if ext in _TEXT_SUFFIXES:
        return "text"
    if ext == ".parquet":
        return "parquet"
    if not p.exists():
        return "hf"  # not a local path: treat it as a hub dataset id
    raise LingraftError(f"{p}: cannot tell the format from the name; set format: jsonl|text|parquet|hf")


def _data_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.rglob("*") if f.is_file() and not f.name.startswith("."))


def _files(path: str) -> list[Path]:
    p = Path(path)
    if p.is_dir():
        return _data_files(p)
    if not p.exists():
        raise LingraftError(f"{p}: no such file")
    return [p]


def read_jsonl(path: Path, src: SourceConfig, drops: DropLog) -> Iterator[Document]:
    with open_binary(path) as fh:
        for lineno, raw in enumerate(fh, 1):
            where = f"{path}:{lineno}"
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                drops.drop("invalid_utf8", where, raw[:80])
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                drops.drop("invalid_json", where, line)
                continue
            if not isinstance(record, dict) or src.text_field not in record:
                drops.drop("missing_field", where, line)
                continue
            text = record[src.text_field]
            if not isinstance(text, str):
                drops.drop("non_string_field", where, line)
                continue
            if not text.strip():
                drops.drop("empty_document", where, line)
                continue
            yield Document(text=text, source=src.name, where=where)


def read_text(path: Path, src: SourceConfig, drops: DropLog) -> Iterator[Document]:
    with open_binary(path) as raw_fh:
        fh = io.TextIOWrapper(raw_fh, encoding="utf-8", errors="strict", newline=None)
        if src.text_unit == "file":
            try:
                text = fh.read()
            except UnicodeDecodeError:
                drops.drop("invalid_utf8", f"{path}", "")
                return
            chunks = [(1, text)]
        else:
            chunks = _text_chunks(fh, path, src.text_unit, drops)
        for lineno, text in chunks:
            where = f"{path}:{lineno}"
            if not text.strip():
                if src.text_unit == "file":
                    drops.drop("empty_document", where, text)
                continue  # blank lines separate units; they are not documents
            yield Document(text=text, source=src.name, where=where)


def _text_chunks(fh: IO[str], path: Path, unit: str, drops: DropLog) -> Iterator[tuple[int, str]]:
    """Lines, or blank-line-separated paragraphs, with their first line number."""
    buf: list[str] = []
    start = 1
    lineno = 0
    while True:
        try:
            line = fh.readline()
        except UnicodeDecodeError:
            drops.drop("invalid_utf8", f"{path}:{lineno + 1}", "")
            return  # the decoder cannot resynchronise reliably; stop this file
        if not line:
            break
        lineno += 1
        if unit == "line":
            yield lineno, line.rstrip("\n")
            continue
        if line.strip():
            if not buf:
                start = lineno
            buf.append(line)
        elif buf:
            yield start, "".join(buf).rstrip("\n")
            buf = []
    if buf:
        yield start, "".join(buf).rstrip("\n")


def read_parquet(path: Path, src: SourceConfig, drops: DropLog) -> Iterator[Document]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    if src.text_field not in pf.schema_arrow.names:
        raise LingraftError(f"{path}: no column '{src.text_field}' (columns: {', '.join(pf.schema_arrow.names)})")
    row = 0
    for batch in pf.iter_batches(columns=[src.text_field], batch_size=4096):
        for text in batch.column(0).to_pylist():
            row += 1
            where = f"{path}:row{row}"
            if not isinstance(text, str):
                drops.drop("non_string_field" if text is not None else "missing_field", where, text)
            elif not text.strip():
                drops.drop("empty_document", where, text)
            else:
                yield Document(text=text, source=src.name, where=where)


def read_hf(src: SourceConfig, drops: DropLog) -> Iterator[Document]:
    """A hub id (streamed) or a local `save_to_disk` folder."""
    import datasets

    p = Path(src.path)
    if p.is_dir() and ((p / "dataset_info.json").exists() or (p / "state.json").exists()):
        ds = datasets.load_from_disk(str(p))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[src.split]
    else:
        ds = datasets.load_dataset(src.path, src.hf_config, split=src.split, streaming=True)
    for idx, record in enumerate(ds):
        where = f"{src.path}[{idx}]"
        text = record.get(src.text_field)
        if text is None:
            drops.drop("missing_field", where, record)
        elif not isinstance(text, str):
            drops.drop("non_string_field", where, record)
        elif not text.strip():
            drops.drop("empty_document", where, text)
        else:
            yield Document(text=text, source=src.name, where=where)


def iter_documents(src: SourceConfig, drops: DropLog | None = None) -> Iterator[Document]:
    """Every document of one source, in file order."""
    drops = drops if drops is not None else DropLog()
    fmt = detect_format(src.path) if src.format == "auto" else src.format
    if fmt == "hf":
        yield from read_hf(src, drops)
        return
    reader = {"jsonl": read_jsonl, "text": read_text, "parquet": read_parquet}[fmt]
    for path in _files(src.path):
        yield from reader(path, src, drops)


def iter_texts(path: str, text_field: str = "text", fmt: SourceFormat = "auto",
               drops: DropLog | None = None) -> Iterator[str]:
    """Just the texts of one file or folder: for tokenizer training and statistics."""
    for doc in iter_documents(SourceConfig(path=path, text_field=text_field, format=fmt), drops):
        yield doc.text
