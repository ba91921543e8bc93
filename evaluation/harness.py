"""`lingraft eval harness`: lm-evaluation-harness on a model the stack wrote.

Every model lingraft writes is a plain Hugging Face folder (config.json, safetensors shards,
tokenizer files with the chat template), so it runs unchanged under
    lm_eval --model hf --model_args pretrained=DIR --tasks ...
This runner builds that command line and runs it when `lm_eval` is installed; lingraft does
not depend on the harness, so without it the command says how to install it.
"""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

from lingraft.evaluation.config import HarnessConfig
from lingraft.errors import LingraftError
from lingraft.log import get_logger

log = get_logger(__name__)


def harness_command(cfg: HarnessConfig) -> list[str]:
    folder = Path(cfg.model)
    if not (folder / "config.json").is_file():
        raise LingraftError(f"{folder}: not a Hugging Face model folder (no config.json)")
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf",
           "--model_args", f"pretrained={folder},tokenizer={folder}",
           "--tasks", ",".join(cfg.tasks), "--batch_size", cfg.batch_size, "--device", cfg.device,
           "--output_path", str(cfg.out)]
    if cfg.num_fewshot is not None:
        cmd += ["--num_fewshot", str(cfg.num_fewshot)]
    if cfg.limit is not None:
        cmd += ["--limit", str(cfg.limit)]
    return cmd + list(cfg.extra)


def harness_installed() -> bool:
    return importlib.util.find_spec("lm_eval") is not None or shutil.which("lm_eval") is not None


def run_harness(cfg: HarnessConfig) -> int:
    cmd = harness_command(cfg)
    if not harness_installed():
        raise LingraftError("lm-evaluation-harness is not installed (pip install lm-eval); the command would be: "
                            + " ".join(["lm_eval", *cmd[3:]]))
    log.info("running %s", " ".join(cmd))
    code = subprocess.run(cmd).returncode
    if code != 0:
        raise LingraftError(f"lm_eval exited with status {code}")
    return code
