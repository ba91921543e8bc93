"""Readers: every format and compression, bad records reported with their location, strict mode."""
from __future__ import annotations

import bz2
import gzip
import json
import lzma
from pathlib import Path

import pytest

from lingraft.data_prep.readers import (SourceConfig, detect_format, iter_documents, iter_json_lines, iter_texts,
                                        split_at_lines)
from lingraft.data_prep.records import DropLog
from lingraft.errors import DataError, LingraftError

TEXTS = ["Привет, мир!", "Hello, world.", "Ελληνικά κείμενα", "emoji 🙂 and ünïcödé"]


def _jsonl_bytes(records: list[object]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def _write(path: Path, data: bytes) -> Path:
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    elif path.name.endswith(".xz"):
        data = lzma.compress(data)
    elif path.name.endswith(".bz2"):
        data = bz2.compress(data)
    elif path.name.endswith(".zst"):
        import zstandard
        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    return path


def _read(src: SourceConfig, drops: DropLog | None = None) -> list[str]:
    return [d.text for d in iter_documents(src, drops)]


@pytest.mark.parametrize("name", ["c.jsonl", "c.jsonl.gz", "c.jsonl.xz", "c.jsonl.zst", "c.jsonl.bz2"])
def test_jsonl_every_compression(tmp_path, name):
    path = _write(tmp_path / name, _jsonl_bytes([{"text": t, "id": i} for i, t in enumerate(TEXTS)]))
    assert detect_format(path) == "jsonl"
    docs = list(iter_documents(SourceConfig(path=str(path))))
    assert [d.text for d in docs] == TEXTS
    assert docs[0].source == "c" and docs[2].where == f"{path}:3"


def test_jsonl_text_field_and_bad_records_are_counted_with_location(tmp_path):
    lines = [
        json.dumps({"body": "good one"}).encode(),
        b"{not json",
        json.dumps({"text": "no body field"}).encode(),
        json.dumps({"body": 42}).encode(),
        json.dumps({"body": "   "}).encode(),
        b'{"body": "bad \xff utf8"}',
        b"",  # blank lines are skipped, not drops
        b'{"body": "lone surrogate \\ud83d here"}',
        b'{"body": "paired \\ud83d\\ude00 is fine"}',
        json.dumps({"body": "good two"}).encode(),
    ]
    path = _write(tmp_path / "c.jsonl", b"\n".join(lines) + b"\n")
    drops = DropLog()
    assert _read(SourceConfig(path=str(path), text_field="body"), drops) == ["good one", "paired 😀 is fine",
                                                                             "good two"]
    assert dict(drops.counts) == {"invalid_json": 1, "missing_field": 1, "non_string_field": 1,
                                  "empty_document": 1, "invalid_utf8": 1, "invalid_unicode": 1}
    assert drops.examples["invalid_json"][0]["where"] == f"{path}:2"
    assert drops.examples["invalid_utf8"][0]["where"] == f"{path}:6"


def test_jsonl_text_field_may_be_a_dotted_path_into_a_chat(tmp_path):
    records = [
        {"messages": [{"role": "user", "content": "вопрос"}, {"role": "assistant", "content": "ответ один"}]},
        {"messages": [{"role": "user", "content": "вопрос без ответа"}]},     # no messages.1
        {"messages.1.content": "a key with dots is found whole"},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "ответ два"}]},
    ]
    path = _write(tmp_path / "chats.jsonl", _jsonl_bytes(records))
    drops = DropLog()
    texts = _read(SourceConfig(path=str(path), text_field="messages.1.content"), drops)
    assert texts == ["ответ один", "a key with dots is found whole", "ответ два"]
    assert dict(drops.counts) == {"missing_field": 1}
    assert drops.examples["missing_field"][0]["where"] == f"{path}:2"


def test_split_at_lines_cuts_only_at_line_breaks_and_loses_nothing():
    text = "a" * 10 + "\n" + "b" * 3 + "\n" + "c" * 25 + "\nd"
    pieces = list(split_at_lines(text, 12))
    assert "".join(pieces) == text
    assert pieces == ["a" * 10 + "\n" + "b" * 3 + "\n", "c" * 25 + "\n", "d"]   # a long line is kept whole
    assert list(split_at_lines("one line", 3)) == ["one line"]


def test_long_records_are_cut_into_passages_and_sampled_reproducibly(tmp_path):
    works = [{"author": a, "text": "\n".join(f"{a} строка {i}" for i in range(400))} for a in ("A", "B", "C")]
    path = _write(tmp_path / "works.jsonl", _jsonl_bytes(works))
    whole = list(iter_documents(SourceConfig(path=str(path), chunk_chars=500)))
    assert len(whole) > 3 * 10 and whole[0].where == f"{path}:1#0" and whole[-1].where.startswith(f"{path}:3#")
    assert "".join(d.text for d in whole if d.where.startswith(f"{path}:2#")) == works[1]["text"]
    drops = DropLog()
    sampled = list(iter_documents(SourceConfig(path=str(path), chunk_chars=500, sample_rate=0.3), drops))
    assert 0.15 * len(whole) < len(sampled) < 0.45 * len(whole)
    assert {d.text[0] for d in sampled} == {"A", "B", "C"}         # drawn from the whole source, not its start
    assert drops.counts["sampled_out"] == len(whole) - len(sampled)
    again = list(iter_documents(SourceConfig(path=str(path), chunk_chars=500, sample_rate=0.3)))
    other = list(iter_documents(SourceConfig(path=str(path), chunk_chars=500, sample_rate=0.3, sample_seed=1)))
    assert [d.where for d in again] == [d.where for d in sampled] != [d.where for d in other]


@pytest.mark.parametrize("bad", [{"sample_rate": 0.0}, {"sample_rate": 1.5}, {"chunk_chars": 0}])
def test_bad_chunking_or_sampling_settings_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SourceConfig(path="x.jsonl", **bad)


def _damaged(path: Path, damage: str) -> Path:
    """A compressed JSONL file of many records, cut in half or with a run of zeroed bytes in its middle."""
    records = [{"text": f"запись номер {i}, " * 8 + str(i * 7919 % 1000)} for i in range(3000)]
    data = _write(path, _jsonl_bytes(records)).read_bytes()
    half = len(data) // 2
    if damage == "truncated":
        path.write_bytes(data[:half])
    else:
        path.write_bytes(data[:half] + bytes(64) + data[half + 64:])
    return path


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
@pytest.mark.parametrize("suffix", [".gz", ".xz", ".bz2", ".zst"])
def test_damaged_compressed_file_is_a_named_drop_and_a_strict_error(tmp_path, suffix, damage):
    path = _damaged(tmp_path / f"c.jsonl{suffix}", damage)
    _write(tmp_path / "d.jsonl.zst", _jsonl_bytes([{"text": "after"}]))
    drops = DropLog()
    texts = _read(SourceConfig(path=str(tmp_path)), drops)
    assert len(texts) < 3000 and texts[-1] == "after"      # the next file is still read
    reasons = set(drops.files)
    assert len(reasons) == 1 and reasons <= {"truncated_file", "corrupt_file"}
    reason = reasons.pop()
    assert drops.counts[reason] == 1 and drops.files[reason][0]["file"] == str(path)
    assert drops.to_json()[reason]["files"] == drops.files[reason]
    if damage == "truncated":
        assert reason == "truncated_file"
    # gzip hands out the damaged bytes before its checksum fails, so strict may stop at a bad line first.
    with pytest.raises(DataError, match=rf"{path}(: {reason}|:\d+: invalid_)"):
        _read(SourceConfig(path=str(path)), DropLog(strict=True))


@pytest.mark.parametrize("data", [b"", b"\x28\xb5"], ids=["empty", "magic-only"])
def test_zst_without_a_whole_frame_is_truncated(tmp_path, data):
    path = tmp_path / "c.jsonl.zst"
    path.write_bytes(data)
    drops = DropLog()
    assert _read(SourceConfig(path=str(path)), drops) == []
    assert drops.files == {"truncated_file": [{"file": str(path), "error": drops.files["truncated_file"][0]["error"]}]}


def test_zst_of_several_frames_reads_them_all(tmp_path):
    import zstandard
    frames = [zstandard.ZstdCompressor().compress(_jsonl_bytes([{"text": t}])) for t in TEXTS]
    path = tmp_path / "c.jsonl.zst"
    path.write_bytes(b"".join(frames))
    assert _read(SourceConfig(path=str(path))) == TEXTS


def test_json_lines_of_a_damaged_file_name_it(tmp_path):
    path = _damaged(tmp_path / "c.jsonl.xz", "truncated")
    with pytest.raises(LingraftError, match=rf"{path}: truncated file"):
        list(iter_json_lines(path))
    drops = DropLog()
    assert 0 < len(list(iter_json_lines(path, drops))) < 3000
    assert drops.files["truncated_file"][0]["file"] == str(path)


def test_strict_mode_names_file_and_line(tmp_path):
    path = _write(tmp_path / "c.jsonl.gz", _jsonl_bytes([{"text": "ok"}, {"title": "no text"}]))
    with pytest.raises(DataError, match=rf"{path}:2: missing_field"):
        _read(SourceConfig(path=str(path)), DropLog(strict=True))


def test_jsonl_byte_order_mark_is_tolerated(tmp_path):
    path = _write(tmp_path / "bom.jsonl", b"\xef\xbb\xbf" + _jsonl_bytes([{"text": "первый"}]))
    assert _read(SourceConfig(path=str(path))) == ["первый"]


@pytest.mark.parametrize("suffix", ["", ".zst", ".xz"])
def test_text_units(tmp_path, suffix):
    body = "первая строка\r\nвторая строка\n\n\nтретий абзац,\nего вторая строка\n".encode()
    path = _write(tmp_path / f"t.txt{suffix}", body)
    assert detect_format(path) == "text"
    by_line = list(iter_documents(SourceConfig(path=str(path), text_unit="line")))
    assert [d.text for d in by_line] == ["первая строка", "вторая строка", "третий абзац,", "его вторая строка"]
    assert by_line[2].where == f"{path}:5"
    by_paragraph = list(iter_documents(SourceConfig(path=str(path), text_unit="paragraph")))
    assert [d.text for d in by_paragraph] == ["первая строка\nвторая строка", "третий абзац,\nего вторая строка"]
    assert by_paragraph[1].where == f"{path}:5"
    assert _read(SourceConfig(path=str(path), text_unit="file")) == [body.decode().replace("\r\n", "\n")]


def test_text_bad_line_is_dropped_alone_with_its_line_number(tmp_path):
    path = _write(tmp_path / "t.txt", "один\n".encode() + b"\xc3\x28 broken\n" + "три\n".encode())
    drops = DropLog()
    assert _read(SourceConfig(path=str(path)), drops) == ["один", "три"]
    assert drops.examples["invalid_utf8"][0]["where"] == f"{path}:2"
    drops = DropLog()
    assert _read(SourceConfig(path=str(path), text_unit="file"), drops) == []
    assert drops.counts["invalid_utf8"] == 1


def test_parquet_with_nulls_and_wrong_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"content": ["альфа", None, "", "beta"], "n": [1, 2, 3, 4]}), path)
    drops = DropLog()
    assert _read(SourceConfig(path=str(path), text_field="content"), drops) == ["альфа", "beta"]
    assert dict(drops.counts) == {"missing_field": 1, "empty_document": 1}
    assert drops.examples["missing_field"][0]["where"] == f"{path}:row2"
    with pytest.raises(LingraftError, match="no column 'text'.*content, n"):
        _read(SourceConfig(path=str(path)))
    bogus = _write(tmp_path / "bogus.parquet", b"not parquet at all")
    with pytest.raises(DataError, match="bogus.parquet: corrupt_file .*not a readable parquet file"):
        _read(SourceConfig(path=str(bogus)), DropLog(strict=True))
    drops = DropLog()
    assert _read(SourceConfig(path=str(bogus)), drops) == []
    assert drops.files["corrupt_file"][0]["file"] == str(bogus)


def test_hf_saved_dataset_and_dataset_dict(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"txt": ["раз", "", "два", None]})
    ds.save_to_disk(str(tmp_path / "single"))
    datasets.DatasetDict({"train": ds, "validation": ds.select([2])}).save_to_disk(str(tmp_path / "dict"))

    assert detect_format(tmp_path / "single") == "hf"
    drops = DropLog()
    assert _read(SourceConfig(path=str(tmp_path / "single"), text_field="txt"), drops) == ["раз", "два"]
    assert dict(drops.counts) == {"empty_document": 1, "missing_field": 1}

    assert detect_format(tmp_path / "dict") == "hf"
    assert _read(SourceConfig(path=str(tmp_path / "dict"), text_field="txt", split="validation")) == ["два"]
    with pytest.raises(LingraftError, match="no split 'test' \\(splits: train, validation\\)"):
        _read(SourceConfig(path=str(tmp_path / "dict"), text_field="txt", split="test"))
    with pytest.raises(LingraftError, match="no column 'text'"):
        _read(SourceConfig(path=str(tmp_path / "single")))


def test_hf_unknown_hub_id_is_one_line_error():
    # conftest sets HF_HUB_OFFLINE=1: the hub is never contacted.
    src = SourceConfig(path="no-such-org/no-such-dataset-xyz")
    assert detect_format(src.path) == "hf"
    with pytest.raises(LingraftError, match="no-such-org/no-such-dataset-xyz: cannot load dataset"):
        _read(src)


def test_folder_reads_only_files_of_its_format_in_sorted_order(tmp_path):
    _write(tmp_path / "b.jsonl.gz", _jsonl_bytes([{"text": "second"}]))
    _write(tmp_path / "a.jsonl", _jsonl_bytes([{"text": "first"}]))
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "sub" / "c.jsonl.xz", _jsonl_bytes([{"text": "third"}]))
    (tmp_path / "README.md").write_text("not data")
    (tmp_path / ".hidden.jsonl").write_text('{"text": "hidden"}\n')
    assert detect_format(tmp_path) == "jsonl"
    assert _read(SourceConfig(path=str(tmp_path))) == ["first", "second", "third"]


def test_missing_inputs_are_clear_errors(tmp_path):
    with pytest.raises(LingraftError, match="missing.jsonl: no such file"):
        _read(SourceConfig(path=str(tmp_path / "missing.jsonl")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(LingraftError, match="holds no .jsonl"):
        _read(SourceConfig(path=str(tmp_path / "empty")))
    odd = tmp_path / "data.bin"
    odd.write_bytes(b"x")
    with pytest.raises(LingraftError, match="cannot tell the format"):
        _read(SourceConfig(path=str(odd)))


def test_real_shared_files(shared):
    ud = list(iter_texts(str(shared / "ru_text" / "ud_russian_sentences.jsonl")))
    assert len(ud) == 4657
    drops = DropLog(strict=True)
    ruslit = iter_documents(SourceConfig(path=str(shared / "ru_text" / "ruslit.jsonl.xz")), drops)
    first = next(ruslit)
    assert first.source == "ruslit" and len(first.text) > 1000
    assert first.where.endswith("ruslit.jsonl.xz:1")
    ruslit.close()


def test_include_and_exclude_select_records_by_metadata(tmp_path):
    """A held-out author: excluded from training, included alone for evaluation; counted, even in strict mode."""
    path = _write(tmp_path / "lit.jsonl.xz", _jsonl_bytes([
        {"text": "a", "author": "Blok"}, {"text": "b", "author": "Pushkin"}, {"text": "c"}, {"text": "d", "year": 1}]))
    drops = DropLog(strict=True)
    assert _read(SourceConfig(path=str(path), exclude={"author": ["Blok"]}), drops) == ["b", "c", "d"]
    assert drops.counts == {"filtered_by_metadata": 1}
    assert _read(SourceConfig(path=str(path), include={"author": ["Blok"]})) == ["a"]
    assert _read(SourceConfig(path=str(path), include={"year": ["1"]})) == ["d"]      # compared as strings
    from lingraft.config import ConfigError
    with pytest.raises(ConfigError, match="include.author: list at least one value"):
        SourceConfig(path=str(path), include={"author": []})
    text = tmp_path / "plain.txt"
    text.write_text("x\n", encoding="utf-8")
    with pytest.raises(LingraftError, match="filter JSONL records by field"):
        _read(SourceConfig(path=str(text), exclude={"author": ["Blok"]}))
