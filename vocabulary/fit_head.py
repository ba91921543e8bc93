"""`lingraft fit-head`: refit an adapted model's learnt head rows on its own states.

The head rows of `init --method distill` were fitted on the states the *initial* input rows
produce. Training the input rows changes those states, so the head is refitted with the same
shared map (distill_math.HeadMap, from the same first-piece and mean features of the original
model's head) on the trained model's states over the training mix. Only the learnt rows of the
head change; every other tensor is copied byte for byte, and the side files (config,
tokenizer, token map) come over unchanged. The output replaces `out` only when complete.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import torch

from lingraft.atomic import atomic_dir
from lingraft.errors import LingraftError
from lingraft.evaluation.bpc import start_token_id
from lingraft.hf_folder import (
    CHECKSUM_KEY,
    INDEX_FILE,
    embedding_names,
    open_checkpoint,
    read_tensors,
    resolve_model,
    storage_dtype,
)
from lingraft.hf_folder_writer import write_checkpoint
from lingraft.log import get_logger
from lingraft.manifest import MANIFEST_NAME, new_manifest
from lingraft.vocabulary.distill_init import (
    DistillRuntime,
    HeadFitSettings,
    WindowSample,
    first_pieces,
    fit_head,
    trainable_rows,
)
from lingraft.vocabulary.embedding_init import mapped_table
from lingraft.vocabulary.fit_head_config import FitHeadConfig
from lingraft.vocabulary.loading import load_tokenizer
from lingraft.vocabulary.token_map import PROVENANCES, TOKEN_MAP_NAME, TokenMap
from lingraft.vocabulary.token_matching import describe_vocabulary

log = get_logger(__name__)


def _written_anew(name: str) -> bool:
    """The weights (shards and index) and the manifest, which the stage writes itself."""
    return name in (INDEX_FILE, MANIFEST_NAME) or (name.endswith(".safetensors") and name != TOKEN_MAP_NAME)


def copy_side_files(source: Path, dest: Path) -> list[str]:
    """Everything else in the model folder, unchanged: config, tokenizer, chat template, token map."""
    copied = [item.name for item in sorted(source.iterdir()) if item.is_file() and not _written_anew(item.name)]
    for name in copied:
        shutil.copy2(source / name, dest / name)
    return copied


def run_fit_head(cfg: FitHeadConfig) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM
    start = time.perf_counter()
    folder, base = resolve_model(cfg.model), resolve_model(cfg.base)
    ckpt = open_checkpoint(folder)
    names = embedding_names(ckpt)
    if names.tied or not names.output:
        raise LingraftError(f"model: {folder} ties its head to its input table; fit-head refits an untied head "
                            "(`lingraft init --method distill` unties it)")
    if not (folder / TOKEN_MAP_NAME).is_file():
        raise LingraftError(f"model: {folder} has no {TOKEN_MAP_NAME}, so its learnt rows are unknown "
                            "(give the output of `lingraft init`, `train` + `export`, or `propagate`)")
    token_map = TokenMap.load(folder / TOKEN_MAP_NAME)
    tok = load_tokenizer(str(folder), cfg.trust_remote_code)
    old_tok = load_tokenizer(str(base), cfg.trust_remote_code)
    if (token_map.new_vocab, token_map.old_vocab) != (len(tok), len(old_tok)):
        raise LingraftError(f"the token map is {token_map.new_vocab}x{token_map.old_vocab}, but the model's tokenizer "
                            f"has {len(tok)} tokens and the base's {len(old_tok)}: is {base} the model's original?")
    split = trainable_rows([PROVENANCES[int(code)] for code in token_map.provenance])
    base_ckpt = open_checkpoint(base)
    base_names = embedding_names(base_ckpt)
    old_head = next(iter(read_tensors(base_ckpt, [base_names.output or base_names.input]).values())).float()
    vocabs = (describe_vocabulary(old_tok), describe_vocabulary(tok))
    first = first_pieces(split, old_tok, vocabs)
    mean = mapped_table(token_map, old_head)

    windows = WindowSample([Path(p) for p in cfg.corpus], cfg.corpus_field, cfg.passages, cfg.passage_chars,
                           cfg.copy_share, cfg.seed).windows()
    begin = start_token_id(tok)
    sequences = [torch.tensor([begin, *ids], dtype=torch.int64)
                 for ids in tok(windows, add_special_tokens=False)["input_ids"]]

    runtime = DistillRuntime.resolve(cfg.device, cfg.precision)
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                 trust_remote_code=cfg.trust_remote_code).to(runtime.device)
    model.requires_grad_(False)
    model.eval()
    rows = len(tok)
    table = model.get_input_embeddings().weight.detach()[:rows]
    stored_head = model.get_output_embeddings().weight.detach()
    head = stored_head[:rows].clone()
    split = split.to(runtime.device)
    head[split.ids] = mean.to(runtime.device)[split.ids]      # the fit starts from the features, not the old fit
    settings = HeadFitSettings(cfg.epochs, cfg.lr, cfg.batch_size, cfg.state_batch_size, cfg.seed)
    fitted, stats = fit_head(settings, model, runtime, table, head, old_head.to(runtime.device),
                             first.to(runtime.device), split, sequences)
    new_head = stored_head.clone()
    new_head[split.ids] = fitted[split.ids]
    del model

    info = ckpt.tensors[names.output]
    manifest = new_manifest("fit_head", cfg, inputs={"model": folder, "base": base})
    out = Path(cfg.out)
    with atomic_dir(out) as tmp:
        checksums = write_checkpoint(ckpt, tmp, {names.output: new_head.cpu().to(storage_dtype(info))},
                                     int(cfg.max_shard_gb * 1e9))
        copied = copy_side_files(folder, tmp)
        best = min(held for _, held in stats["cross_entropy_by_epoch"])
        metrics = {**stats, "held_out_cross_entropy": best, "learnt_rows": int(split.ids.numel()),
                   "windows": len(windows),
                   "device": str(runtime.device), "precision": str(runtime.dtype).removeprefix("torch."),
                   "total_seconds": round(time.perf_counter() - start, 1)}
        manifest.outputs = {"model": str(out), "head_tensor": names.output, "side_files": copied,
                            CHECKSUM_KEY: checksums}
        manifest.metrics = metrics
        manifest.write(tmp)
    curve = stats["cross_entropy_by_epoch"]
    print(f"lingraft fit-head: {split.ids.numel()} learnt head rows refitted on {stats['positions']} positions; "
          f"held-out cross-entropy {curve[0][1]:.3f} -> {best:.3f} over {len(curve)} epochs; "
          f"{stats['rows_never_seen']} rows never a target ({metrics['total_seconds']:.0f} s)")
    return metrics
