"""`lingraft prep clean`: read the sources, clean and deduplicate them, mix them by characters,
and write JSONL parts with a manifest. `prep pack` reads the result through `read_clean_parts`.

Output folder, written atomically:
  part_00000.jsonl, part_00001.jsonl, ...  UTF-8, one {"text": ..., "source": ...} object per
      line, in mixed order; a new part starts once the current one holds >= part_chars characters.
  manifest.json  outputs: {"parts": [{"file", "docs", "chars", "sha256"}], "docs", "chars",
                           "source_mix": {name: {"docs", "chars", "share"}}}
                 metrics: {"dropped": DropLog.to_json(), "seconds", "chars_per_s", "read", "mix"}
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections import Counter
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from lingraft.data_prep.clean_config import CleanConfig, CleanStageConfig
from lingraft.data_prep.cleaning import ScriptFilter, length_problem, normalize_text
from lingraft.data_prep.dedup import ExactDeduplicator, NearDeduplicator
from lingraft.data_prep.mixing import CharMixer
from lingraft.data_prep.readers import detect_format, iter_documents
from lingraft.data_prep.records import Document, DropLog
from lingraft.atomic import atomic_dir
from lingraft.errors import LingraftError
from lingraft.hashing import sha256_file
from lingraft.log import get_logger, progress
from lingraft.manifest import MANIFEST_NAME, ManifestError, new_manifest, read_manifest

STAGE = "prep.clean"
PART_NAME = "part_{:05d}.jsonl"
log = get_logger(__name__)


class Cleaner:
    """Normalises each document and drops it (into `drops`, with the reason) when it fails a
    filter. Deduplication state is shared by every stream it cleans, so a document that
    repeats one from another source is caught too; the copy that comes first is kept."""

    def __init__(self, cfg: CleanConfig, drops: DropLog):
        self.cfg = cfg
        self.drops = drops
        self.script = ScriptFilter(cfg.allowed_scripts) if cfg.allowed_scripts else None
        self.exact = ExactDeduplicator() if cfg.exact_dedup else None
        self.near = NearDeduplicator(cfg.near_dedup) if cfg.near_dedup.enabled else None
        self.read_docs: Counter = Counter()    # per source, before cleaning
        self.read_chars: Counter = Counter()

    def clean(self, doc: Document) -> Document | None:
        self.read_docs[doc.source] += 1
        self.read_chars[doc.source] += len(doc.text)
        text = normalize_text(doc.text, self.cfg.normalize)
        reason = length_problem(text, self.cfg)
        if reason is not None:
            self.drops.drop(reason, doc.where, text)
            return None
        if self.script is not None:
            share = self.script.disallowed_share(text)
            if share > self.cfg.max_disallowed_share:
                self.drops.drop("script_filter", doc.where, f"[{share:.0%} outside allowed scripts] {text}")
                return None
        if self.exact is not None and self.exact.is_duplicate(text):
            self.drops.drop("exact_duplicate", doc.where, text)
            return None
        if self.near is not None:
            match = self.near.check(text, doc.where)
            if match is not None:
                self.drops.drop("near_duplicate", doc.where, f"[~{match[1]:.2f} similar to {match[0]}] {text}")
                return None
        return doc if text is doc.text else dataclasses.replace(doc, text=text)

    def stream(self, docs: Iterable[Document]) -> Iterator[Document]:
        for doc in docs:
            kept = self.clean(doc)
            if kept is not None:
                yield kept


class PartWriter:
    """Writes documents as JSONL parts of about `part_chars` characters each, hashing as it goes."""

    def __init__(self, folder: Path, part_chars: int):
        self.folder, self.part_chars = folder, part_chars
        self.parts: list[dict[str, Any]] = []
        self._fh: IO[bytes] | None = None
        self._sha = hashlib.sha256()

    def write(self, doc: Document) -> None:
        if self._fh is None or self.parts[-1]["chars"] >= self.part_chars:
            self._start_part()
        data = (json.dumps({"text": doc.text, "source": doc.source}, ensure_ascii=False) + "\n").encode("utf-8")
        self._fh.write(data)
        self._sha.update(data)
        part = self.parts[-1]
        part["docs"] += 1
        part["chars"] += len(doc.text)

    def _start_part(self) -> None:
        self._finish_part()
        name = PART_NAME.format(len(self.parts))
        self._fh = open(self.folder / name, "wb")
        self._sha = hashlib.sha256()
        self.parts.append({"file": name, "docs": 0, "chars": 0, "sha256": None})

    def _finish_part(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            self.parts[-1]["sha256"] = self._sha.hexdigest()

    def close(self) -> list[dict[str, Any]]:
        self._finish_part()
        return self.parts


def _check_sources(cfg: CleanStageConfig) -> None:
    """Fail before any work on a local source that does not exist."""
    for i, src in enumerate(cfg.sources):
        fmt = detect_format(src.path) if src.format == "auto" else src.format
        if fmt != "hf" and not Path(src.path).exists():
            raise LingraftError(f"sources[{i}].path: {src.path}: no such file or folder")


def run_clean(cfg: CleanStageConfig) -> Path:
    """Run the stage; return the output folder."""
    _check_sources(cfg)
    out = Path(cfg.out)
    start = time.perf_counter()
    read_drops = DropLog(strict=cfg.strict)   # bad input records: errors under --strict
    clean_drops = DropLog()                   # filtered documents: never errors
    cleaner = Cleaner(cfg.clean, clean_drops)
    mixer = CharMixer([(src.name, src.weight, cleaner.stream(iter_documents(src, read_drops)))
                       for src in cfg.sources], cfg.mix.on_exhausted, cfg.mix.max_chars)
    manifest = new_manifest(STAGE, cfg, inputs={src.name: src.path for src in cfg.sources})
    log.info("cleaning %d source(s) into %s", len(cfg.sources), out)
    with atomic_dir(out) as tmp:
        writer = PartWriter(tmp, cfg.part_chars)
        try:
            with progress(unit="char", unit_scale=True, desc="prep clean") as bar:
                for doc in mixer:
                    writer.write(doc)
                    bar.update(len(doc.text))
        finally:
            mixer.close()
            parts = writer.close()
        drops = DropLog()
        drops.merge(read_drops)
        drops.merge(clean_drops)
        if not parts:
            raise LingraftError(f"no document survived cleaning (dropped: {dict(drops.counts)}); "
                                "check the sources and the clean.* filters")
        seconds = time.perf_counter() - start
        chars_read = sum(cleaner.read_chars.values())
        manifest.outputs = {
            "parts": parts,
            "docs": sum(p["docs"] for p in parts),
            "chars": sum(p["chars"] for p in parts),
            "source_mix": mixer.realised_mix(),
        }
        manifest.metrics = {
            "dropped": drops.to_json(),
            "seconds": round(seconds, 3),
            "chars_per_s": round(chars_read / seconds, 1) if seconds > 0 else None,
            "read": {src.name: {"docs": cleaner.read_docs[src.name], "chars": cleaner.read_chars[src.name]}
                     for src in cfg.sources},
            "mix": {"weights": {t.name: t.weight for t in mixer.tallies}, "stop_reason": mixer.stop_reason,
                    "exhausted": [t.name for t in mixer.tallies if t.exhausted]},
        }
        manifest.write(tmp)
    _log_summary(manifest.outputs, manifest.metrics, chars_read)
    return out


def _log_summary(outputs: dict[str, Any], metrics: dict[str, Any], chars_read: int) -> None:
    log.info("wrote %d docs, %d chars in %d part(s); read %d chars in %.1f s (%.2f M chars/s); %s",
             outputs["docs"], outputs["chars"], len(outputs["parts"]), chars_read, metrics["seconds"],
             (metrics["chars_per_s"] or 0) / 1e6, metrics["mix"]["stop_reason"])
    for name, mix in outputs["source_mix"].items():
        log.info("  %-20s %8d docs %12d chars  share %.4f (weight %g)", name, mix["docs"], mix["chars"],
                 mix["share"], metrics["mix"]["weights"][name])
    for reason, entry in metrics["dropped"].items():
        log.info("  dropped %-18s %d", reason, entry["count"])


def read_clean_parts(folder: str | Path) -> list[Path]:
    """The part files of a `prep clean` output, in order, after checking the manifest and every
    part's sha256. Raises LingraftError naming the file when anything is missing or corrupt."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST_NAME
    try:
        manifest = read_manifest(folder)
    except ManifestError as exc:
        raise LingraftError(str(exc)) from None
    if manifest.get("stage") != STAGE:
        raise LingraftError(f"{manifest_path}: written by stage {manifest.get('stage')!r}, not {STAGE!r}")
    try:
        entries = [(str(p["file"]), str(p["sha256"])) for p in manifest["outputs"]["parts"]]
    except (KeyError, TypeError) as exc:
        raise LingraftError(f"{manifest_path}: malformed outputs.parts ({exc!r})") from None
    paths = []
    for name, sha in entries:
        path = folder / name
        if Path(name).name != name:
            raise LingraftError(f"{manifest_path}: part name {name!r} must be a plain file name")
        if not path.is_file():
            raise LingraftError(f"{path}: missing (listed in {MANIFEST_NAME})")
        if sha256_file(path) != sha:
            raise LingraftError(f"{path}: sha256 does not match {MANIFEST_NAME}: the part is corrupt "
                                "or was modified after `prep clean` wrote it")
        paths.append(path)
    return paths
