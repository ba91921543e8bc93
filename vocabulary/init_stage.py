"""`lingraft init`: give a model a new vocabulary and initialise its embeddings.

Steps: resolve and verify the checkpoint; load the old and new tokenizers; carry the old
special tokens and chat template over to the new tokenizer; build a TokenMap (or sample
random rows); write the new model by streaming every non-embedding tensor unchanged;
optionally score bits per character of the original and the new model; write the manifest.
Everything goes into a temporary folder that replaces `out` only when all of it succeeded.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lingraft.atomic import atomic_dir, write_json
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
from lingraft.vocabulary.embedding_init import (
    mapped_table,
    mean_row,
    pad_rows,
    random_table,
    real_rows,
    table_rows,
)
from lingraft.vocabulary.head_map_file import HEAD_MAP_NAME, save_head_map
from lingraft.vocabulary.init_config import InitConfig
from lingraft.vocabulary.loading import load_tokenizer
from lingraft.vocabulary.token_map import TOKEN_MAP_NAME, TokenMap
from lingraft.vocabulary.token_matching import adopt_special_tokens, build_mean_map
from lingraft.vocabulary.vocab_map import stored_vocab_map

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

log = get_logger(__name__)

# A checkpoint pads its embedding past len(tokenizer) by at most this much in practice
# (Qwen2: 271 rows); more means the tokenizer belongs to another model.
MAX_ROW_PADDING = 1024


@dataclass
class NewTables:
    tables: dict[str, torch.Tensor]     # checkpoint tensor name -> new table (padded)
    token_map: TokenMap | None          # None for random init
    provenance: dict[str, int]
    method_stats: dict[str, Any]
    untie_head: bool = False            # a tied checkpoint whose head now differs from its input table
    head_map: tuple[dict[str, torch.Tensor], torch.Tensor] | None = None   # distill: the fitted map, its token ids


def check_old_tokenizer(old_tok: "PreTrainedTokenizerFast", rows: int, ckpt: Checkpoint, spec: str) -> None:
    """Refuse a tokenizer that cannot be the model's own: ids beyond the table, or far too few."""
    if ckpt.config.get("vocab_size") not in (None, rows):
        raise LingraftError(f"{ckpt.folder}: config vocab_size={ckpt.config['vocab_size']} but the embedding "
                            f"has {rows} rows")
    if not len(old_tok) <= rows < len(old_tok) + MAX_ROW_PADDING:
        raise LingraftError(f"{spec}: tokenizer has {len(old_tok)} tokens but the model's embedding has {rows} "
                            f"rows; it does not match this model (give the model's own with --old-tokenizer)")


def build_token_map(cfg: InitConfig, old_tok: "PreTrainedTokenizerFast",
                    new_tok: "PreTrainedTokenizerFast") -> tuple[TokenMap, dict[str, Any]]:
    """The method's TokenMap and the statistics of its making (empty for the mean methods)."""
    # A tokenizer made by `tokenizer extend|optimize` says itself which old row each id had.
    old_ids = stored_vocab_map(cfg.tokenizer, old_tok, new_tok)
    if cfg.method in ("mean", "weighted-mean", "distill"):   # distill refines the mean rows afterwards
        method = "mean" if cfg.method == "distill" else cfg.method
        return build_mean_map(old_tok, new_tok, method, cfg.position_decay, cfg.whitespace_weight, old_ids), {}
    if cfg.method == "transtokenize":
        from lingraft.vocabulary.transtokenize import build_transtokenize_map
        return build_transtokenize_map(old_tok, new_tok, cfg.translation_resource, top_k=cfg.transtokenize_top_k,
                                       min_prob=cfg.transtokenize_min_prob, seed=cfg.seed,
                                       base_map=build_mean_map(old_tok, new_tok, old_ids=old_ids))
    raise LingraftError(f"method {cfg.method!r} has no token map")


def build_tables(cfg: InitConfig, old: dict[str, torch.Tensor], old_tok: "PreTrainedTokenizerFast",
                 new_tok: "PreTrainedTokenizerFast") -> NewTables:
    """New (padded) tables for every embedding tensor in `old`, by `cfg.method`: new tokens fill
    the checkpoint's spare rows before the table grows (see `table_rows`)."""
    rows = len(new_tok)
    token_map, stats = (None, {}) if cfg.method == "random" else build_token_map(cfg, old_tok, new_tok)
    if token_map is not None and (token_map.new_vocab, token_map.old_vocab) != (rows, len(old_tok)):
        raise LingraftError(f"token map is {token_map.new_vocab}x{token_map.old_vocab}, "
                            f"expected {rows}x{len(old_tok)}")
    tables = {}
    for k, (name, table) in enumerate(old.items()):
        source = real_rows(table, len(old_tok))
        new = random_table(source, rows, cfg.seed + k) if token_map is None else mapped_table(token_map, table)
        size = table_rows(rows, table.shape[0], cfg.pad_to_multiple, cfg.shrink_table)
        tables[name] = pad_rows(new, size, mean_row(source))
    provenance = {"random": rows} if token_map is None else token_map.provenance_counts()
    return NewTables(tables=tables, token_map=token_map, provenance=provenance, method_stats=stats)


def refine_by_distillation(cfg: InitConfig, source: Path, names: EmbeddingNames, new: NewTables,
                           old_tok: "PreTrainedTokenizerFast", new_tok: "PreTrainedTokenizerFast") -> None:
    """`--method distill`: input and head rows learnt from the original model (vocabulary.distill_init).

    The head always comes out as its own table: a tied checkpoint is untied (its config says so).
    """
    from lingraft.vocabulary.distill_init import distill_tables
    from lingraft.vocabulary.token_map import PROVENANCES
    head_name = names.output or names.head
    if not head_name:
        raise LingraftError(f"{source}: cannot tell the LM head's tensor name, so its rows cannot be untied")
    provenance = [PROVENANCES[int(code)] for code in new.token_map.provenance]
    head = new.tables[names.output] if names.output and not names.tied else new.tables[names.input]
    result = distill_tables(cfg, source, new.tables[names.input], head, provenance, old_tok, new_tok)
    new.tables[names.input] = result.input
    new.tables[head_name] = result.output
    new.method_stats = {**new.method_stats, **result.stats, "untied": names.tied}
    new.untie_head = names.tied
    if result.head_map is not None:
        new.head_map = (result.head_map, result.learnt_ids)


def remap_token_ids(config: dict[str, Any], old_tok: "PreTrainedTokenizerFast",
                    new_tok: "PreTrainedTokenizerFast", where: str) -> dict[str, Any]:
    """Translate every ``*_token_id`` entry (int or list) through the token's string."""
    def translate(key: str, old_id: int) -> int:
        token = old_tok.convert_ids_to_tokens(int(old_id))
        new_id = new_tok.convert_tokens_to_ids(token) if token is not None else None
        if new_id is None or new_tok.convert_ids_to_tokens(new_id) != token:
            raise LingraftError(f"{where}: {key}={old_id} ({token!r}) has no counterpart in the new tokenizer")
        return int(new_id)

    out = dict(config)
    for key, value in config.items():
        if key.endswith("_token_id") and value is not None:
            out[key] = [translate(key, v) for v in value] if isinstance(value, list) else translate(key, value)
    return out


def write_config_files(ckpt: Checkpoint, tmp: Path, rows: int, old_tok: "PreTrainedTokenizerFast",
                       new_tok: "PreTrainedTokenizerFast", untie: bool = False) -> None:
    """The source's config and generation config, with the new vocabulary size and token ids.

    Shared by `init` and `propagate`: both give a checkpoint a vocabulary it did not have.
    """
    config = remap_token_ids(ckpt.config, old_tok, new_tok, str(ckpt.folder / "config.json"))
    config["vocab_size"] = rows
    if untie:
        config["tie_word_embeddings"] = False
    write_json(tmp / "config.json", config)
    generation_path = ckpt.folder / "generation_config.json"
    if generation_path.is_file():
        generation = json.loads(generation_path.read_text(encoding="utf-8"))
        generation = remap_token_ids(generation, old_tok, new_tok, str(generation_path))
    else:   # a chat model needs generation defaults that stop at the right EOS
        generation = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config}
    write_json(tmp / "generation_config.json", generation)


def write_model_files(ckpt: Checkpoint, tmp: Path, new: NewTables, rows: int, old_tok: "PreTrainedTokenizerFast",
                      new_tok: "PreTrainedTokenizerFast", max_shard_bytes: int) -> dict[str, str]:
    replace = {name: t for name, t in new.tables.items() if name in ckpt.tensors}
    added = {name: t for name, t in new.tables.items() if name not in ckpt.tensors}   # an untied head
    checksums = write_checkpoint(ckpt, tmp, replace, max_shard_bytes, extra=added)
    write_config_files(ckpt, tmp, rows, old_tok, new_tok, untie=new.untie_head)
    new_tok.save_pretrained(str(tmp))
    if new.token_map is not None:
        new.token_map.save(tmp / TOKEN_MAP_NAME)
    if new.head_map is not None:
        save_head_map(*new.head_map, tmp / HEAD_MAP_NAME)
    return checksums


def check_chat_template(old_tok: "PreTrainedTokenizerFast", new_tok: "PreTrainedTokenizerFast") -> None:
    """Every special token the chat template spells out must be one token of the new tokenizer."""
    template = new_tok.chat_template if isinstance(new_tok.chat_template, str) else ""
    for token in old_tok.added_tokens_decoder.values():
        if token.content in template and len(new_tok.encode(token.content, add_special_tokens=False)) != 1:
            raise LingraftError(f"chat template uses {token.content!r}, which the new tokenizer splits")


def evaluate_bpc(cfg: InitConfig, source: Path, out: Path, old_tok: "PreTrainedTokenizerFast",
                 new_tok: "PreTrainedTokenizerFast") -> dict[str, dict[str, float]]:
    """Bits per character of the original and the freshly written model on `cfg.eval_text`."""
    from itertools import islice

    from transformers import AutoModelForCausalLM

    from lingraft.data_prep.readers import iter_texts
    from lingraft.evaluation.bpc import bits_per_character
    texts = list(islice(iter_texts(cfg.eval_text, cfg.eval_text_field), cfg.eval_max_docs))
    results = {}
    for name, folder, tok in (("original", source, old_tok), (cfg.method, out, new_tok)):
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
        start = time.perf_counter()
        r = bits_per_character(model, tok, texts, max_length=cfg.eval_max_length)
        log.info("bpc %s: %.4f (%d docs, %d tokens, %.1f s)", name, r.bits_per_character, r.documents, r.tokens,
                 time.perf_counter() - start)
        results[name] = {"bpc": round(r.bits_per_character, 5), "chars_per_token": round(r.characters_per_token, 4),
                         "tokens": r.tokens, "characters": r.characters, "documents": r.documents}
        del model
    return results


def report(cfg: InitConfig, metrics: dict[str, Any]) -> str:
    lines = [f"lingraft init ({cfg.method}): {metrics['old_vocab']} -> {metrics['new_vocab']} tokens "
             f"(embedding rows {metrics['rows']}), tied={metrics['tied']}",
             "provenance  " + "  ".join(f"{k} {v}" for k, v in metrics["provenance"].items())]
    if "bpc" in metrics:
        lines.append(f"{'model':<16}{'bpc':>8}{'chars/token':>13}")
        lines += [f"{name:<16}{r['bpc']:>8.4f}{r['chars_per_token']:>13.3f}" for name, r in metrics["bpc"].items()]
    lines.append(f"surgery {metrics['surgery_seconds']:.1f} s, peak RSS {metrics['surgery_peak_rss_mb']:.0f} MB "
                 f"(largest shard {metrics['largest_shard_mb']:.0f} MB)")
    return "\n".join(lines)


def run_init(cfg: InitConfig) -> dict[str, Any]:
    start = time.perf_counter()
    source = resolve_model(cfg.model)
    ckpt = open_checkpoint(source)
    names: EmbeddingNames = embedding_names(ckpt)
    old_spec = cfg.old_tokenizer or str(source)
    old_tok = load_tokenizer(old_spec, cfg.trust_remote_code)
    new_tok = load_tokenizer(cfg.tokenizer, cfg.trust_remote_code)
    stored = [names.input] + ([names.output] if names.output and not names.tied else [])
    old_tables = read_tensors(ckpt, stored)
    stored_rows = old_tables[names.input].shape[0]
    check_old_tokenizer(old_tok, stored_rows, ckpt, old_spec)
    carried = adopt_special_tokens(new_tok, old_tok)
    check_chat_template(old_tok, new_tok)
    new = build_tables(cfg, old_tables, old_tok, new_tok)
    if cfg.method == "distill":
        refine_by_distillation(cfg, source, names, new, old_tok, new_tok)
    elif names.output and names.tied:   # a tied checkpoint that stores the head anyway: keep them equal
        new.tables[names.output] = new.tables[names.input]
    rows = new.tables[names.input].shape[0]
    del old_tables

    inputs = {"model": source, "tokenizer": cfg.tokenizer,
              **{f"translation_resource[{i}]": r.path for i, r in enumerate(cfg.translation_resource)}}
    manifest = new_manifest("init", cfg, inputs=inputs)
    out = Path(cfg.out)
    with atomic_dir(out) as tmp:
        checksums = write_model_files(ckpt, tmp, new, rows, old_tok, new_tok, int(cfg.max_shard_gb * 1e9))
        metrics: dict[str, Any] = {
            "old_vocab": len(old_tok), "new_vocab": len(new_tok), "rows": rows, "checkpoint_rows": stored_rows,
            "tied": names.tied,
            "provenance": new.provenance, "special_tokens_carried": carried,
            "surgery_seconds": round(time.perf_counter() - start, 3),
            "surgery_peak_rss_mb": round(peak_rss_bytes() / 2**20, 1),
            "largest_shard_mb": round(ckpt.largest_shard_bytes / 2**20, 1),
            "embedding_tables_mb": round(sum(t.numel() * t.element_size() for t in new.tables.values()) / 2**20, 1)}
        if new.method_stats:
            metrics[cfg.method] = new.method_stats
        if cfg.eval_text:
            metrics["bpc"] = evaluate_bpc(cfg, source, tmp, old_tok, new_tok)
        manifest.outputs = {"model": str(out), "embedding_tensors": list(new.tables), CHECKSUM_KEY: checksums,
                            "token_map": TOKEN_MAP_NAME if new.token_map is not None else None,
                            "head_map": HEAD_MAP_NAME if new.head_map is not None else None}
        manifest.metrics = metrics
        manifest.write(tmp)
    print(report(cfg, metrics))
    return metrics
