"""`lingraft prep pack`: sample planning, shard contents, modes, workers, MPI ranks, resume, bad input."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch

from lingraft.data_prep.clean_config import CleanConfig, CleanStageConfig, MixConfig, NearDedupConfig
from lingraft.data_prep.clean_stage import run_clean
from lingraft.data_prep.pack import run_pack
from lingraft.data_prep.pack_config import PackConfig
from lingraft.data_prep.packed_format import plan_samples, token_dtype, unused_tail
from lingraft.data_prep.readers import SourceConfig
from lingraft.errors import LingraftError
from lingraft.hashing import sha256_file
from lingraft.manifest import read_manifest

from tests.conftest import REPO

PYTHON = sys.executable     # the interpreter running the tests: its environment has lingraft and mpi4py
MISTRAL = "tokenizers/mistral/mistral7b_v0.1_tokenizer.model"   # SentencePiece, 32,000 ids: fast to load
N_PARTS = 24


def _jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def clean_dir(shared, tmp_path_factory) -> Path:
    """A real `prep clean` output: English web docs mixed with Russian sentences, in ~24 parts."""
    tmp = tmp_path_factory.mktemp("clean")
    with open(shared / "en_text/fineweb_en_sample.jsonl", encoding="utf-8") as fh:
        en = [json.loads(line)["text"] for line in islice(fh, 200)]
    with open(shared / "ru_text/ud_russian_sentences.jsonl", encoding="utf-8") as fh:
        ru = [json.loads(line)["text"] for line in islice(fh, 600)]
    chars = sum(map(len, en + ru))
    cfg = CleanStageConfig(sources=[SourceConfig(path=str(_jsonl(tmp / "en.jsonl", en)), name="en", weight=0.8),
                                    SourceConfig(path=str(_jsonl(tmp / "ru.jsonl", ru)), name="ru", weight=0.2)],
                           out=str(tmp / "clean"), clean=CleanConfig(near_dedup=NearDedupConfig(enabled=False)),
                           mix=MixConfig(on_exhausted="continue"), part_chars=chars // N_PARTS)
    out = run_clean(cfg)
    assert len(read_manifest(out)["outputs"]["parts"]) >= 12
    return out


def _pack(shared: Path, input_dir: Path, out: Path, **kw) -> Path:
    cfg = PackConfig(out=out, tokenizer=str(shared / MISTRAL), input=input_dir, **{"seq_len": 64, **kw})
    return run_pack(cfg)


@pytest.fixture(scope="module")
def reference(shared, clean_dir, tmp_path_factory) -> Path:
    """An uninterrupted single-process run (threads, system malloc): the bytes every other way of
    running must match."""
    return _pack(shared, clean_dir, tmp_path_factory.mktemp("ref") / "packed", bos=True, workers=1)


def _shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("shard_*"))}


def _comparable(manifest: dict) -> dict:
    """A manifest without what legitimately differs between runs: timing, host, output path."""
    params = {k: v for k, v in manifest["params"].items() if k not in ("out", "workers", "allocator")}
    return {"outputs": manifest["outputs"], "inputs": manifest["inputs"], "params": params}


# ---------------------------------------------------------------- planning math

def test_stream_samples_share_one_token_and_drop_only_the_tail():
    starts = plan_samples(n_tokens=20, seq_len=4)
    assert starts.tolist() == [0, 4, 8, 12]          # each spans 5 tokens: [0..4], [4..8], ...
    assert unused_tail(20, 4, starts) == 3           # tokens 17, 18, 19
    assert plan_samples(4, 4).size == 0 and unused_tail(4, 4, plan_samples(4, 4)) == 4


def test_boundary_samples_start_at_the_last_boundary_inside_the_previous_one():
    boundaries = np.array([0, 3, 5, 14, 15])
    starts = plan_samples(n_tokens=30, seq_len=6, boundaries=boundaries)
    # 0 -> last boundary in (0, 6] is 5; 5 -> none in (5, 11]: continue at 11; 11 -> 15; 15 -> 21 -> (27 > 30-7)
    assert starts.tolist() == [0, 5, 11, 15, 21]
    covered = set()
    for s in starts:
        covered.update(range(s + 1, s + 7))        # label positions of each sample
    assert covered >= set(range(1, starts[-1] + 7))  # no token lost up to the tail


def test_token_dtype_follows_the_vocabulary_size():
    assert token_dtype(32_000) == np.uint16 and token_dtype(65_536) == np.uint16
    assert token_dtype(65_537) == np.uint32 and token_dtype(128_256) == np.uint32


# ---------------------------------------------------------------- shard contents

def test_shards_hold_every_document_with_bos_eos_and_a_complete_manifest(shared, clean_dir, reference):
    from lingraft.vocabulary.loading import load_tokenizer, tokenizer_fingerprint
    tok = load_tokenizer(shared / MISTRAL)
    manifest = read_manifest(reference)
    out = manifest["outputs"]
    clean = read_manifest(clean_dir)["outputs"]
    assert manifest["stage"] == "prep.pack" and out["dtype"] == "uint16" and out["loss_mask"] is False
    assert out["tokenizer"]["fingerprint"] == tokenizer_fingerprint(tok) and out["tokenizer"]["vocab_size"] == 32000
    assert out["source_mix"] == clean["source_mix"]
    assert len(out["shards"]) == len(clean["parts"])
    assert out["counts"]["docs"] == clean["docs"] == sum(s["docs"] for s in out["shards"])
    assert sum(out["tokens_by_source"].values()) == out["counts"]["tokens"]
    for shard, part in zip(out["shards"], clean["parts"]):
        assert shard["part"] == part["file"]
        tokens = np.fromfile(reference / shard["files"]["tokens"]["file"], dtype=np.uint16)
        doc_starts = np.load(reference / shard["files"]["docs"]["file"])
        samples = np.load(reference / shard["files"]["samples"]["file"])
        assert len(tokens) == shard["tokens"] and len(samples) == shard["samples"]
        assert samples.tolist() == list(range(0, shard["tokens"] - 64, 64))[: shard["samples"]]
        texts = [json.loads(line)["text"] for line in open(clean_dir / part["file"], encoding="utf-8")]
        ends = [*doc_starts[1:], len(tokens)]
        for text, start, end in zip(texts, doc_starts, ends):
            ids = tok.backend_tokenizer.encode(text, add_special_tokens=False).ids
            assert tokens[start:end].tolist() == [tok.bos_token_id, *ids, tok.eos_token_id]


def test_document_and_paragraph_modes_keep_the_stream_and_start_samples_at_boundaries(shared, clean_dir, reference,
                                                                                      tmp_path):
    ref_tokens = {k: v for k, v in _shard_bytes(reference).items() if k.endswith(".tokens.bin")}
    for mode in ("document", "paragraph"):
        out = _pack(shared, clean_dir, tmp_path / mode, bos=True, sample_start=mode)
        assert {k: v for k, v in _shard_bytes(out).items() if k.endswith(".tokens.bin")} == ref_tokens
        starts_at_paragraphs = 0
        shards = read_manifest(out)["outputs"]["shards"]
        for shard in shards:
            doc_starts = set(np.load(out / shard["files"]["docs"]["file"]).tolist())
            starts = np.load(out / shard["files"]["samples"]["file"]).tolist()
            assert starts[0] == 0 and all(0 < b - a <= 64 for a, b in zip(starts, starts[1:]))  # overlap, no gap
            others = [b for a, b in zip(starts, starts[1:]) if b not in doc_starts and b - a != 64]
            if mode == "document":   # a document start, or the continuation of a long document
                assert others == []
            starts_at_paragraphs += len(others)
        assert sum(s["samples"] for s in shards) > read_manifest(reference)["outputs"]["counts"]["samples"]
        if mode == "paragraph":
            assert starts_at_paragraphs > 0


@pytest.mark.slow
def test_worker_processes_give_identical_bytes(shared, clean_dir, reference, tmp_path):
    out = _pack(shared, clean_dir, tmp_path / "w2", bos=True, workers=2)   # on mimalloc where installed
    assert read_manifest(out)["metrics"]["workers"] == 2
    assert _shard_bytes(out) == _shard_bytes(reference)
    assert _comparable(read_manifest(out)) == _comparable(read_manifest(reference))


@pytest.mark.slow
def test_mpi_ranks_give_identical_bytes(shared, clean_dir, reference, tmp_path):
    out = tmp_path / "mpi"
    cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", PYTHON,
           "-m", "lingraft.cli", "prep", "pack", "--in", str(clean_dir), "--out", str(out),
           "--tokenizer", str(shared / MISTRAL), "--seq-len", "64", "--bos", "true"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = read_manifest(out)
    assert manifest["metrics"]["ranks"] == manifest["metrics"]["ranks_per_node"] == 2   # MPI says both share this node
    assert _shard_bytes(out) == _shard_bytes(reference)
    assert _comparable(manifest) == _comparable(read_manifest(reference))
    # Hence the same samples in the same order: a shard's bytes depend on its part alone, never on the ranks.
    from lingraft.data_prep.dataset import PackedDataset
    for a, b in zip(PackedDataset(out, seed=3), PackedDataset(reference, seed=3), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_resume_after_sigkill_is_byte_identical(shared, clean_dir, reference, tmp_path):
    out = tmp_path / "killed"
    cmd = [PYTHON, "-m", "lingraft.cli", "prep", "pack", "--in", str(clean_dir),
           "--out", str(out), "--tokenizer", str(shared / MISTRAL), "--seq-len", "64", "--bos", "true"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not list(out.glob("*.done.json")) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    done_before = len(list(out.glob("*.done.json")))
    assert 1 <= done_before < len(read_manifest(clean_dir)["outputs"]["parts"]) - 4 and not (out / "manifest.json").exists()

    code = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert code.returncode == 0, code.stderr[-2000:]
    manifest = read_manifest(out)
    assert manifest["metrics"]["shards_reused"] >= done_before
    assert not list(out.glob(".tmp-*"))
    assert _shard_bytes(out) == _shard_bytes(reference)
    assert _comparable(manifest) == _comparable(read_manifest(reference))


def test_sources_are_cleaned_first_then_packed(shared, tmp_path, run_cli):
    src = _jsonl(tmp_path / "ru.jsonl", ["Первый документ.\n\nВторой абзац.", "Ещё один текст, подлиннее."] * 3)
    args = ["prep", "pack", "--sources", str(src), "--out", str(tmp_path / "out"),
            "--tokenizer", str(shared / MISTRAL), "--seq-len", "4", "--set", "clean.near_dedup.enabled=false"]
    code, _, err = run_cli(*args)
    assert code == 0, err
    manifest = read_manifest(tmp_path / "out")
    assert manifest["outputs"]["counts"]["docs"] == 2    # exact duplicates removed by the clean stage
    assert manifest["outputs"]["source_mix"]["ru"]["docs"] == 2
    clean_written = read_manifest(tmp_path / "out" / "clean")["written_at"]
    time.sleep(1.1)
    assert run_cli(*args)[0] == 0
    assert read_manifest(tmp_path / "out" / "clean")["written_at"] == clean_written   # reused, not re-run
    assert read_manifest(tmp_path / "out")["metrics"]["shards_reused"] == len(manifest["outputs"]["shards"])


# ---------------------------------------------------------------- bad input

@pytest.fixture
def broken_clean_dir(clean_dir, tmp_path) -> tuple[Path, str]:
    """A copy of the clean output whose second part ends in a record without a text string."""
    broken = tmp_path / "clean"
    broken.mkdir()
    for f in clean_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    manifest = json.loads((broken / "manifest.json").read_text())
    part = broken / manifest["outputs"]["parts"][1]["file"]
    part.write_bytes(part.read_bytes() + b'{"text": 5}\n')
    manifest["outputs"]["parts"][1]["sha256"] = sha256_file(part)
    (broken / "manifest.json").write_text(json.dumps(manifest))
    return broken, part.name


def test_bad_part_record_names_file_and_line(shared, broken_clean_dir, tmp_path):
    broken, name = broken_clean_dir
    with pytest.raises(LingraftError, match=rf"{name}:\d+: 'text' is not a string"):
        _pack(shared, broken, tmp_path / "out")


@pytest.mark.slow
def test_a_failing_mpi_rank_stops_every_rank_with_its_error(shared, broken_clean_dir, tmp_path):
    broken, name = broken_clean_dir   # part 1 belongs to rank 1
    cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", PYTHON,
           "-m", "lingraft.cli", "prep", "pack", "--in", str(broken), "--out", str(tmp_path / "mpi"),
           "--tokenizer", str(shared / MISTRAL), "--seq-len", "64"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and f"rank 1: {broken / name}:" in proc.stderr
    assert not (tmp_path / "mpi" / "manifest.json").exists()


def test_unknown_special_token_is_a_clear_error(shared, clean_dir, tmp_path, run_cli):
    code, _, err = run_cli("prep", "pack", "--in", clean_dir, "--out", tmp_path / "o", "--tokenizer",
                           shared / MISTRAL, "--eos-token", "<|nope|>")
    assert code == 1 and "eos_token '<|nope|>' is not in the tokenizer's vocabulary" in err
    code, _, err = run_cli("prep", "pack", "--out", tmp_path / "o", "--tokenizer", shared / MISTRAL)
    assert code == 2 and "input:" in err


_POOL_PARENT = """
import sys, time
from pathlib import Path
from tokenizers import Tokenizer, models
from lingraft.data_prep.pack_encode import WorkerPool
tokenizer = Tokenizer(models.WordLevel({"a": 0}, unk_token="a")).to_str()
pool = WorkerPool(2, 1, Path(sys.argv[1]))
pool.load(Tokenizer.from_str(tokenizer), tokenizer)
busy = [pool.executor.submit(time.sleep, 300) for _ in range(4)]   # stands in for long shards
time.sleep(300)
"""


def _alive_spawned_children(pid: int) -> list[int]:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return []
    return [int(c) for c in children if "spawn_main" in _cmdline(int(c))]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return ""


def _running(pid: int) -> bool:
    try:   # a zombie (state Z) has exited: with no reaping init it keeps its /proc entry
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_pack_workers_exit_when_the_parent_is_killed(tmp_path):
    parent = subprocess.Popen([PYTHON, "-c", _POOL_PARENT, str(tmp_path)], cwd=REPO)
    workers: list[int] = []
    try:
        deadline = time.time() + 60
        while len(workers) < 2 and parent.poll() is None and time.time() < deadline:
            time.sleep(0.05)
            workers = _alive_spawned_children(parent.pid)
        assert len(workers) == 2, "the pool did not start its two workers"
        time.sleep(1.0)   # let them reach their task
        parent.kill()
        parent.wait()
        deadline = time.time() + 15
        while any(map(_running, workers)) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(map(_running, workers)), "pack workers outlived their killed parent"
    finally:
        parent.kill()
        for pid in filter(_running, workers):
            os.kill(pid, signal.SIGKILL)
