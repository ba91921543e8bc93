"""`lingraft propagate`: write I (an instruct sibling of B) with A's vocabulary and propagated tables.

Order of work: resolve the three models and check their configs are compatible (nothing is
read beyond configs and shard headers until that passes); load the tokenizers and the token
map; then, one table kind at a time (input, then head), read the B, A and I tables, fit and
apply the map, copy I's special-token rows; finally stream I's other tensors shard by shard
into a temporary folder that replaces `out` only when everything, manifest included, is written.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import torch

from lingraft.atomic import atomic_dir
from lingraft.hf_folder import (
    CHECKSUM_KEY,
    Checkpoint,
    EmbeddingNames,
    embedding_names,
    open_checkpoint,
    read_tensors,
    resolve_model,
)
from lingraft.hf_folder_writer import write_checkpoint
from lingraft.errors import LingraftError
from lingraft.log import get_logger
from lingraft.manifest import new_manifest
from lingraft.memory import peak_rss_bytes
from lingraft.propagate.lep.compat import check_compatible, load_config
from lingraft.propagate.lep.config import PropagateConfig
from lingraft.propagate.lep.lep_math import copy_rows, grow_rows, propagate_table, selection_map
from lingraft.propagate.lep.vocabularies import (
    OutputVocabulary,
    ResolvedTokenMap,
    check_siblings,
    output_vocabulary,
    resolve_token_map,
    shared_tokens,
)
from lingraft.vocabulary.embedding_init import padded_size
from lingraft.vocabulary.init_stage import write_config_files
from lingraft.vocabulary.loading import load_tokenizer
from lingraft.vocabulary.token_map import TOKEN_MAP_NAME, TokenMap

log = get_logger(__name__)


def _table_names(names: EmbeddingNames) -> dict[str, str]:
    """{"input": name, "head": name} of the tables propagation rewrites; a tied model has no head."""
    return {"input": names.input, **({"head": names.output} if names.output and not names.tied else {})}


def _source_names(names: dict[str, str]) -> dict[str, str]:
    """Where each table kind is read from: a tied model's head is its input table."""
    return {"input": names["input"], "head": names.get("head", names["input"])}


def _output_names(instruct: EmbeddingNames, folder: Path, names: dict[str, dict[str, str]]) -> dict[str, str]:
    """The tables the output gets, keyed by kind: I's own, plus a head of its own when A has one.

    A with an untied head (e.g. `init --method distill` on a tied model) going into a tied I
    gives an untied output: A's head rows were learnt as outputs, and making them also serve as
    inputs would throw that away. A tied A going into an untied I reads its input table as head.
    """
    out = dict(names["I"])
    if "head" in names["A"] and "head" not in out:
        if not instruct.head:
            raise LingraftError(f"{folder}: A's head is untied but I's head tensor name is unknown")
        out["head"] = instruct.head
    return out


def _check_tokenizer_fits(ckpt: Checkpoint, names: dict[str, str], tokens: int) -> None:
    """A tokenizer with more tokens than the model has rows is the wrong one for it (a copied
    folder, a tokenizer from a sibling): caught from the shard headers, before any table is read."""
    for role, name in names.items():
        rows = ckpt.tensors[name].shape[0]
        if rows < tokens:
            tokenizer = next((ckpt.folder / f for f in ("tokenizer.json", "tokenizer.model")
                              if (ckpt.folder / f).exists()), ckpt.folder)
            raise LingraftError(f"{tokenizer}: the tokenizer has {tokens} tokens but the model's {role} table "
                                f"{rows} rows (the wrong tokenizer for this model?)")


def propagate_tables(cfg: PropagateConfig, ckpts: dict[str, Checkpoint], names: dict[str, dict[str, str]],
                     outputs: dict[str, str], vocab: OutputVocabulary, fit_on: TokenMap | None
                     ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The output tables, keyed by I's tensor names, and each fit's summary."""
    out_tables, fits = {}, {}
    rows_needed = len(vocab.tokenizer)
    for kind, i_name in outputs.items():
        read = {}
        for m in ("B", "A", "I"):
            source = _source_names(names[m])[kind]
            read[m] = read_tensors(ckpts[m], [source])[source]
        clock = time.perf_counter()
        table, fit = propagate_table(cfg.method, read["A"], read["I"].dtype, fit_on, read["B"], read["I"])
        seconds = time.perf_counter() - clock
        if rows_needed > table.shape[0]:   # I's added tokens that A lacks are appended
            table = grow_rows(table, padded_size(rows_needed, cfg.pad_to_multiple))
        copy_rows(table, read["I"], list(vocab.instruct_rows), list(vocab.instruct_rows.values()))
        out_tables[i_name] = table
        if fit is not None:
            fits[kind] = {**fit.summary(), "seconds": round(seconds, 3)}
            log.info("%s map (%s): relative residual %.4g over %d rows, rank %d", kind, cfg.method,
                     fit.relative_residual, fit.rows, fit.rank)
        del read
    return out_tables, fits


def write_token_map(resolved: ResolvedTokenMap, path: Path) -> None:
    """A stored map is copied byte for byte: re-saving would reorder its safetensors metadata
    (a hash map), and a rerun must give the same bytes. A rebuilt one is saved."""
    if Path(resolved.source).is_file():
        shutil.copyfile(resolved.source, path)
    else:
        resolved.token_map.save(path)


def run_propagate(cfg: PropagateConfig) -> dict[str, Any]:
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    folders = {"B": resolve_model(cfg.base), "A": resolve_model(cfg.adapted), "I": resolve_model(cfg.instruct)}
    configs = {m: load_config(str(f), cfg.trust_remote_code) for m, f in folders.items()}
    check_compatible(configs["B"], configs["A"], configs["I"], (cfg.base, cfg.adapted, cfg.instruct))
    ckpts = {m: open_checkpoint(f) for m, f in folders.items()}
    found = {m: embedding_names(c) for m, c in ckpts.items()}    # each reads the config once
    names = {m: _table_names(f) for m, f in found.items()}
    toks = {m: load_tokenizer(f, cfg.trust_remote_code) for m, f in folders.items()}
    for m in folders:
        _check_tokenizer_fits(ckpts[m], names[m], len(toks[m]))
    check_siblings(toks["B"], toks["I"], cfg.instruct)
    vocab = output_vocabulary(folders["A"], toks["I"], cfg.trust_remote_code)
    # A's token map goes into the output whatever the method, so later stages (training new
    # rows, skill packs) know which rows of I's new vocabulary are new and how each was built.
    resolved = resolve_token_map(cfg.token_map, folders["A"], toks["B"], toks["A"])
    fit_on, map_source = None, None
    if cfg.method == "overlap":
        new_ids, old_ids = shared_tokens(toks["B"], toks["A"])
        fit_on, map_source = selection_map(new_ids, old_ids, len(toks["B"])), f"{len(old_ids)} shared tokens"
    elif cfg.method == "conversion":
        fit_on, map_source = resolved.token_map, resolved.source
    timings["prepare_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    outputs = _output_names(found["I"], ckpts["I"].folder, names)
    tables, fits = propagate_tables(cfg, ckpts, names, outputs, vocab, fit_on)
    rows = tables[names["I"]["input"]].shape[0]
    untie = "head" in names["A"] and "head" not in names["I"]
    tied_head = found["I"].output
    if "head" not in names["I"] and tied_head and not untie:   # tied, but the head is stored too: keep them equal
        tables[tied_head] = tables[names["I"]["input"]]
    timings["tables_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    inputs = {"base": folders["B"], "adapted": folders["A"], "instruct": folders["I"],
              **({"token_map": cfg.token_map} if cfg.token_map else {})}
    manifest = new_manifest("propagate", cfg, inputs=inputs)
    timings["hash_inputs_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    out = Path(cfg.out)
    with atomic_dir(out) as tmp:
        replace = {n: t for n, t in tables.items() if n in ckpts["I"].tensors}
        added = {n: t for n, t in tables.items() if n not in ckpts["I"].tensors}     # an untied head
        checksums = write_checkpoint(ckpts["I"], tmp, replace, int(cfg.max_shard_gb * 1e9), extra=added)
        write_config_files(ckpts["I"], tmp, rows, toks["I"], vocab.tokenizer, untie=untie)
        vocab.tokenizer.save_pretrained(str(tmp))
        write_token_map(resolved, tmp / TOKEN_MAP_NAME)
        timings["write_s"] = time.perf_counter() - clock
        metrics: dict[str, Any] = {
            "method": cfg.method, "fits": fits, "fit_rows_from": map_source, "rows": rows,
            "tokens": len(vocab.tokenizer), "instruct_rows_copied": len(vocab.instruct_rows),
            "added_from_instruct": vocab.carried, "token_map": resolved.source,
            "tied": "head" not in names["I"] and not untie,
            "bytes_written": sum(f.stat().st_size for f in tmp.glob("model*.safetensors")),
            "largest_shard_bytes": ckpts["I"].largest_shard_bytes,
            "table_bytes": sum(t.numel() * t.element_size() for t in tables.values()),
            "peak_rss_bytes": peak_rss_bytes(),
            **{k: round(v, 3) for k, v in timings.items()}}
        manifest.outputs = {"model": str(out), "tables": list(tables), CHECKSUM_KEY: checksums}
        manifest.metrics = metrics
        manifest.write(tmp)
    print(report(metrics))
    return metrics


def report(metrics: dict[str, Any]) -> str:
    lines = [f"lingraft propagate ({metrics['method']}): {metrics['tokens']} tokens, {metrics['rows']} rows, "
             f"tied={metrics['tied']}, {metrics['instruct_rows_copied']} special/added rows copied from the instruct model"]
    for kind, fit in metrics["fits"].items():
        lines.append(f"  {kind}: least-squares relative residual {fit['relative_residual']:.4g} "
                     f"({fit['rows']} rows, rank {fit['rank']})")
    lines.append(f"  wrote {metrics['bytes_written'] / 1e9:.2f} GB in {metrics['write_s']:.1f} s, "
                 f"peak RSS {metrics['peak_rss_bytes'] / 2**20:.0f} MB")
    return "\n".join(lines)
