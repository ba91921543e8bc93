"""`lingraft hydra export` (two models sharing one body -> one Hydra model) and `lingraft hydra plain`
(one language of a Hydra model -> a plain Hugging Face checkpoint).

Both stream: the body's tensors are copied shard by shard, only the tables are in memory.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from lingraft.atomic import atomic_dir, write_json
from lingraft.hf_folder import (CHECKSUM_KEY, Checkpoint, embedding_names, open_checkpoint, read_tensors,
                                 resolve_model)
from lingraft.hf_folder_writer import write_checkpoint
from lingraft.errors import LingraftError
from lingraft.log import get_logger
from lingraft.manifest import new_manifest
from lingraft.propagate.lep.compat import check_compatible, load_config
from lingraft.propagate.hydra.config import HydraExportConfig, HydraPlainConfig
from lingraft.propagate.hydra.logits import logit_settings
from lingraft.propagate.hydra.model import HydraSpec, Vocabulary
from lingraft.vocabulary.loading import load_tokenizer

log = get_logger(__name__)
_COMPARE_CHUNK = 16 << 20


def check_same_body(a: Checkpoint, b: Checkpoint, tables: set[str]) -> None:
    """Every tensor but the tables must be identical (same name, dtype, shape and bytes): a Hydra
    model has one body, so two models whose bodies differ cannot share it."""
    body_a = {n: t for n, t in a.tensors.items() if n not in tables}
    body_b = {n: t for n, t in b.tensors.items() if n not in tables}
    if set(body_a) != set(body_b):
        name = sorted(set(body_a) ^ set(body_b))[0]
        raise LingraftError(f"{a.folder} and {b.folder} do not share a body ({name} is in only one)")
    fds: dict[Path, int] = {}   # one descriptor per file, read positionally: both sides may read the same file
    try:
        for name, ta in body_a.items():
            tb = body_b[name]
            if (ta.dtype, ta.shape) != (tb.dtype, tb.shape):
                raise LingraftError(f"{a.folder} and {b.folder} do not share a body ({name}: {ta.dtype}{list(ta.shape)} "
                                    f"vs {tb.dtype}{list(tb.shape)})")
            for info in (ta, tb):
                if info.shard not in fds:
                    fds[info.shard] = os.open(info.shard, os.O_RDONLY)
            for pos in range(0, ta.nbytes, _COMPARE_CHUNK):
                n = min(_COMPARE_CHUNK, ta.nbytes - pos)
                if os.pread(fds[ta.shard], n, ta.offset + pos) != os.pread(fds[tb.shard], n, tb.offset + pos):
                    raise LingraftError(f"{a.folder} and {b.folder} do not share a body ({name} differs; "
                                        f"a Hydra model needs identical non-embedding weights)")
    finally:
        for fd in fds.values():
            os.close(fd)


def _tables(ckpt: Checkpoint) -> tuple[torch.Tensor, torch.Tensor, bool, set[str]]:
    """(input table, head table, tied, the tensor names holding them)."""
    names = embedding_names(ckpt)
    stored = [names.input] + ([names.output] if names.output else [])
    read = read_tensors(ckpt, stored)
    head = read[names.input] if names.tied or not names.output else read[names.output]
    return read[names.input], head, names.tied, set(stored)


def _token_ids(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k.endswith("_token_id")}


def _generation_config(folder: Path) -> dict[str, Any]:
    path = folder / "generation_config.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def run_hydra_export(cfg: HydraExportConfig) -> dict[str, Any]:
    folders = {"original": resolve_model(cfg.original), "adapted": resolve_model(cfg.adapted)}
    configs = {k: load_config(str(f)) for k, f in folders.items()}
    check_compatible(configs["original"], configs["adapted"], configs["adapted"], (cfg.original, cfg.adapted, cfg.adapted))
    settings = {k: logit_settings(c, str(folders[k] / "config.json")) for k, c in configs.items()}
    if settings["original"] != settings["adapted"]:   # both heads run behind the one body's logit step
        raise LingraftError(f"{cfg.original} and {cfg.adapted} process logits differently "
                            f"({settings['original']} vs {settings['adapted']}); one Hydra body cannot serve both")
    ckpts = {k: open_checkpoint(f) for k, f in folders.items()}
    toks = {k: load_tokenizer(f) for k, f in folders.items()}
    tables = {k: _tables(c) for k, c in ckpts.items()}
    check_same_body(ckpts["original"], ckpts["adapted"], tables["original"][3] | tables["adapted"][3])
    names = embedding_names(ckpts["adapted"])
    dtype = tables["adapted"][0].dtype
    vocabs, offset = [], 0
    for key, name in (("original", cfg.original_name), ("adapted", cfg.language)):
        table, _, tied, _ = tables[key]
        vocabs.append(Vocabulary(name=name, offset=offset, size=table.shape[0], tokens=len(toks[key]), tied=tied,
                                 config_token_ids=_token_ids(ckpts[key].config),
                                 generation_config=_generation_config(folders[key])))
        offset += table.shape[0]
    spec = HydraSpec(embedding=names.input, head_name=names.output or "lm_head.weight", vocabularies=tuple(vocabs),
                     default_head=cfg.default_head or cfg.language)
    stacked = torch.cat([tables["original"][0].to(dtype), tables["adapted"][0]])
    heads = {v.head_tensor: tables[k][1].to(dtype).contiguous() for v, k in zip(vocabs, ("original", "adapted"))}
    manifest = new_manifest("hydra_export", cfg, inputs=folders)
    out = Path(cfg.out)
    with atomic_dir(out) as tmp:
        drop = [names.output] if names.output else []
        checksums = write_checkpoint(ckpts["adapted"], tmp, {names.input: stacked}, int(cfg.max_shard_gb * 1e9),
                                     extra=heads, drop=drop)
        # The body's config, over the stacked table. Token ids differ per vocabulary: they live
        # in hydra.json, and the config's are null, so none can point into the wrong range; null,
        # not absent, or the class default comes back (Phi-3: pad 32000, maybe past the table).
        config = {k: None if k.endswith("_token_id") else v for k, v in ckpts["adapted"].config.items()}
        config.update(vocab_size=spec.rows, tie_word_embeddings=False)
        write_json(tmp / "config.json", config)
        spec.save(tmp)
        for vocab, key in zip(vocabs, ("original", "adapted")):
            toks[key].save_pretrained(str(tmp / vocab.tokenizer_dir))
        metrics = {"vocabularies": {v.name: {"offset": v.offset, "rows": v.size, "tokens": v.tokens} for v in vocabs},
                   "rows": spec.rows, "default_head": spec.default_head}
        manifest.outputs = {"model": str(out), CHECKSUM_KEY: checksums}
        manifest.metrics = metrics
        manifest.write(tmp)
    print(f"lingraft hydra export: {' + '.join(f'{v.name} [{v.offset}, {v.offset + v.size})' for v in vocabs)} "
          f"-> {spec.rows} input rows, heads {[v.name for v in vocabs]}, default {spec.default_head}")
    return metrics


def run_hydra_plain(cfg: HydraPlainConfig) -> dict[str, Any]:
    folder = Path(cfg.hydra)
    spec = HydraSpec.load(folder)
    vocab = spec.vocabulary(cfg.language)
    ckpt = open_checkpoint(folder)
    heads = [v.head_tensor for v in spec.vocabularies]
    read = read_tensors(ckpt, [spec.embedding, vocab.head_tensor])
    rows = read[spec.embedding][vocab.offset:vocab.offset + vocab.size].clone()
    extra = {} if vocab.tied else {spec.head_name: read[vocab.head_tensor]}
    manifest = new_manifest("hydra_plain", cfg, inputs={"hydra": folder})
    out = Path(cfg.out)
    with atomic_dir(out) as tmp:
        checksums = write_checkpoint(ckpt, tmp, {spec.embedding: rows}, int(cfg.max_shard_gb * 1e9),
                                     extra=extra, drop=heads)
        config = {**ckpt.config, **vocab.config_token_ids, "vocab_size": vocab.size, "tie_word_embeddings": vocab.tied}
        write_json(tmp / "config.json", config)
        if vocab.generation_config:
            write_json(tmp / "generation_config.json", vocab.generation_config)
        for item in (folder / vocab.tokenizer_dir).iterdir():
            shutil.copy2(item, tmp / item.name)
        manifest.outputs = {"model": str(out), CHECKSUM_KEY: checksums}
        manifest.metrics = {"language": vocab.name, "rows": vocab.size, "tied": vocab.tied}
        manifest.write(tmp)
    print(f"lingraft hydra plain: {vocab.name} ({vocab.size} rows, tied={vocab.tied}) -> {out}")
    return manifest.metrics
