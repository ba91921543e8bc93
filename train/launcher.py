"""`lingraft train`: check everything that can be checked, then start the right launcher.

Config, model, data, hostfile and DeepSpeed-template problems are reported here, in the
parent process, before any rank exists. The resolved config is written to
``<out_dir>/train_config.yaml`` and every launcher runs the module `lingraft.train.entry` on
it. Launchers are started as modules of this same interpreter (``python -m
torch.distributed.run``, ``python -m deepspeed.launcher.runner``), and they start the ranks
with it too, so nothing needs the virtual environment's ``bin/`` on PATH; only Open MPI's
``mpirun`` is a program of its own.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from lingraft.atomic import atomic_open
from lingraft.config import to_dict
from lingraft.errors import LingraftError
from lingraft.log import get_logger
from lingraft.train.config import TrainConfig

log = get_logger(__name__)

ENTRY_MODULE = "lingraft.train.entry"
# launcher -> (the module that runs it, the package that must be installed for it)
LAUNCHER_MODULES = {"deepspeed": ("deepspeed.launcher.runner", "deepspeed"),
                    "torchrun": ("torch.distributed.run", "torch")}


def read_hostfile(path: Path) -> list[tuple[str, int]]:
    """DeepSpeed hostfile lines ``host slots=N``; a malformed or empty file is an error."""
    if not path.is_file():
        raise LingraftError(f"launch.hostfile: {path} not found")
    hosts = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].startswith("slots=") or not parts[1][6:].isdigit() or int(parts[1][6:]) < 1:
            raise LingraftError(f"{path}:{number}: expected 'HOST slots=N', got {line!r}")
        hosts.append((parts[0], int(parts[1][6:])))
    if not hosts:
        raise LingraftError(f"launch.hostfile: {path} lists no hosts")
    return hosts


def world_size(cfg: TrainConfig) -> int:
    if cfg.launch.hostfile is not None:
        return sum(slots for _, slots in read_hostfile(cfg.launch.hostfile))
    return cfg.launch.nproc_per_node


def preflight(cfg: TrainConfig) -> None:
    from transformers import AutoConfig

    from lingraft.train.capacity import check_strategy_fits
    from lingraft.train.data import check_data_matches_model
    from lingraft.train.ds_config import fill_ds_config
    if not (Path(cfg.model) / "config.json").is_file():
        raise LingraftError(f"model: {cfg.model} is not a Hugging Face folder (no config.json)")
    model_config = AutoConfig.from_pretrained(cfg.model)
    check_data_matches_model(Path(cfg.data), Path(cfg.model), model_config.vocab_size)
    world = world_size(cfg)
    if cfg.backend == "deepspeed":
        fill_ds_config(cfg, world, bf16=False, hidden_size=model_config.hidden_size)
    check_strategy_fits(cfg, world)
    from lingraft.train.distill import teacher_inputs
    teacher_inputs(cfg)          # distillation: the teacher and both tokenizers load (no-op without it)


def launcher_for(cfg: TrainConfig) -> str:
    if cfg.launch.launcher != "auto":
        return cfg.launch.launcher
    return {"local": "none", "deepspeed": "deepspeed", "fsdp": "torchrun"}[cfg.backend]


def command(cfg: TrainConfig, config_file: Path) -> list[str]:
    entry = ["--config", str(config_file)]
    lc = cfg.launch
    kind = launcher_for(cfg)
    if kind == "none":
        return [sys.executable, "-m", ENTRY_MODULE, *entry]
    if kind == "deepspeed":
        cmd = [sys.executable, "-m", LAUNCHER_MODULES["deepspeed"][0], "--master_port", str(lc.master_port)]
        if lc.hostfile is not None:
            cmd += ["--hostfile", str(lc.hostfile), "--launcher", lc.ds_launcher]
        else:
            cmd += ["--num_gpus", str(lc.nproc_per_node)]
        if lc.master_addr:
            cmd += ["--master_addr", lc.master_addr]
        return [*cmd, "--module", ENTRY_MODULE, *entry]
    if kind == "torchrun":
        if lc.hostfile is not None:
            raise LingraftError("launch.hostfile: torchrun starts one node; use launch/slurm_torchrun.sbatch")
        return [sys.executable, "-m", LAUNCHER_MODULES["torchrun"][0], "--standalone",
                "--nproc_per_node", str(lc.nproc_per_node), "-m", ENTRY_MODULE, *entry]
    hosts = ["--hostfile", str(lc.hostfile)] if lc.hostfile else []
    # Open MPI refuses to start as root unless told; containers usually run as root.
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    return ["mpirun", *root, "-np", str(world_size(cfg)), *hosts, sys.executable, "-m", ENTRY_MODULE, *entry]


def check_launcher(cfg: TrainConfig) -> None:
    """The launcher's package is installed in this interpreter (or, for mpirun, the program is on PATH)."""
    kind = launcher_for(cfg)
    if kind in LAUNCHER_MODULES:
        package = LAUNCHER_MODULES[kind][1]
        if importlib.util.find_spec(package) is None:   # a submodule's spec would import the package
            raise LingraftError(f"launch.launcher: {kind} needs the {package!r} package, which is not installed "
                                f"in {sys.executable} (pip install {package})")
    elif kind == "mpirun" and shutil.which("mpirun") is None:
        raise LingraftError("launch.launcher: mpirun is not on PATH (install Open MPI, or load its module)")


def run(cfg: TrainConfig) -> None:
    preflight(cfg)
    check_launcher(cfg)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_file = out_dir / "train_config.yaml"
    with atomic_open(config_file) as fh:
        yaml.safe_dump(to_dict(cfg), fh, sort_keys=False)
    cmd = command(cfg, config_file)
    env = {**os.environ, "LINGRAFT_DIST_TIMEOUT_S": str(cfg.launch.dist_timeout_s)}
    if cfg.device == "cpu" or launcher_for(cfg) == "deepspeed" and not _has_cuda():
        env.setdefault("DS_ACCELERATOR", "cpu")
    log.info("launching: %s", " ".join(cmd))
    code = subprocess.call(cmd, env=env)
    if code != 0:
        raise LingraftError(f"training exited with status {code} (see the log above)")


def _has_cuda() -> bool:
    import torch
    return torch.cuda.is_available()
