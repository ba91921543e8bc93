"""Readers: JSONL (plain, .gz, .xz, .zst), plain text, parquet, and HF `datasets`.

Every reader yields `Document`s and reports bad records (invalid JSON or UTF-8, missing
or non-string fields, empty texts) to a `DropLog` with their location; a file that cannot be
read to its end (truncated or corrupt) is dropped whole, by name, after the records read before
the damage. Readers never normalise or filter by content: that is cleaning's job. They only
select what the source config asks for (`include`/`exclude` by metadata, a seeded `sample_rate`),
counting what they leave out.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator, Literal

from lingraft.data_prep.compressed import CorruptFileError, open_binary
from lingraft.data_prep.records import MISSING, Document, DropLog, field_value
from lingraft.config import DatasetRef, require
from lingraft.errors import LingraftError
from lingraft.manifest import MANIFEST_NAME

SourceFormat = Literal["auto", "jsonl", "text", "parquet", "hf"]
_JSONL_SUFFIXES = {".jsonl", ".json", ".ndjson"}
_TEXT_SUFFIXES = {".txt", ".text", ".md"}
_SUFFIXES = {"jsonl": _JSONL_SUFFIXES, "text": _TEXT_SUFFIXES, "parquet": {".parquet"}}
_COMPRESSION_SUFFIXES = (".gz", ".xz", ".zst", ".bz2")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # only JSON escapes can produce these
# Files `save_to_disk` writes: a Dataset folder has the first two, a DatasetDict folder the last.
_HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


@dataclass
class SourceConfig:
    """One corpus in the mix."""
    path: DatasetRef                   # a file, a folder of files, or (format: hf) a hub id / local dataset
    name: str = ""                     # label in manifests; defaults to the file stem
    format: SourceFormat = "auto"
    text_field: str = "text"           # JSONL may name a dotted path: `messages.1.content` (a chat's answer)
    weight: float = 1.0                # share of the mixed output, by characters
    split: str = "train"               # format: hf only
    hf_config: str | None = None       # format: hf only (the dataset's configuration name)
    text_unit: Literal["file", "line", "paragraph"] = "line"   # format: text only: what one document is
    # JSONL record filters by metadata (field -> values, compared as strings), e.g. a held-out author:
    # `exclude: {author: [Blok]}` for training, `include: {author: [Blok]}` for its evaluation text.
    include: dict[str, list[str]] = field(default_factory=dict)   # keep only records with a listed value
    exclude: dict[str, list[str]] = field(default_factory=dict)   # leave out records with a listed value
    # A capped mix reads a source from its start, so a corpus of long works ordered by author
    # (RusLit: a novel per record) would give one author. `chunk_chars` cuts every document at
    # line breaks into passages of about that many characters, and `sample_rate` keeps each
    # document (each passage) with that probability, seeded: the mix then draws from the whole
    # source. Sampled-out documents are counted as `sampled_out` in the manifest.
    chunk_chars: int | None = None
    sample_rate: float = 1.0
    sample_seed: int = 0

    def __post_init__(self) -> None:
        require(self.weight > 0, "weight", f"must be > 0, got {self.weight}")
        for key in ("include", "exclude"):
            for name, values in getattr(self, key).items():
                require(bool(values), f"{key}.{name}", "list at least one value")
        require(self.chunk_chars is None or self.chunk_chars >= 1, "chunk_chars",
                f"must be >= 1 (or unset), got {self.chunk_chars}")
        require(0 < self.sample_rate <= 1, "sample_rate", f"must be in (0, 1], got {self.sample_rate}")
        if not self.name:
            self.name = _stem(self.path)

    @classmethod
    def from_string(cls, path: str) -> dict:
        """`--source corpus.jsonl` on the command line: a source with default settings."""
        return {"path": path}


def _strip_compression(name: str) -> str:
    for suffix in _COMPRESSION_SUFFIXES:
        name = name.removesuffix(suffix)
    return name


def _stem(path: str) -> str:
    name = _strip_compression(Path(path).name)
    return Path(name).stem or name


def detect_format(path: str | Path) -> SourceFormat:
    p = Path(path)
    if p.is_dir():
        if _is_saved_dataset(p) or any(p.glob("*.arrow")):
            return "hf"
        for fmt in ("jsonl", "parquet", "text"):
            if _data_files(p, fmt):
                return fmt
        raise LingraftError(f"{p}: folder holds no .jsonl/.txt/.parquet files (compressed or not)")
    fmt = _format_of_name(p.name)
    if fmt is not None:
        return fmt
    if not p.exists():
        return "hf"  # not a local path: treat it as a hub dataset id
    raise LingraftError(f"{p}: cannot tell the format from the name; set format: jsonl|text|parquet|hf")


def _format_of_name(name: str) -> SourceFormat | None:
    ext = Path(_strip_compression(name)).suffix.lower()
    return next((fmt for fmt, suffixes in _SUFFIXES.items() if ext in suffixes), None)


def _is_saved_dataset(folder: Path) -> bool:
    return any((folder / marker).exists() for marker in _HF_MARKERS)


def _data_files(folder: Path, fmt: SourceFormat) -> list[Path]:
    """The files of `folder` (recursively, sorted) whose names say they hold `fmt`.

    A stage's own `manifest.json` is metadata, not data, so a `prep clean` output folder
    reads as its parts.
    """
    return sorted(f for f in folder.rglob("*")
                  if f.is_file() and not f.name.startswith(".") and f.name != MANIFEST_NAME
                  and _format_of_name(f.name) == fmt)


def _files(path: str, fmt: SourceFormat) -> list[Path]:
    p = Path(path)
    if p.is_dir():
        files = _data_files(p, fmt)
        if not files:
            raise LingraftError(f"{p}: folder holds no {fmt} files")
        return files
    if not p.exists():
        raise LingraftError(f"{p}: no such file")
    return [p]


def iter_json_lines(path: str | Path, drops: DropLog | None = None) -> Iterator[tuple[str, Any]]:
    """("path:line", record) for every non-blank line of a (compressed) JSONL file.

    A line that is not UTF-8 JSON is dropped into `drops` ("invalid_json") and reading goes
    on; without `drops` it is an error naming the line. A truncated or corrupt file likewise
    ends as a file drop, or an error naming the file."""
    if not Path(path).is_file():
        raise LingraftError(f"{path}: no such file")
    try:
        yield from _json_lines(path, drops)
    except CorruptFileError as exc:
        if drops is None:
            raise
        drops.drop_file(exc.reason, exc.path, exc.detail)


def _json_lines(path: str | Path, drops: DropLog | None) -> Iterator[tuple[str, Any]]:
    with open_binary(path) as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(raw.decode("utf-8-sig" if lineno == 1 else "utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                if drops is None:
                    raise LingraftError(f"{where}: not a JSON line ({exc})") from None
                drops.drop("invalid_json", where, raw[:80])
                continue
            yield where, record


def read_jsonl(path: Path, src: SourceConfig, drops: DropLog) -> Iterator[Document]:
    with open_binary(path) as fh:
        for lineno, raw in enumerate(fh, 1):
            where = f"{path}:{lineno}"
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # tolerate a byte-order mark
            except UnicodeDecodeError:
                drops.drop("invalid_utf8", where, raw[:80])
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                drops.drop("invalid_json", where, line)
                continue
            text = field_value(record, src.text_field) if isinstance(record, dict) else MISSING
            if text is MISSING:
                drops.drop("missing_field", where, line)
                continue
            if not _selected(record, src):
                drops.skip("filtered_by_metadata", where, line)
                continue
            if not isinstance(text, str):
                drops.drop("non_string_field", where, line)
                continue
            if not text.strip():
                drops.drop("empty_document", where, line)
                continue
            if (b"\\ud" in raw or b"\\uD" in raw) and _LONE_SURROGATE.search(text):
                drops.drop("invalid_unicode", where, line)  # a lone surrogate escape cannot be written as UTF-8
                continue
            yield Document(text=text, source=src.name, where=where)


def _selected(record: dict[str, Any], src: SourceConfig) -> bool:
    """Whether a record passes the source's `include`/`exclude` metadata filters. A record without
    an included field is not selected; one without an excluded field is."""
    if any(str(record.get(name)) not in values for name, values in src.include.items()):
        return False
    return not any(name in record and str(record[name]) in values for name, values in src.exclude.items())


def read_text(path: Path, src: SourceConfig, drops: DropLog) -> Iterator[Document]:
    with open_binary(path) as fh:
        if src.text_unit == "file":
            try:
                text = fh.read().decode("utf-8-sig").replace("\r\n", "\n")
            except UnicodeDecodeError as exc:
                drops.drop("invalid_utf8", f"{path}:byte{exc.start}", "")
                return
            chunks: Iterator[tuple[int, str]] = iter([(1, text)])
        else:
            chunks = _text_chunks(_decoded_lines(fh, path, drops), src.text_unit)
        for lineno, text in chunks:
            where = f"{path}:{lineno}"
            if not text.strip():
                if src.text_unit == "file":
                    drops.drop("empty_document", where, text)
                continue  # blank lines separate units; they are not documents
            yield Document(text=text, source=src.name, where=where)


def _decoded_lines(fh: IO[bytes], path: Path, drops: DropLog) -> Iterator[tuple[int, str]]:
    """(line number, line without its end) for each line; undecodable lines are dropped one by one,
    so the reported line number is exact and the rest of the file is still read."""
    for lineno, raw in enumerate(fh, 1):
        try:
            line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError:
            drops.drop("invalid_utf8", f"{path}:{lineno}", raw[:80])
            line = ""  # ends a paragraph, like a blank line
        yield lineno, line.rstrip("\r\n")


def _text_chunks(lines: Iterator[tuple[int, str]], unit: str) -> Iterator[tuple[int, str]]:
    """Lines, or blank-line-separated paragraphs, with their first line number."""
    if unit == "line":
        yield from lines
        return
    buf: list[str] = []
    start = 1
    for lineno, line in lines:
        if line.strip():
            if not buf:
                start = lineno
            buf.append(line)
        elif buf:
            yield start, "\n".join(buf)
            buf = []
    if buf:
        yield start, "\n".join(buf)


def read_parquet(path: Path, src: SourceConfig, drops: DropLog) -> Iterator[Document]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pyarrow.ArrowException, OSError) as exc:
        raise CorruptFileError(path, "corrupt_file", f"not a readable parquet file: {exc}") from None
    if src.text_field not in pf.schema_arrow.names:
        raise LingraftError(f"{path}: no column '{src.text_field}' (columns: {', '.join(pf.schema_arrow.names)})")
    row = 0
    for batch in _parquet_batches(pf, path, src.text_field):
        for text in batch.column(0).to_pylist():
            row += 1
            where = f"{path}:row{row}"
            if not isinstance(text, str):
                drops.drop("non_string_field" if text is not None else "missing_field", where, text)
            elif not text.strip():
                drops.drop("empty_document", where, text)
            else:
                yield Document(text=text, source=src.name, where=where)


def _parquet_batches(pf: Any, path: Path, column: str) -> Iterator[Any]:
    import pyarrow

    batches = pf.iter_batches(columns=[column], batch_size=4096)
    while True:
        try:
            batch = next(batches, None)
        except (pyarrow.ArrowException, OSError) as exc:  # a damaged row group or page
            raise CorruptFileError(path, "corrupt_file", f"{type(exc).__name__}: {exc}") from None
        if batch is None:
            return
        yield batch


def read_hf(src: SourceConfig, drops: DropLog) -> Iterator[Document]:
    """A hub id (streamed) or a local `save_to_disk` folder."""
    import datasets

    p = Path(src.path)
    try:
        if p.is_dir() and _is_saved_dataset(p):
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                if src.split not in ds:
                    raise LingraftError(f"{p}: no split '{src.split}' (splits: {', '.join(ds)})")
                ds = ds[src.split]
        else:
            ds = datasets.load_dataset(src.path, src.hf_config, split=src.split, streaming=True)
    except LingraftError:
        raise
    except Exception as exc:  # datasets raises many types (hub, network, format); report them as one line
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise LingraftError(f"{src.path}: cannot load dataset ({exc.__class__.__name__}: {first_line})") from None
    columns = getattr(ds, "column_names", None)
    if columns is not None and src.text_field not in columns:
        raise LingraftError(f"{src.path}: no column '{src.text_field}' (columns: {', '.join(columns)})")
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
    """Every document of one source, in file order: cut into passages and sampled when the
    source asks for it (`chunk_chars`, `sample_rate`)."""
    drops = drops if drops is not None else DropLog()
    documents = _read_documents(src, drops)
    if src.chunk_chars is not None:
        documents = (piece for doc in documents for piece in _passages(doc, src.chunk_chars))
    if src.sample_rate < 1:
        documents = _sampled(documents, src.sample_rate, src.sample_seed, drops)
    yield from documents


def split_at_lines(text: str, chars: int) -> Iterator[str]:
    """`text` in consecutive pieces of at least `chars` characters (the last may be shorter), each
    ending at a line break; a line longer than `chars` is never cut. Joined, the pieces are `text`."""
    start = 0
    while start < len(text):
        end = text.find("\n", start + chars - 1)
        end = len(text) if end < 0 else end + 1
        yield text[start:end]
        start = end


def _passages(doc: Document, chars: int) -> Iterator[Document]:
    for k, piece in enumerate(split_at_lines(doc.text, chars)):
        if piece.strip():
            yield Document(text=piece, source=doc.source, where=f"{doc.where}#{k}")


def _sampled(documents: Iterator[Document], rate: float, seed: int, drops: DropLog) -> Iterator[Document]:
    draw = random.Random(seed).random
    for doc in documents:
        if draw() < rate:
            yield doc
        else:
            drops.skip("sampled_out", doc.where, doc.text)


def _read_documents(src: SourceConfig, drops: DropLog) -> Iterator[Document]:
    fmt = detect_format(src.path) if src.format == "auto" else src.format
    if (src.include or src.exclude) and fmt != "jsonl":
        raise LingraftError(f"{src.path}: include/exclude filter JSONL records by field; this source is {fmt}")
    if fmt == "hf":
        yield from read_hf(src, drops)
        return
    reader = {"jsonl": read_jsonl, "text": read_text, "parquet": read_parquet}[fmt]
    for path in _files(src.path, fmt):
        try:
            yield from reader(path, src, drops)
        except CorruptFileError as exc:
            drops.drop_file(exc.reason, exc.path, exc.detail)


def iter_texts(path: str, text_field: str = "text", fmt: SourceFormat = "auto",
               drops: DropLog | None = None) -> Iterator[str]:
    """Just the texts of one file or folder: for tokenizer training and statistics."""
    for doc in iter_documents(SourceConfig(path=path, text_field=text_field, format=fmt), drops):
        yield doc.text
