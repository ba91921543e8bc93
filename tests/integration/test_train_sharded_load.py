"""Loading without a full copy per rank, and the frozen body out of the way (2 CPU ranks).

tests/integration/load_check.py builds model and engine as training does, compares every gathered
parameter with `from_pretrained` bit for bit, counts the bytes each rank holds, and takes two
optimizer steps. One torchrun launch for FSDP2, one deepspeed launch for ZeRO-3:
- FSDP2, embeddings, bf16, placement=node: the frozen body is bf16 and each rank holds half
  of it (before: fp32 shards, twice the bytes); the tables are fp32, sharded;
- FSDP2, new_rows (tied), placement=replicate: the body is a whole copy per rank, outside
  FSDP; the split's old rows and new rows equal the checkpoint's;
- ZeRO-3, new_rows (tied): partitions read straight from the safetensors file;
- ZeRO-3, embeddings, bf16, placement=replicate: frozen parameters stay gathered after a step.
"""
from __future__ import annotations

import json

import pytest

from tests.integration.train_tiny import LOAD_CHECK, dist_run_config, free_port, make_tiny_llama, run_launcher, \
    write_configs

pytestmark = pytest.mark.slow

NEW_IDS = "10:20,70:96"
TABLES = ("model.embed_tokens.weight", "lm_head.weight")


def _ranks(out_dir) -> list[dict]:
    return [json.loads((out_dir / f"load_rank{r}.json").read_text()) for r in (0, 1)]


def _body_numel(model_dir) -> tuple[int, int]:
    """(frozen body elements, final-norm elements) of the tiny checkpoint."""
    from safetensors import safe_open
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as fh:
        shapes = {name: fh.get_slice(name).get_shape() for name in fh.keys()}
    numel = {name: int(torch_prod(shape)) for name, shape in shapes.items()}
    return sum(n for name, n in numel.items() if name not in TABLES), numel["model.norm.weight"]


def torch_prod(shape) -> int:
    out = 1
    for dim in shape:
        out *= dim
    return out


def _common_checks(ranks: list[dict]) -> None:
    for rank in ranks:
        assert rank["mismatched"] == [], rank["mismatched"]      # every value = from_pretrained's
        assert len(rank["losses"]) == 2 and all(0 < loss < 10 for loss in rank["losses"])


def test_fsdp_streams_shards_and_holds_a_bf16_frozen_body(tmp_path):
    untied, tied = make_tiny_llama(tmp_path / "untied"), make_tiny_llama(tmp_path / "tied", tied=True)
    configs = {
        "node": dist_run_config(untied, "unused", tmp_path / "node", backend="fsdp", trainable="embeddings",
                                precision="bf16"),
        "replicate": dist_run_config(tied, "unused", tmp_path / "replicate", backend="fsdp", trainable="new_rows",
                                     new_token_ids=NEW_IDS, **{"frozen_body.placement": "replicate"}),
    }
    run_launcher(["torchrun", "--standalone", "--nproc_per_node", "2", LOAD_CHECK,
                  *write_configs(tmp_path, configs)])
    body, norm = _body_numel(untied)

    node = _ranks(tmp_path / "node")
    _common_checks(node)
    for rank in node:
        assert {rank["dtypes"][t] for t in TABLES} == {"float32"}                 # the master copy
        assert {d for n, d in rank["dtypes"].items() if n not in TABLES} == {"bfloat16"}
        # Half the blocks in bf16, plus the replicated final norm (before: half the body in fp32).
        assert rank["held"]["frozen"] == (body - norm) * 2 // 2 + norm * 2
        assert rank["held"]["trainable"] == 2 * 96 * 64 * 4 // 2
        assert rank["held_after_steps"]["optimizer_state"] > 0

    replicate = _ranks(tmp_path / "replicate")
    _common_checks(replicate)
    new_rows = 10 + 26
    for rank in replicate:
        assert rank["held"]["frozen"] == body * 4 + (96 - new_rows) * 64 * 4     # whole body + old rows
        assert rank["held"]["trainable"] == new_rows * 64 * 4 // 2                 # tied: one table, sharded


def test_zero3_reads_partitions_and_persists_a_replicated_frozen_body(tmp_path):
    untied, tied = make_tiny_llama(tmp_path / "untied"), make_tiny_llama(tmp_path / "tied", tied=True)
    configs = {
        "zero3_new_rows": dist_run_config(tied, "unused", tmp_path / "zero3_new_rows", backend="deepspeed",
                                          zero_stage=3, trainable="new_rows", new_token_ids=NEW_IDS),
        "zero3_replicate": dist_run_config(untied, "unused", tmp_path / "zero3_replicate", backend="deepspeed",
                                           zero_stage=3, trainable="embeddings", precision="bf16",
                                           **{"frozen_body.placement": "replicate"}),
    }
    run_launcher(["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), LOAD_CHECK,
                  *write_configs(tmp_path, configs)])
    body, _ = _body_numel(untied)
    _common_checks(_ranks(tmp_path / "zero3_new_rows"))
    replicate = _ranks(tmp_path / "zero3_replicate")
    _common_checks(replicate)
    for rank in replicate:
        assert set(rank["dtypes"].values()) == {"bfloat16"}
        assert rank["held"]["frozen"] <= body * 2 // 2 + 64      # partitioned while loading
        assert rank["held_after_steps"]["frozen"] >= body * 2     # gathered in forward, never released
