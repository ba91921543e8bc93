"""`lingraft prep clean` end to end: drop accounting, the output contract, integrity checks."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from lingraft.data_prep.clean_config import CleanConfig, CleanStageConfig, MixConfig
from lingraft.data_prep.clean_stage import read_clean_parts, run_clean
from lingraft.data_prep.readers import SourceConfig
from lingraft.config import build_config
from lingraft.errors import DataError, LingraftError
from lingraft.hashing import sha256_file
from lingraft.manifest import read_manifest
from tests.conftest import REPO

WORDS = ("дом лес река поле город море небо солнце ветер дорога окно книга время слово "
         "работа жизнь человек вопрос сторона страна мир случай голова ребёнок").split()


def _paragraph(seed: int, n_words: int = 300) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n_words)).capitalize() + "."


def _jsonl(path: Path, lines: list[str | dict]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line, ensure_ascii=False)) + "\n"
                            for line in lines), encoding="utf-8")
    return path


def _parts_content(folder: Path) -> list[dict]:
    return [json.loads(line) for part in read_clean_parts(folder) for line in part.open(encoding="utf-8")]


@pytest.fixture
def sources(tmp_path):
    base = _paragraph(1)
    words = base.split()
    words[10], words[140], words[260] = "изменено", "иначе", "другое"
    near_copy = " ".join(words)
    ru = _jsonl(tmp_path / "ru.jsonl", [
        {"text": base},
        {"text": _paragraph(2)},
        {"text": "коротко"},                                   # too_short
        {"text": "слово " * 1000},                             # too_long
        {"text": "а " * 5 + "б" * 60},                         # too_few_words
        {"text": "Ελληνικό κείμενο που δεν επιτρέπεται εδώ καθόλου, " * 3},   # script_filter
        {"text": "  " + base.replace(" ", "\n", 3) + "  "},    # exact_duplicate (whitespace only)
        {"text": near_copy},                                   # near_duplicate
        "{broken json",                                        # invalid_json
        {"title": "no text field"},                            # missing_field
        {"text": "е\u0308лка " + _paragraph(3)},               # kept, NFC-normalised
    ])
    en = _jsonl(tmp_path / "en.jsonl", [{"text": f"English replay document number {i}. " * 4} for i in range(6)])
    return ru, en


def _config(tmp_path, ru, en, **kw) -> CleanStageConfig:
    kw.setdefault("clean", CleanConfig(allowed_scripts=["Cyrillic", "Latin", "Common"], max_disallowed_share=0.1,
                                       min_chars=20, max_chars=5000, min_words=8))
    return CleanStageConfig(sources=[SourceConfig(path=str(ru), weight=0.75), SourceConfig(path=str(en), weight=0.25)],
                            out=str(tmp_path / "out"), **kw)


def test_every_drop_reason_is_counted_with_examples(tmp_path, sources):
    ru, en = sources
    out = run_clean(_config(tmp_path, ru, en, mix=MixConfig(on_exhausted="continue")))
    manifest = read_manifest(out)
    dropped = manifest["metrics"]["dropped"]
    assert {k: v["count"] for k, v in dropped.items()} == {
        "too_short": 1, "too_long": 1, "too_few_words": 1, "script_filter": 1, "exact_duplicate": 1,
        "near_duplicate": 1, "invalid_json": 1, "missing_field": 1}
    assert dropped["invalid_json"]["examples"][0]["where"] == f"{ru}:9"
    assert dropped["near_duplicate"]["examples"][0]["where"] == f"{ru}:8"
    assert dropped["near_duplicate"]["examples"][0]["sample"].startswith("[~")
    assert f"similar to {ru}:1]" in dropped["near_duplicate"]["examples"][0]["sample"]
    assert "outside allowed scripts" in dropped["script_filter"]["examples"][0]["sample"]

    docs = _parts_content(out)
    assert all(set(d) == {"text", "source"} for d in docs)
    assert sum(d["source"] == "ru" for d in docs) == 3 and sum(d["source"] == "en" for d in docs) == 6
    assert any(d["text"].startswith("ёлка ") for d in docs)                     # NFC applied
    assert manifest["metrics"]["read"] == {"ru": {"docs": 9, "chars": manifest["metrics"]["read"]["ru"]["chars"]},
                                           "en": {"docs": 6, "chars": manifest["metrics"]["read"]["en"]["chars"]}}
    assert manifest["metrics"]["mix"]["stop_reason"] == "every source ran out"
    assert manifest["metrics"]["seconds"] > 0 and manifest["metrics"]["chars_per_s"] > 0


def test_output_contract_and_part_rollover(tmp_path, sources):
    ru, en = sources
    out = run_clean(_config(tmp_path, ru, en, part_chars=300, mix=MixConfig(on_exhausted="continue")))
    manifest = read_manifest(out)
    outputs = manifest["outputs"]
    assert manifest["stage"] == "prep.clean"
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"] + [p["file"] for p in outputs["parts"]]
    assert [p["file"] for p in outputs["parts"]] == [f"part_{i:05d}.jsonl" for i in range(len(outputs["parts"]))]
    assert len(outputs["parts"]) > 2
    for part in outputs["parts"]:
        path = out / part["file"]
        texts = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]
        assert part["docs"] == len(texts) and part["chars"] == sum(map(len, texts))
        assert part["sha256"] == sha256_file(path)
        # A part is closed as soon as it holds >= part_chars: without its last document it held fewer.
        assert part["chars"] - len(texts[-1]) < 300
    for part in outputs["parts"][:-1]:
        assert part["chars"] >= 300
    assert outputs["docs"] == sum(p["docs"] for p in outputs["parts"]) == 9
    assert outputs["chars"] == sum(p["chars"] for p in outputs["parts"])
    mix = outputs["source_mix"]
    assert set(mix) == {"ru", "en"} and mix["ru"]["docs"] + mix["en"]["docs"] == 9
    assert mix["ru"]["chars"] + mix["en"]["chars"] == outputs["chars"]
    assert mix["ru"]["share"] + mix["en"]["share"] == pytest.approx(1.0)
    assert manifest["inputs"]["ru"]["sha256"] == sha256_file(ru)
    assert manifest["params"]["clean"]["near_dedup"]["threshold"] == 0.8


def test_same_inputs_give_identical_outputs(tmp_path, sources):
    ru, en = sources
    first = read_manifest(run_clean(_config(tmp_path, ru, en)))
    second = read_manifest(run_clean(_config(tmp_path, ru, en)))
    assert first["outputs"] == second["outputs"] and first["fingerprint"] == second["fingerprint"]


def test_strict_fails_on_bad_records_only_and_writes_nothing(tmp_path, sources):
    ru, en = sources
    with pytest.raises(DataError, match=rf"{ru}:9: invalid_json"):
        run_clean(_config(tmp_path, ru, en, strict=True, mix=MixConfig(on_exhausted="continue")))
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    # Filter drops (duplicates, lengths...) are the cleaning's job, not errors, even when strict.
    good = _jsonl(tmp_path / "good.jsonl", [{"text": _paragraph(5)}, {"text": _paragraph(5)}, {"text": "x"}])
    out = run_clean(CleanStageConfig(sources=[SourceConfig(path=str(good))], out=str(tmp_path / "s"),
                                     clean=CleanConfig(min_chars=5), strict=True))
    counts = {k: v["count"] for k, v in read_manifest(out)["metrics"]["dropped"].items()}
    assert counts == {"exact_duplicate": 1, "too_short": 1}


def test_truncated_source_file_is_named_in_the_manifest_or_fails_strict(tmp_path):
    import zstandard
    folder = tmp_path / "src"
    folder.mkdir()
    _jsonl(folder / "a.jsonl", [{"text": _paragraph(7)}])
    whole = zstandard.ZstdCompressor().compress(
        "".join(json.dumps({"text": _paragraph(100 + i)}) + "\n" for i in range(50)).encode())
    cut = folder / "b.jsonl.zst"
    cut.write_bytes(whole[: len(whole) * 2 // 3])
    out = run_clean(CleanStageConfig(sources=[SourceConfig(path=str(folder))], out=str(tmp_path / "out"),
                                     clean=CleanConfig(min_chars=5)))
    dropped = read_manifest(out)["metrics"]["dropped"]
    assert dropped["truncated_file"]["count"] == 1
    assert [f["file"] for f in dropped["truncated_file"]["files"]] == [str(cut)]
    with pytest.raises(DataError, match=rf"{cut}: truncated_file"):
        run_clean(CleanStageConfig(sources=[SourceConfig(path=str(folder))], out=str(tmp_path / "strict"),
                                   clean=CleanConfig(min_chars=5), strict=True))
    assert not (tmp_path / "strict").exists()


def test_failed_run_keeps_the_previous_output(tmp_path, sources):
    ru, en = sources
    out = run_clean(_config(tmp_path, ru, en))
    before = read_manifest(out)["outputs"]
    with pytest.raises(LingraftError, match="no document survived cleaning"):
        run_clean(_config(tmp_path, ru, en, clean=CleanConfig(min_chars=10**6)))
    assert read_manifest(out)["outputs"] == before
    assert read_clean_parts(out)


def test_read_clean_parts_detects_damage(tmp_path, sources):
    ru, en = sources
    out = run_clean(_config(tmp_path, ru, en, part_chars=300))
    parts = read_clean_parts(out)
    assert [p.name for p in parts] == sorted(p.name for p in out.glob("part_*.jsonl"))
    with parts[1].open("a", encoding="utf-8") as fh:
        fh.write('{"text": "smuggled", "source": "ru"}\n')
    with pytest.raises(LingraftError, match=rf"{parts[1]}: sha256 does not match manifest.json"):
        read_clean_parts(out)
    parts[1].unlink()
    with pytest.raises(LingraftError, match=rf"{parts[1]}: missing"):
        read_clean_parts(out)
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(LingraftError, match="corrupt manifest"):
        read_clean_parts(out)
    (out / "manifest.json").unlink()
    with pytest.raises(LingraftError, match="no manifest"):
        read_clean_parts(out)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "manifest.json").write_text('{"stage": "prep.pack", "outputs": {}}')
    with pytest.raises(LingraftError, match="written by stage 'prep.pack', not 'prep.clean'"):
        read_clean_parts(tmp_path / "other")


def test_cli_run_with_flags(run_cli, tmp_path, sources):
    ru, en = sources
    code, _, err = run_cli("prep", "clean", "--source", ru, "--source", "{path: %s, weight: 0.5}" % en,
                           "--out", tmp_path / "cli", "--set", "clean.min_chars=20", "--set", "mix.on_exhausted=continue")
    assert code == 0, err
    manifest = read_manifest(tmp_path / "cli")
    assert manifest["params"]["sources"][1]["weight"] == 0.5
    assert manifest["outputs"]["source_mix"]["en"]["docs"] == 6
    code, _, err = run_cli("prep", "clean", "--source", ru, "--out", tmp_path / "strict", "--strict")
    assert code == 1 and err.strip().splitlines()[-1] == f"lingraft prep clean: error: {ru}:9: invalid_json"
    assert not (tmp_path / "strict").exists()


def test_demo_config_on_real_data_holds_the_declared_mix(tmp_path, shared, monkeypatch):
    """RusLit 0.9 + English FineWeb 0.1 with every filter on; English runs out first."""
    monkeypatch.chdir(REPO)  # the demo config names its inputs relative to the repository root
    cfg = build_config(CleanStageConfig, REPO / "configs" / "prep_clean_ruslit.yaml",
                       overrides={"out": str(tmp_path / "demo")})
    out = run_clean(cfg)
    manifest = read_manifest(out)
    mix = manifest["outputs"]["source_mix"]
    assert mix["ruslit"]["share"] == pytest.approx(0.9, abs=0.005)
    assert mix["fineweb_en"]["share"] == pytest.approx(0.1, abs=0.005)
    assert manifest["metrics"]["mix"]["exhausted"] == ["fineweb_en"]
    assert manifest["outputs"]["chars"] > 30_000_000 and len(manifest["outputs"]["parts"]) >= 7
    assert manifest["metrics"]["seconds"] < 60
    docs = _parts_content(out)
    assert {d["source"] for d in docs[:200]} == {"ruslit", "fineweb_en"}  # interleaved, not concatenated
    assert sum(len(d["text"]) for d in docs) == manifest["outputs"]["chars"]
