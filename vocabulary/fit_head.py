"""`lingraft fit-head`: refit an adapted model's learnt head rows on its own states.

The head rows of `init --method distill` were fitted on the states the *initial* input rows
produce. Training the input rows changes those states, so the head is refitted with the same
shared map (distill_math.HeadMap, from the same first-piece and mean features of the original
model's head) on the trained model's states over the training mix, from the first-piece rows as
init's fit. With `warm_start` the map starts where the model's own fit ended (its
head_map.safetensors, written by init and carried by export; training that also updated the head
rows leaves a map that no longer gives them exactly, but it is where they started): about 3x
faster, and better on the fit's held-out windows, but not on held-out UD or Blok text in the demo
(BENCHMARKS.md, "The head map kept"). The model's own rows compete
with every epoch on held-out windows and stay unless beaten. Those windows are text neither init
nor this fit reads when both draw with the same corpus, passages, characters, copy share and
seed (the demo's do); with other settings they may overlap init's windows, which favours the
incumbent, as does training that updated the head rows on text the windows come from.

Only the learnt rows of the head change; every other tensor is copied byte for byte, and the
top-level side files (config, tokenizer, chat template, token map) come over unchanged;
subfolders (an exported adapter) do not. The output replaces `out` only when complete.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from lingraft.atomic import atomic_dir
from lingraft.errors import LingraftError
from lingraft.hf_folder import (
    CHECKSUM_KEY,
    copy_model_files,
    embedding_names,
    open_checkpoint,
    read_tensors,
    resolve_model,
    storage_dtype,
)
from lingraft.hf_folder_writer import write_checkpoint
from lingraft.log import get_logger
from lingraft.manifest import new_manifest
from lingraft.vocabulary.distill_init import (
    DistillRuntime,
    HeadFitSettings,
    WindowSample,
    first_pieces,
    fit_head_rows,
    load_frozen,
    token_sequences,
    trainable_rows,
)
from lingraft.vocabulary.embedding_init import mapped_table
from lingraft.vocabulary.fit_head_config import FitHeadConfig
from lingraft.vocabulary.head_map_file import HEAD_MAP_NAME, load_head_map, save_head_map
from lingraft.vocabulary.loading import load_tokenizer
from lingraft.vocabulary.token_map import PROVENANCES, TOKEN_MAP_NAME, TokenMap
from lingraft.vocabulary.token_matching import describe_vocabulary

log = get_logger(__name__)


def saved_head_map(folder: Path, learnt_ids: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """The map stored with the model (init's or an earlier refit's), else None: the fit starts
    from the first-piece rows, as init's does."""
    path = folder / HEAD_MAP_NAME
    if not path.is_file():
        log.info("%s has no %s: the head map starts from the first-piece rows", folder, HEAD_MAP_NAME)
        return None
    log.info("the head map starts from %s (a warm start)", path)
    return load_head_map(path, learnt_ids)


def run_fit_head(cfg: FitHeadConfig) -> dict[str, Any]:
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
    base_head = next(iter(read_tensors(base_ckpt, [base_names.output or base_names.input]).values()))
    width = ckpt.tensors[names.output].shape[1]
    if base_head.shape[1] != width:
        raise LingraftError(f"base: {base}'s head is {base_head.shape[1]} wide, the model's {width}: "
                            "give the model's original (the one `lingraft init` started from)")
    vocabs = (describe_vocabulary(old_tok), describe_vocabulary(tok))
    first = first_pieces(split, old_tok, vocabs)
    # rounded like init's mean rows: the token map applied to the table as stored, then fp32
    mean = mapped_table(token_map, base_head).float()[split.ids]
    old_head = base_head.float()

    # the same draw as init's with the same settings: the held-out windows are ones init never read
    draw = WindowSample([str(p) for p in cfg.corpus], cfg.corpus_field, cfg.passages, cfg.passage_chars,
                        cfg.copy_share, cfg.seed).draw()

    runtime = DistillRuntime.resolve(cfg.device, cfg.precision)
    torch.manual_seed(cfg.seed)
    model = load_frozen(folder, runtime, cfg.trust_remote_code)
    rows = len(tok)
    table = model.get_input_embeddings().weight.detach()[:rows]
    stored_head = model.get_output_embeddings().weight.detach()
    split = split.to(runtime.device)
    start_map = saved_head_map(folder, split.ids) if cfg.warm_start else None
    schedule = cfg.schedule(warm=start_map is not None)
    settings = HeadFitSettings(schedule.epochs, schedule.lr, cfg.batch_size, cfg.state_batch_size, cfg.seed,
                               schedule.warmup_epochs)
    # the model's own learnt rows compete: they are kept unless an epoch beats them on held-out windows
    fit, stats = fit_head_rows(settings, model, runtime, table, stored_head[:rows], old_head.to(runtime.device),
                               first.to(runtime.device), mean.to(runtime.device), split,
                               token_sequences(tok, draw.fit), token_sequences(tok, draw.held_out),
                               incumbent=stored_head[split.ids], start_map=start_map)
    refitted = fit.state is not None
    if not refitted:
        log.warning("no epoch beat the model's own head rows on held-out windows (cross-entropy %.4f): "
                    "they are kept", stats["held_out_start"])
    new_head = stored_head.clone()
    new_head[split.ids] = fit.rows
    del model

    info = ckpt.tensors[names.output]
    manifest = new_manifest("fit_head", cfg, inputs={"model": folder, "base": base})
    out = Path(cfg.out)
    with atomic_dir(out) as tmp:
        checksums = write_checkpoint(ckpt, tmp, {names.output: new_head.cpu().to(storage_dtype(info))},
                                     int(cfg.max_shard_gb * 1e9))
        # kept rows keep the map that made them (when the model has one); refitted rows get their own
        copied = copy_model_files(folder, tmp, keep=[TOKEN_MAP_NAME] + ([] if refitted else [HEAD_MAP_NAME]))
        if refitted:
            save_head_map(fit.state, split.ids, tmp / HEAD_MAP_NAME)
        metrics = {**stats, "held_out_cross_entropy": stats["held_out_best"], "refitted": refitted,
                   "started_from": HEAD_MAP_NAME if start_map is not None else "first-piece rows",
                   "epochs": schedule.epochs, "lr": schedule.lr, "warmup_epochs": schedule.warmup_epochs,
                   "learnt_rows": int(split.ids.numel()), "windows": len(draw.fit),
                   "device": str(runtime.device), "precision": runtime.dtype_name,
                   "total_seconds": round(time.perf_counter() - start, 1)}
        manifest.outputs = {"model": str(out), "head_tensor": names.output, "side_files": copied,
                            CHECKSUM_KEY: checksums}
        manifest.metrics = metrics
        manifest.write(tmp)
    outcome = (f"refitted (best epoch {stats['best_epoch']} of {schedule.epochs})" if refitted
               else f"kept: no epoch of {schedule.epochs} beat them")
    print(f"lingraft fit-head: {split.ids.numel()} learnt head rows {outcome}, the map started from "
          f"{metrics['started_from']}; held-out cross-entropy "
          f"{stats['held_out_start']:.4f} (the model's rows) -> {stats['held_out_best']:.4f} over "
          f"{stats['held_out_positions']} held-out positions ({stats['positions']} fitted on); "
          f"{stats['rows_never_seen']} rows never a target "
          f"({metrics['total_seconds']:.0f} s)")
    return metrics
