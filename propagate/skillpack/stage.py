"""`lingraft skillpack create|verify|inspect`: write a skill pack, measure it, show it.

Create streams the two checkpoints module by module (one base and one tuned tensor in memory
at a time, plus the growing pack, which is a fraction of the model): it classifies each
module, encodes its delta (skillpack_math) and writes the folder atomically
(skillpack_format), manifest last. `apply` lives in skillpack_apply.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lingraft.atomic import atomic_dir, write_json
from lingraft.hf_folder import (
    Checkpoint,
    copy_model_files,
    embedding_names,
    open_checkpoint,
    read_tensors,
    resolve_model,
)
from lingraft.errors import LingraftError
from lingraft.log import get_logger, progress
from lingraft.manifest import new_manifest
from lingraft.memory import peak_rss_bytes
from lingraft.propagate.skillpack.config import SkillpackCreateConfig, SkillpackInspectConfig, SkillpackVerifyConfig
from lingraft.propagate.skillpack.format import (
    FORMAT,
    MODEL_FILES,
    PACK_FILE,
    TORCH_DTYPES,
    Encoded,
    SkillPack,
    delta_dtype,
    encode_dense,
    encode_lowrank,
    encode_rows,
    encode_table,
    encode_unchanged,
    file_checksums,
    model_fingerprint,
    tensor_digests,
    tensor_layout,
)
from lingraft.propagate.skillpack.skillpack_math import (
    add_delta,
    add_row_delta,
    band_ranks,
    changed_rows,
    error_norms,
    relative_error,
    truncated_svd,
)
from lingraft.vocabulary.token_map import TOKEN_MAP_NAME, TokenMap

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

log = get_logger(__name__)


# -- what a checkpoint's tables are, and whether the vocabulary changed ---------------------------
def table_names(ckpt: Checkpoint) -> dict[str, str]:
    """{"input": name, "head": name}: the stored vocabulary-sized tables (a tied head is not stored)."""
    names = embedding_names(ckpt)
    return {"input": names.input, **({"head": names.output} if names.output else {})}


def vocab_digest(tok: "PreTrainedTokenizerFast") -> str:
    """sha256 of the subword vocabulary (piece -> id, added tokens excluded): siblings share it."""
    vocab = sorted(tok.backend_tokenizer.get_vocab(with_added_tokens=False).items())
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()


def _optional_tokenizer(folder: Path, trust_remote_code: bool) -> "PreTrainedTokenizerFast | None":
    from lingraft.vocabulary.loading import load_tokenizer
    try:
        return load_tokenizer(folder, trust_remote_code)
    except (LingraftError, OSError, ValueError):
        return None


def _check_pairing(base: Checkpoint, tuned: Checkpoint, tables: set[str]) -> None:
    """Same tensor names; same shapes and dtypes outside the tables (those may change with the vocabulary)."""
    missing, extra = sorted(set(base.tensors) - set(tuned.tensors)), sorted(set(tuned.tensors) - set(base.tensors))
    if missing or extra:
        what = f"{missing[0]} is only in the base" if missing else f"{extra[0]} is only in the tuned model"
        raise LingraftError(f"{tuned.folder}: not a fine-tune of {base.folder} ({what})")
    for name, t in tuned.tensors.items():
        b = base.tensors[name]
        if name not in tables and (b.shape, b.dtype) != (t.shape, t.dtype):
            raise LingraftError(f"{tuned.folder}: {name} is {t.dtype}{list(t.shape)}, the base's "
                                f"{b.dtype}{list(b.shape)}")


# -- encoding ------------------------------------------------------------------------------------
def encode_module(cfg: SkillpackCreateConfig, name: str, base: torch.Tensor, tuned: torch.Tensor,
                  is_table: bool, token_map: TokenMap | None) -> Encoded:
    """Pick the module's policy and encode its delta (see skillpack_format's docstring)."""
    if is_table and token_map is not None:
        return encode_table(name, tuned, token_map, base)
    if torch.equal(base, tuned):
        return encode_unchanged(name, tuple(tuned.shape), tuned.dtype)
    compute = delta_dtype(tuned.dtype)     # wide enough for the difference to be exact
    delta = tuned.to(compute) - base.to(compute)
    if is_table:
        ids = changed_rows(delta)
        return encode_rows(name, ids, delta[ids], tuple(tuned.shape), tuned.dtype)
    if delta.ndim != 2:
        return encode_dense(name, delta, tuned.dtype)
    low = truncated_svd(delta if tuned.dtype == torch.float64 else delta.float(), cfg.energy)
    top, rest = band_ranks(low.rank, cfg.top_fraction)
    encoded = encode_lowrank(name, low, [(top, cfg.top_precision), (rest, cfg.rest_precision)],
                             cfg.group_size, tuned.dtype)
    if encoded.record["bytes"] >= encoded.record["dense_bytes"]:   # low rank would not save space
        return encode_dense(name, delta, tuned.dtype, lowrank_rank=low.rank)
    return encoded


def run_create(cfg: SkillpackCreateConfig) -> dict[str, Any]:
    from safetensors.torch import save_file

    from lingraft.propagate.lep.vocabularies import resolve_token_map
    clock = time.perf_counter()
    base_dir, tuned_dir = resolve_model(cfg.base), resolve_model(cfg.tuned)
    base, tuned = open_checkpoint(base_dir), open_checkpoint(tuned_dir)
    tables = table_names(tuned)
    _check_pairing(base, tuned, set(tables.values()))
    base_tok = _optional_tokenizer(base_dir, cfg.trust_remote_code)
    tuned_tok = _optional_tokenizer(tuned_dir, cfg.trust_remote_code)
    vocab_changed = any(base.tensors[n].shape != tuned.tensors[n].shape for n in tables.values()) or (
        base_tok is not None and tuned_tok is not None and vocab_digest(base_tok) != vocab_digest(tuned_tok))
    if cfg.language and not vocab_changed:
        raise LingraftError(f"{tuned_dir}: a language pack needs a new vocabulary, but the tuned model has the "
                            f"base's (drop --language for a skill pack)")
    token_map = None
    if vocab_changed:
        if base_tok is None or tuned_tok is None:
            raise LingraftError(f"the vocabulary changed: both {base_dir} and {tuned_dir} need their tokenizer")
        token_map = resolve_token_map(cfg.token_map, tuned_dir, base_tok, tuned_tok).token_map
    digests = {"base": tensor_digests(base, "hashing base"), "tuned": tensor_digests(tuned, "hashing tuned")}

    modules = list(tables.values()) if cfg.language else list(tuned.tensors)
    records: dict[str, dict[str, Any]] = {}
    pack: dict[str, torch.Tensor] = {}
    for name in progress(modules, desc="encoding modules", unit="module"):
        if digests["base"][name] == digests["tuned"][name]:
            encoded = encode_unchanged(name, tuned.tensors[name].shape, _torch_dtype(tuned, name))
        else:
            b, t = read_tensors(base, [name])[name], read_tensors(tuned, [name])[name]
            encoded = encode_module(cfg, name, b, t, name in tables.values(), token_map)
        pack.update(encoded.tensors)
        records[name] = encoded.record
    timings = {"encode_s": time.perf_counter() - clock}

    manifest = new_manifest("skillpack create", cfg, inputs={"base": base_dir, "tuned": tuned_dir})
    out = Path(cfg.out)
    with atomic_dir(out) as tmp:
        save_file(pack, str(tmp / PACK_FILE), metadata={"format": FORMAT})
        if token_map is not None:
            token_map.save(tmp / TOKEN_MAP_NAME)
        copy_model_files(tuned_dir, tmp / MODEL_FILES)
        files = file_checksums(tmp)
        pack_bytes = sum((tmp / rel).stat().st_size for rel in files if not rel.startswith(MODEL_FILES))
        dense = sum(r["dense_bytes"] for r in records.values())
        manifest.outputs = {
            "format": FORMAT, "kind": "language" if cfg.language else "full", "files": files,
            "base": {"fingerprint": model_fingerprint(base, digests["base"]), "tensors": tensor_layout(base),
                     **({"vocab_sha256": vocab_digest(base_tok)} if base_tok is not None else {})},
            "tuned": {"fingerprint": model_fingerprint(tuned, digests["tuned"])},
            "tables": {**tables, "tied": embedding_names(tuned).tied, "vocab_changed": vocab_changed},
            "modules": records}
        manifest.metrics = {
            "pack_bytes": pack_bytes, "dense_delta_bytes": dense, "size_ratio": pack_bytes / dense,
            "policies": dict(Counter(r["policy"] for r in records.values())),
            "mean_energy_kept": _mean([r["energy_kept"] for r in records.values() if "energy_kept" in r]),
            "peak_rss_bytes": peak_rss_bytes(), "seconds": round(time.perf_counter() - clock, 3),
            **{k: round(v, 3) for k, v in timings.items()}}
        manifest.write(tmp)
    print(f"lingraft skillpack create: {len(records)} modules {manifest.metrics['policies']}, "
          f"{pack_bytes / 1e6:.2f} MB = {pack_bytes / dense:.4f} of the dense delta ({dense / 1e6:.1f} MB)")
    return manifest.metrics


def _torch_dtype(ckpt: Checkpoint, name: str) -> torch.dtype:
    return TORCH_DTYPES[ckpt.tensors[name].dtype]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


# -- reconstruction on the pack's own base -------------------------------------------------------
def reconstruct(pack: SkillPack, name: str, current: torch.Tensor) -> torch.Tensor:
    """`current` (the module as the pack's base has it) with the pack's delta applied."""
    record = pack.modules[name]
    policy = record["policy"]
    if policy == "unchanged":
        return current
    if policy == "table":
        return pack.table(name)
    if list(current.shape) != record["shape"]:
        raise LingraftError(f"{pack.folder}: {name} is {record['shape']} in the pack, {list(current.shape)} "
                            f"in the model it is applied to")
    if policy == "rows":
        return add_row_delta(current, *pack.row_delta(name))
    return add_delta(current, pack.delta(name))


# -- verify ----------------------------------------------------------------------------------
def run_verify(cfg: SkillpackVerifyConfig) -> dict[str, Any]:
    pack = SkillPack(cfg.pack)
    base, tuned = open_checkpoint(resolve_model(cfg.base)), open_checkpoint(resolve_model(cfg.tuned))
    for role, ckpt, expected in (("base", base, pack.base_fingerprint), ("tuned", tuned, pack.tuned_fingerprint)):
        if model_fingerprint(ckpt, tensor_digests(ckpt, f"hashing {role}")) != expected:
            raise LingraftError(f"{ckpt.folder}: not the {role} model {pack.folder} was made from "
                                f"(its weights' fingerprint differs from the manifest's)")
    rows: dict[str, dict[str, Any]] = {}
    error_sq = delta_sq = 0.0
    for name, record in progress(pack.modules.items(), desc="verifying modules", unit="module"):
        row = {"policy": record["policy"], "rank": record.get("rank"), "bytes": record["bytes"],
               "size_ratio": record["bytes"] / record["dense_bytes"]}
        if record["policy"] != "unchanged":
            b, t = read_tensors(base, [name])[name], read_tensors(tuned, [name])[name]
            rebuilt = reconstruct(pack, name, b)
            # The reference is the delta; a replaced table has no delta, so its error is measured
            # against the table itself.
            reference = t.double() - b.double() if b.shape == t.shape else t.double()
            error, scale = error_norms(rebuilt, t, reference)
            row["relative_error"] = relative_error(error, scale)
            error_sq += error ** 2
            delta_sq += scale ** 2
        else:
            row["relative_error"] = 0.0
        rows[name] = row
    pack_bytes, dense = pack.nbytes(), sum(r["dense_bytes"] for r in pack.modules.values())
    report = {"pack": str(pack.folder), "kind": pack.kind, "pack_bytes": pack_bytes, "dense_delta_bytes": dense,
              "size_ratio": pack_bytes / dense,
              "relative_error": math.sqrt(error_sq / delta_sq) if delta_sq else 0.0, "modules": rows}
    if cfg.report:
        write_json(cfg.report, report)
    print(format_verify(report))
    return report


def format_verify(report: dict[str, Any]) -> str:
    lines = [f"{'module':<56} {'policy':<9} {'rank':>5} {'size ratio':>10} {'rel. error':>10}"]
    for name, row in report["modules"].items():
        if row["policy"] != "unchanged":
            rank = "" if row["rank"] is None else str(row["rank"])
            lines.append(f"{name[-56:]:<56} {row['policy']:<9} {rank:>5} {row['size_ratio']:>10.4f} "
                         f"{row['relative_error']:>10.3g}")
    unchanged = sum(r["policy"] == "unchanged" for r in report["modules"].values())
    lines.append(f"{unchanged} unchanged modules; pack {report['pack_bytes'] / 1e6:.2f} MB = "
                 f"{report['size_ratio']:.4f} of the dense delta; overall relative error "
                 f"{report['relative_error']:.4g}")
    return "\n".join(lines)


# -- inspect ---------------------------------------------------------------------------------
def run_inspect(cfg: SkillpackInspectConfig) -> dict[str, Any]:
    pack = SkillPack(cfg.pack)
    params, metrics = pack.manifest.get("params", {}), pack.manifest.get("metrics", {})
    summary = {"pack": str(pack.folder), "kind": pack.kind, "base_fingerprint": pack.base_fingerprint,
               "tuned_fingerprint": pack.tuned_fingerprint, "energy": params.get("energy"),
               "precisions": [params.get("top_precision"), params.get("rest_precision")],
               "policies": dict(Counter(r["policy"] for r in pack.modules.values())),
               "pack_bytes": pack.nbytes(), "size_ratio": metrics.get("size_ratio"),
               "vocab_changed": pack.outputs["tables"]["vocab_changed"]}
    lines = [f"{k}: {v}" for k, v in summary.items()]
    if cfg.modules:
        for name, r in pack.modules.items():
            bands = " + ".join(f"{b['rank']}x{b['precision']}" for b in r.get("bands", []))
            lines.append(f"  {name}: {r['policy']} {r['dtype']}{r['shape']} {bands} {r['bytes']} B")
    print("\n".join(lines))
    return summary
