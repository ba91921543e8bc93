"""The training run: set up, resume, step, log, checkpoint. Same code for every launcher."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch

from lingraft.config import to_dict
from lingraft.errors import LingraftError
from lingraft.log import get_logger, progress
from lingraft.memory import peak_rss_bytes
from lingraft.train.backends import NonFiniteLoss, build_backend
from lingraft.train.trainer_checkpoint import (
    check_resumable,
    latest_checkpoint,
    load_trainer_state,
    prepare_root,
    save_checkpoint,
)
from lingraft.train.config import TrainConfig
from lingraft.train.data import BatchStream, SampleSource, check_data_matches_model, open_packed
from lingraft.train.dist import DistInfo, all_reduce_sum, init_distributed
from lingraft.train.distill import teacher_inputs
from lingraft.train.flops import (
    GradPlan,
    ModelShape,
    attended_keys_per_token,
    mfu,
    peak_flops_per_device,
    training_flops_per_token,
)
from lingraft.train.metrics_log import MetricsLogger
from lingraft.train.model_parts import decoder_blocks
from lingraft.train.model_setup import Runtime, build_model, resolve_runtime

log = get_logger(__name__)

SourceFactory = Callable[[TrainConfig, DistInfo], SampleSource]


def _default_source(cfg: TrainConfig, dist: DistInfo) -> SampleSource:
    return open_packed(cfg.data, rank=dist.rank, world_size=dist.world_size, seed=cfg.seed)


def _grad_plan(model: torch.nn.Module, shape: ModelShape, split) -> GradPlan:
    """What the wrapped model trains, read off `requires_grad`: the same plan for every mode."""
    def numel(p: torch.Tensor) -> int:
        return getattr(p, "ds_numel", p.numel())     # a ZeRO-3 parameter is empty outside forward

    def is_matrix(p: torch.Tensor) -> bool:
        return len(getattr(p, "ds_shape", p.shape)) >= 2

    blocks, weight_flops, adapter_flops = set(), 0.0, 0.0
    for index, block in enumerate(decoder_blocks(model)):
        for name, param in block.named_parameters():
            if param.requires_grad:
                blocks.add(index)
                if is_matrix(param):
                    weight_flops += 2.0 * numel(param)
                    adapter_flops += 2.0 * numel(param) if "lora_" in name else 0.0
    head = model.get_output_embeddings()
    head_rows = 0
    if head is not None and any(p.requires_grad for p in head.parameters()):
        head_rows = int(split.new_ids.numel()) if split is not None else shape.vocab
    embeddings = any(p.requires_grad for p in model.get_input_embeddings().parameters())
    return GradPlan(embeddings, head_rows, frozenset(blocks), weight_flops, adapter_flops)


def _reference_shape(cfg: TrainConfig) -> ModelShape | None:
    """The KL anchor's reference model: one more forward pass per token."""
    if cfg.anchor.weight == 0:
        return None
    from transformers import AutoConfig

    from lingraft.train.anchor import reference_path
    return ModelShape.from_hf_config(AutoConfig.from_pretrained(reference_path(cfg)))


def _flops_per_token(cfg: TrainConfig, shape: ModelShape, plan: GradPlan, reference: ModelShape | None,
                     micro: list[dict[str, torch.Tensor]]) -> float:
    if cfg.doc_mask:
        attended = sum(attended_keys_per_token(b["position_ids"]) for b in micro) / len(micro)
    else:
        attended = (micro[0]["input_ids"].shape[1] + 1) / 2
    reference_flops = reference.forward_flops(attended) if reference is not None else 0.0
    return training_flops_per_token(shape, plan, attended) + reference_flops


def _peak_memory_gib(runtime: Runtime) -> float:
    if runtime.device.type == "cuda":
        return torch.cuda.max_memory_allocated(runtime.device) / 2**30
    return peak_rss_bytes() / 2**30


def run_meta(cfg: TrainConfig, split, runtime: Runtime, model_config) -> dict:
    return {"base_model": str(Path(cfg.model).resolve()), "trainable": cfg.trainable, "backend": cfg.backend,
            "zero_stage": cfg.zero_stage,
            "precision": str(runtime.dtype).removeprefix("torch."),
            "tied": bool(getattr(model_config, "tie_word_embeddings", False)),
            "vocab_size": int(split.vocab_size) if split is not None else None,
            "new_token_ids": split.new_ids.tolist() if split is not None else None,
            "lora": to_dict(cfg.lora) if cfg.trainable == "lora" else None}


def train(cfg: TrainConfig, source_factory: SourceFactory = _default_source) -> Path:
    """Run (or resume) training; returns the final checkpoint folder."""
    dist = init_distributed(cfg.launch.dist_timeout_s, use_cuda=cfg.device != "cpu" and torch.cuda.is_available(),
                            engine=cfg.backend, port=cfg.launch.master_port)
    if cfg.backend == "fsdp" and not torch.distributed.is_initialized():
        raise LingraftError("backend=fsdp needs a process group: start it with torchrun (or mpirun/srun), "
                            "or use `lingraft train`, which does")
    runtime = resolve_runtime(cfg, dist.local_rank)
    torch.manual_seed(cfg.seed)
    out_dir = Path(cfg.out_dir)
    prepare_root(out_dir, dist)

    from transformers import AutoConfig
    model_config = AutoConfig.from_pretrained(cfg.model)
    if source_factory is _default_source:     # in-memory sources (tests) carry no manifest
        check_data_matches_model(Path(cfg.data), Path(cfg.model), model_config.vocab_size)

    # The distillation teacher's tokenisation; a missing teacher or tokenizer fails here, before the model loads.
    teacher_tokens = teacher_inputs(cfg)
    model, split = build_model(cfg, runtime)
    backend = build_backend(cfg, model, runtime, dist)
    stream = BatchStream(source_factory(cfg, dist), cfg.micro_batch_size, runtime.device, extend=teacher_tokens,
                         copy_rows=cfg.copy_rows)

    meta = run_meta(cfg, split, runtime, model_config)
    step, last_good = 0, None
    ckpt = latest_checkpoint(out_dir) if cfg.checkpoint.resume else None
    if ckpt is not None:
        state = load_trainer_state(ckpt, dist)
        check_resumable(ckpt, state["meta"], meta)
        backend.load(ckpt / "engine")
        stream.load_state_dict(state["data"])
        step, last_good = state["step"], ckpt
        log.info("resumed from %s (step %d)", ckpt, step)

    shape = ModelShape.from_hf_config(model_config)
    plan, reference = _grad_plan(backend.model, shape, split), _reference_shape(cfg)
    peak = peak_flops_per_device(cfg.log.peak_tflops)
    metrics = MetricsLogger(out_dir, cfg.log, dist.is_main, step, to_dict(cfg))

    def checkpoint(at: int) -> Path:
        return save_checkpoint(out_dir, at, dist, backend.save,
                               {"step": at, "meta": meta, "data": stream.state_dict()}, cfg.checkpoint.keep_last)

    bar = progress(total=cfg.max_steps, initial=step, desc="train", unit="step")
    try:
        while step < cfg.max_steps:
            start = time.perf_counter()
            micro = [stream.next_micro_batch() for _ in range(cfg.grad_accum_steps)]
            try:
                result = backend.train_step(micro)
            except NonFiniteLoss as exc:
                where = last_good or "none (no checkpoint was written yet)"
                raise LingraftError(f"step {step + 1}: {exc}; the step was not applied and the run stops. "
                                    f"Last good checkpoint: {where}") from None
            step += 1
            elapsed = time.perf_counter() - start
            tokens = sum(int(b["input_ids"].numel()) for b in micro)        # this rank
            tokens_per_s = tokens * dist.world_size / elapsed
            if step % cfg.log.every_steps == 0 or step == cfg.max_steps:
                # Built on logged steps only: the attended-keys mean reads position ids back from the device.
                row = {"step": step, "loss": result.loss, "lr": result.lr, "grad_norm": result.grad_norm,
                       "tokens_per_s": tokens_per_s, "step_time_s": elapsed,
                       "peak_mem_gib": _peak_memory_gib(runtime), **result.metrics}
                utilisation = mfu(tokens / elapsed, _flops_per_token(cfg, shape, plan, reference, micro), peak)
                if utilisation is not None:
                    row["mfu"] = utilisation
                metrics.log_step(row)
            bar.update(1)
            bar.set_postfix(loss=f"{result.loss:.4f}", tok_s=f"{tokens_per_s:.0f}")
            if step % cfg.checkpoint.every_steps == 0 or step == cfg.max_steps:
                last_good = checkpoint(step)
    finally:
        bar.close()
        plot = metrics.close()
    opt_bytes = per_rank(backend.optimizer_state_bytes(), dist, runtime.device)   # a collective: every rank
    if dist.is_main:
        _write_manifest(cfg, out_dir, last_good, plot, opt_bytes)
    return last_good


def per_rank(value: float, dist: DistInfo, device: torch.device) -> list[float]:
    """Every rank's `value`, in rank order, on every rank (one all-reduce of a one-hot vector)."""
    values = [0.0] * dist.world_size
    values[dist.rank] = float(value)
    return all_reduce_sum(values, device)


def _write_manifest(cfg: TrainConfig, out_dir: Path, final: Path, plot: Path | None,
                    opt_bytes: list[float]) -> None:
    from lingraft.manifest import new_manifest
    from lingraft.train.metrics_log import read_metrics
    rows = read_metrics(out_dir)
    manifest = new_manifest("train", cfg)
    manifest.inputs = {"model": {"path": str(cfg.model)}, "data": {"path": str(cfg.data)}}
    manifest.outputs = {"final_checkpoint": str(final), "loss_plot": str(plot) if plot else None}
    manifest.metrics = {"steps": len(rows), "final_loss": rows[-1]["loss"] if rows else None,
                        "optimizer_state_bytes_per_rank": [int(b) for b in opt_bytes]}
    manifest.write(out_dir)
