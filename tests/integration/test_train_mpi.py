"""`lingraft train` with launch.launcher=mpirun: 2 ranks found through mpi4py, DeepSpeed ZeRO-2.

The whole user path in one launch: the launcher's preflight and command, `mpirun`,
launch/train.py, MPI rank discovery (no RANK/WORLD_SIZE from any launcher), ZeRO-2
training of the tables, and the export of a ZeRO-2 checkpoint (frozen weights bit-identical).
"""
from __future__ import annotations

import json
import shutil

import pytest
import yaml

from tests.integration.train_tiny import dist_run_config, export_and_compare, free_port, launch_env, losses, \
    make_tiny_llama, write_packed_folder

pytestmark = pytest.mark.slow


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="Open MPI's mpirun is not installed")
def test_mpirun_finds_ranks_through_mpi4py_and_trains_zero2(tmp_path, monkeypatch, capfd):
    from lingraft.cli import main as lingraft
    model = make_tiny_llama(tmp_path / "model")
    run = tmp_path / "run"
    cfg = dist_run_config(model, write_packed_folder(tmp_path / "data"), run, backend="deepspeed", zero_stage=2,
                          **{"launch.launcher": "mpirun", "launch.master_port": free_port()})
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    # 2 ranks on a 2-core (or smaller cgroup) machine: let Open MPI oversubscribe if it counts fewer slots.
    for key, value in launch_env(OMPI_MCA_rmaps_base_oversubscribe="1").items():
        monkeypatch.setenv(key, value)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)     # only MPI may tell the ranks who they are
    code = lingraft(["train", "--config", str(tmp_path / "cfg.yaml")])
    assert code == 0, capfd.readouterr().err[-4000:]

    ckpt = run / "checkpoints" / "step_00000004"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["meta"]["zero_stage"] == 2
    assert {p.name for p in ckpt.glob("data_rank*.json")} == {"data_rank0.json", "data_rank1.json"}
    assert len(list((ckpt / "engine" / "zero").glob("*optim_states.pt"))) == 2     # one optimizer shard per rank
    per_rank = json.loads((run / "manifest.json").read_text())["metrics"]["optimizer_state_bytes_per_rank"]
    single_rank = 2 * 4 * (2 * 96 * 64)          # AdamW's two fp32 moments of both tables on one rank
    assert len(per_rank) == 2 and all(0.45 * single_rank <= b <= 0.55 * single_rank for b in per_rank), per_rank
    steps = losses(run)
    assert [s for s, _ in steps] == [1, 2, 3, 4] and steps[-1][1] < steps[0][1] - 0.05, steps

    changed = export_and_compare(run, model, tmp_path / "hf")
    for key, value in changed.items():
        if isinstance(value, set):
            assert len(value) > 0.9 * 96, key                  # the tables trained
        else:
            assert not value, key                             # frozen weights came through bit-identical
