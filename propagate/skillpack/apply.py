"""`lingraft skillpack apply`: rebuild a tuned model from a model and one or more packs.

Order of work: open the model and every pack (checksums verified), fingerprint the model and
check that each pack is built on what it is applied to, and that every module's shape fits;
plan the output's config and tokenizer; only then stream the model shard by shard: each
shard's touched tensors go through every pack in order and the shard is written with
lingraft's checkpoint writer (untouched tensors are copied as raw bytes), so memory stays
near one shard whatever the model size. Output: a Hugging Face folder plus manifest.json.

Which pack fits which model: the first pack's base fingerprint must be the model's; a later
pack must be built on the previous pack's tuned model (a chain) or on the same base (stacked
deltas). `--allow-other-base` lifts this: such a pack is applied "onto a sibling", its deltas
added to whatever the model holds, and a new vocabulary's tables go through LEP's conversion
(propagate.lep_math) fitted between the pack's base rows and the model's own tables.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lingraft.atomic import atomic_dir
from lingraft.hf_folder import CHECKSUM_KEY, Checkpoint, copy_model_files, open_checkpoint, read_tensors, resolve_model
from lingraft.hf_folder_writer import write_checkpoint_per_shard
from lingraft.errors import LingraftError
from lingraft.log import get_logger, progress
from lingraft.manifest import new_manifest
from lingraft.memory import peak_rss_bytes
from lingraft.propagate.lep.lep_math import copy_rows, grow_rows, propagate_table
from lingraft.propagate.skillpack.config import SkillpackApplyConfig
from lingraft.propagate.skillpack.format import SkillPack, model_fingerprint, tensor_digests
from lingraft.propagate.skillpack.stage import reconstruct, vocab_digest
from lingraft.propagate.lep.vocabularies import OutputVocabulary, output_vocabulary
from lingraft.vocabulary.embedding_init import padded_size
from lingraft.vocabulary.head_map_file import HEAD_MAP_NAME
from lingraft.vocabulary.init_stage import write_config_files
from lingraft.vocabulary.loading import load_tokenizer
from lingraft.vocabulary.token_map import TOKEN_MAP_NAME

log = get_logger(__name__)


@dataclass
class Step:
    """One pack in the sequence and how it is applied."""
    pack: SkillPack
    onto_sibling: bool
    vocab: OutputVocabulary | None = None   # a sibling getting the pack's new vocabulary
    table_rows: int = 0                     # the tables' rows in that case
    fits: dict[str, Any] | None = None

    def apply(self, name: str, current: torch.Tensor, method: str) -> torch.Tensor:
        record = self.pack.modules.get(name)
        if record is None:
            return current
        if record["policy"] == "table" and self.vocab is not None:
            return self._convert_table(name, current, method)
        return reconstruct(self.pack, name, current)

    def _convert_table(self, name: str, current: torch.Tensor, method: str) -> torch.Tensor:
        """LEP onto a sibling, as `lingraft propagate` does: the pack's table mapped by the fit
        from its base rows to the sibling's table, grown for the sibling's added tokens, whose
        rows are copied from the sibling."""
        assert self.vocab is not None
        token_map = self.pack.token_map() if method == "conversion" else None
        table, fit = propagate_table(method, self.pack.table(name), current.dtype, token_map,
                                     self.pack.base_table(name), current)
        table = grow_rows(table, self.table_rows)
        copy_rows(table, current, list(self.vocab.instruct_rows), list(self.vocab.instruct_rows.values()))
        if fit is not None:
            self.fits = {**(self.fits or {}), name: fit.summary()}
            log.info("%s: %s map, relative residual %.4g over %d rows", name, method, fit.relative_residual, fit.rows)
        return table


def _mismatch(pack: SkillPack, layout: dict[str, list[Any]], what: str) -> str:
    """Why a pack does not fit `layout` ({name: [dtype, shape]}), for the refusal message."""
    base = pack.outputs["base"]["tensors"]
    missing = sorted(set(base) - set(layout))
    if missing:
        return f"{what} lacks {missing[0]}, which the pack's base has"
    differ = [n for n in base if base[n] != layout[n]]
    if differ:
        return f"{differ[0]} is {layout[differ[0]]} in {what}, {base[differ[0]]} in the pack's base"
    return f"{what} has the base's tensor shapes but other weights"


def plan_steps(cfg: SkillpackApplyConfig, ckpt: Checkpoint, packs: list[SkillPack], staging: Path
               ) -> tuple[list[Step], Path]:
    """Check each pack fits what it is applied to; return the steps and the folder whose
    config and tokenizer files the output gets."""
    layout = {n: [i.dtype, list(i.shape)] for n, i in ckpt.tensors.items()}
    fitting = {model_fingerprint(ckpt, tensor_digests(ckpt, "hashing model"))}
    files_dir, steps = ckpt.folder, []
    for k, pack in enumerate(packs):
        what = "the model" if k == 0 else f"the model after {packs[k - 1].folder}"
        on_base = pack.base_fingerprint in fitting
        if not on_base and not cfg.allow_other_base:
            raise LingraftError(f"{pack.folder}: made for another base model ({_mismatch(pack, layout, what)}); "
                                f"pass --allow-other-base to apply it to {cfg.base} anyway")
        step = Step(pack, onto_sibling=not on_base)
        if step.onto_sibling and pack.replaces_tables:
            files_dir = _stage_sibling_vocabulary(cfg, step, files_dir, staging / f"files-{k}")
        elif not step.onto_sibling:
            files_dir = pack.model_files
        _check_shapes(step, layout)
        steps.append(step)
        fitting = {pack.tuned_fingerprint, pack.base_fingerprint} if on_base else set()
    return steps, files_dir


def _check_shapes(step: Step, layout: dict[str, list[Any]]) -> None:
    """Every module the pack changes exists with the pack's shape; track tables it replaces."""
    for name, record in step.pack.modules.items():
        if record["policy"] == "unchanged":
            continue
        if name not in layout:
            raise LingraftError(f"{step.pack.folder}: changes {name}, which the model does not have")
        if record["policy"] == "table":
            rows = step.table_rows if step.vocab is not None else record["shape"][0]
            if step.vocab is not None and layout[name][1][1] != record["shape"][1]:
                raise LingraftError(f"{step.pack.folder}: {name} is {record['shape'][1]} wide in the pack, "
                                    f"{layout[name][1][1]} in the model")
            layout[name] = [layout[name][0] if step.vocab is not None else record["dtype"], [rows, record["shape"][1]]]
        elif layout[name][1] != record["shape"]:
            raise LingraftError(f"{step.pack.folder}: {name} is {record['shape']} in the pack, {layout[name][1]} "
                                f"in the model it is applied to")


def _stage_sibling_vocabulary(cfg: SkillpackApplyConfig, step: Step, files_dir: Path, stage: Path) -> Path:
    """A sibling gets the pack's vocabulary as `lingraft propagate` gives it: the pack's tokenizer
    plus the sibling's added tokens and chat template; config ids remapped. Written to `stage`."""
    pack = step.pack
    sibling_tok = load_tokenizer(files_dir, cfg.trust_remote_code)
    expected = pack.outputs["base"].get("vocab_sha256")
    if expected is None or vocab_digest(sibling_tok) != expected:
        raise LingraftError(f"{files_dir}: its tokenizer is not the pack's base tokenizer (the subword "
                            f"vocabularies differ), so it is no sibling of {pack.folder}'s base")
    step.vocab = output_vocabulary(pack.model_files, sibling_tok, cfg.trust_remote_code)
    stored_rows = max(r["shape"][0] for r in pack.modules.values() if r["policy"] == "table")
    needed = len(step.vocab.tokenizer)
    step.table_rows = padded_size(needed, cfg.pad_to_multiple) if needed > stored_rows else stored_rows
    config = json.loads((files_dir / "config.json").read_text(encoding="utf-8"))
    stage.mkdir(parents=True)
    write_config_files(Checkpoint(folder=files_dir, config=config, shards=(), tensors={}), stage,
                       step.table_rows, sibling_tok, step.vocab.tokenizer)
    step.vocab.tokenizer.save_pretrained(str(stage))
    return stage


def write_shards(ckpt: Checkpoint, steps: list[Step], method: str, out: Path) -> dict[str, str]:
    """The model's shards with every step applied to the tensors the packs touch, one shard in
    memory at a time; returns {shard file: sha256} (the writer adds the index when there are several)."""
    touched = {n for s in steps for n, r in s.pack.modules.items() if r["policy"] != "unchanged"}
    with progress(total=len(touched), desc="applying packs", unit="module") as bar:
        def applied(members: list[str]) -> dict[str, torch.Tensor]:
            replace = {}
            for name in (n for n in members if n in touched):
                tensor = read_tensors(ckpt, [name])[name]
                for step in steps:
                    tensor = step.apply(name, tensor, method)
                replace[name] = tensor
                bar.update(1)
            return replace

        return write_checkpoint_per_shard(ckpt, out, applied)


def run_apply(cfg: SkillpackApplyConfig) -> dict[str, Any]:
    import shutil
    clock = time.perf_counter()
    folder = resolve_model(cfg.base)
    ckpt = open_checkpoint(folder)
    packs = [SkillPack(p) for p in cfg.packs]
    out = Path(cfg.out)
    manifest = new_manifest("skillpack apply", cfg,
                            inputs={"base": folder, **{f"pack_{k}": p.folder for k, p in enumerate(packs)}})
    with atomic_dir(out) as tmp:
        steps, files_dir = plan_steps(cfg, ckpt, packs, tmp / ".staging")
        plan_s = time.perf_counter() - clock
        checksums = write_shards(ckpt, steps, cfg.method, tmp)
        # The model's provenance maps travel with it; a pack that brings a new vocabulary replaces the token map below.
        copy_model_files(files_dir, tmp, keep=(TOKEN_MAP_NAME, HEAD_MAP_NAME))
        shutil.rmtree(tmp / ".staging", ignore_errors=True)
        vocabulary_from = [s.pack for s in steps if s.pack.replaces_tables]
        if vocabulary_from:   # the new vocabulary's map travels with it, as `lingraft propagate` does
            shutil.copyfile(vocabulary_from[-1].folder / TOKEN_MAP_NAME, tmp / TOKEN_MAP_NAME)
        manifest.outputs = {"model": str(out), CHECKSUM_KEY: checksums, "packs": [
            {"pack": str(s.pack.folder), "kind": s.pack.kind, "onto_sibling": s.onto_sibling,
             "base_fingerprint": s.pack.base_fingerprint, "tuned_fingerprint": s.pack.tuned_fingerprint}
            for s in steps]}
        manifest.metrics = {"fits": {str(s.pack.folder): s.fits for s in steps if s.fits},
                            "plan_s": round(plan_s, 3), "seconds": round(time.perf_counter() - clock, 3),
                            "bytes_written": sum(f.stat().st_size for f in tmp.glob("*.safetensors")),
                            "peak_rss_bytes": peak_rss_bytes()}
        manifest.write(tmp)
    modes = ", ".join(f"{s.pack.folder.name} ({'onto a sibling' if s.onto_sibling else 'on its base'})"
                      for s in steps)
    print(f"lingraft skillpack apply: {modes} -> {out} ({manifest.metrics['seconds']:.1f} s)")
    return manifest.metrics
