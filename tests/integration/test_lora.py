"""trainable=lora: what trains, exact resume, export (merged folder + peft adapter), DeepSpeed wrapping order."""
from __future__ import annotations

import shutil

import pytest
import torch

from lingraft.errors import LingraftError
from tests.integration.train_tiny import in_memory_source, make_tiny_llama, packed_samples, tiny_config
from lingraft.train.trainer_checkpoint import LATEST, checkpoint_root, latest_checkpoint
from lingraft.train.loop import train
from lingraft.train.model_setup import build_model, resolve_runtime

LORA = {"trainable": "lora", "lora.r": 4, "lora.target_modules": ["q_proj", "v_proj", "down_proj"]}


def _trainable(cfg) -> set[str]:
    model, _ = build_model(cfg, resolve_runtime(cfg))
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_only_adapters_of_the_chosen_blocks_train(tmp_path):
    model_dir = make_tiny_llama(tmp_path / "m", tied=True)
    names = _trainable(tiny_config(model_dir, tmp_path / "o", **LORA, **{"lora.layers": [-1]}))
    expected = {f"model.layers.1.{mod}.lora_{ab}.default.weight"
                for mod in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj") for ab in "AB"}
    assert names == expected
    with_tables = _trainable(tiny_config(model_dir, tmp_path / "o", **LORA, **{"lora.train_tables": True}))
    assert "model.embed_tokens.weight" in with_tables            # tied: the head is the same tensor
    assert {n for n in with_tables if ".lora_" in n} == expected | {n.replace("layers.1", "layers.0") for n in expected}

    with pytest.raises(LingraftError, match="lora.layers: block 2 does not exist"):
        _trainable(tiny_config(model_dir, tmp_path / "o", **LORA, **{"lora.layers": [0, 2]}))
    with pytest.raises(LingraftError, match="lora.target_modules: .*qq_proj"):
        _trainable(tiny_config(model_dir, tmp_path / "o", **{**LORA, "lora.target_modules": ["qq_proj"]}))


def _engine_state(ckpt):
    return torch.load(ckpt / "engine" / "state.pt", weights_only=True)


def test_lora_resume_is_exact_and_export_merges_what_the_adapter_computes(tmp_path, run_cli):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    model_dir = make_tiny_llama(tmp_path / "m", tied=True)
    overrides = {**LORA, "lora.train_tables": True, "max_steps": 6, "checkpoint.keep_last": 3}
    final = train(tiny_config(model_dir, tmp_path / "ref", **overrides), in_memory_source)

    # A second run that starts from the reference run's step-3 checkpoint, as after a crash.
    ckpt = checkpoint_root(tmp_path / "ref") / "step_00000003"
    resumed_root = checkpoint_root(tmp_path / "resumed")
    shutil.copytree(ckpt, resumed_root / ckpt.name)
    (resumed_root / LATEST).write_text(ckpt.name + "\n")
    resumed = train(tiny_config(model_dir, tmp_path / "resumed", **overrides), in_memory_source)
    ref_state, res_state = _engine_state(final)["trainable"], _engine_state(resumed)["trainable"]
    assert ref_state.keys() == res_state.keys() and any(".lora_" in k for k in ref_state)
    assert all(torch.equal(ref_state[k], res_state[k]) for k in ref_state)     # bit-exact on CPU fp32

    code, _, err = run_cli("export", "--checkpoint", tmp_path / "ref", "--out", tmp_path / "hf")
    assert code == 0, err
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert (tmp_path / "hf" / "adapter" / "adapter_model.safetensors").is_file()
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    batch = packed_samples(1)[0]["input_ids"][None]
    with torch.no_grad():
        base_logits = base(batch).logits
        adapted = PeftModel.from_pretrained(base, tmp_path / "hf" / "adapter")(batch).logits
        merged_logits = merged(batch).logits
    assert not torch.allclose(base_logits, merged_logits, atol=1e-3)          # training changed the model
    torch.testing.assert_close(merged_logits, adapted, atol=1e-4, rtol=1e-4)   # merge == adapter on base
    assert latest_checkpoint(tmp_path / "ref") == final


def test_deepspeed_gets_the_model_with_adapters_already_injected(tmp_path, monkeypatch):
    """ZeRO builds its flat buffers from requires_grad at initialize: LoRA must be in place by then."""
    import deepspeed

    from lingraft.train.backends import build_backend
    from lingraft.train.dist import DistInfo
    seen = {}

    class Stop(Exception):
        pass

    def fake_initialize(model, optimizer, **kwargs):
        seen["trainable"] = {n for n, p in model.named_parameters() if p.requires_grad}
        seen["optimized"] = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
        raise Stop

    monkeypatch.setattr(deepspeed, "initialize", fake_initialize)
    cfg = tiny_config(make_tiny_llama(tmp_path / "m"), tmp_path / "o", backend="deepspeed", device="cpu", **LORA)
    runtime = resolve_runtime(cfg)
    model, _ = build_model(cfg, runtime)
    with pytest.raises(Stop):
        build_backend(cfg, model, runtime, DistInfo(rank=0, world_size=1, local_rank=0))
    assert seen["trainable"] and all(".lora_" in n for n in seen["trainable"])
    assert seen["optimized"] == sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
