"""Checkpoint I/O: resolve a model, check its safetensors shards, read its embedding tables,
and write a copy in which only those tables change.

The writer never materialises the model. Every tensor that is not replaced is copied as raw
bytes from its source shard (so it is bit-identical by construction) and only the replaced
tables are held in memory. Shards are re-cut to `max_shard_bytes`, an index is written when
there is more than one, and every shard's sha256 is recorded in the index so a later stage
can verify what it reads.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from lingraft.cache import cache_root
from lingraft.errors import LingraftError
from lingraft.hashing import sha256_file
from lingraft.log import get_logger
from lingraft.manifest import MANIFEST_NAME
from lingraft.paths import safe_join

if TYPE_CHECKING:
    import torch

log = get_logger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CHECKSUM_KEY = "shard_sha256"      # in the index's "metadata", and in a lingraft manifest's "outputs"
# Weights (safetensors, and pickles, which lingraft never loads), shard indexes and stage manifests:
# a stage writes its own, so `copy_model_files` leaves them behind.
NOT_MODEL_FILES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".index.json", MANIFEST_NAME)
_MAX_HEADER = 100 << 20            # the safetensors library's own limit
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
             "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")

# Embedding tensor names of common families; other architectures: ask the model class.
_EMBED_NAMES: dict[str, tuple[str, str]] = {
    **{t: ("model.embed_tokens.weight", "lm_head.weight") for t in (
        "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2",
        "phi3", "olmo", "olmo2", "granite", "stablelm", "starcoder2", "cohere")},
    "gpt2": ("transformer.wte.weight", "lm_head.weight"),
}


# -- locating a model --------------------------------------------------------------------------
def resolve_model(spec: str | Path) -> Path:
    """A local HF folder for `spec`: a folder, a .gguf file (converted once, cached) or a hub id."""
    path = Path(spec)
    if path.is_dir():
        return path
    if path.is_file():
        if path.suffix != ".gguf":
            raise LingraftError(f"{spec}: a model is a Hugging Face folder, a hub id or a .gguf file")
        stat = path.stat()
        key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
        target = cache_root() / "gguf" / f"{path.stem}-{key}"
        if not (target / "config.json").is_file():
            convert_gguf(path, target)
        return target
    if _HUB_ID.match(str(spec)):
        return _download(str(spec))
    raise LingraftError(f"{spec}: no such model folder or .gguf file")


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt",
                                                               "*.jinja", "*.tiktoken"]))
    except Exception as exc:  # offline, unknown repo, gated repo: all mean "cannot get it"
        raise LingraftError(f"{repo_id}: not a local path and cannot be fetched from the hub "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None


def convert_gguf(gguf_file: Path, out_dir: Path, max_shard_size: str = "2GB") -> Path:
    """De-quantise a GGUF model into a safetensors HF folder (with tokenizer), atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lingraft.atomic import atomic_dir
    gguf_file = Path(gguf_file)
    log.info("converting %s to safetensors (once; cached at %s)", gguf_file, out_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    except Exception as exc:
        raise LingraftError(f"{gguf_file}: cannot load GGUF ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:200]})") from None
    # The weights are de-quantised now; a leftover GGUF quantization_config would make
    # from_pretrained look for the .gguf file again.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp), max_shard_size=max_shard_size)
        tokenizer.save_pretrained(str(tmp))
    return Path(out_dir)


# -- reading -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str              # safetensors dtype code, e.g. "BF16"
    shape: tuple[int, ...]
    shard: Path
    offset: int             # absolute byte offset of the data in `shard`
    nbytes: int


@dataclass(frozen=True)
class Checkpoint:
    folder: Path
    config: dict[str, Any]
    shards: tuple[Path, ...]
    tensors: dict[str, TensorInfo]   # in shard order, then file order

    @property
    def largest_shard_bytes(self) -> int:
        return max(s.stat().st_size for s in self.shards)


@dataclass(frozen=True)
class EmbeddingNames:
    input: str
    output: str | None      # the LM head's tensor name in the checkpoint, None if it is not stored
    tied: bool
    head: str = ""          # the LM head's name in the architecture, stored or not (for untying)


def read_header(shard: Path) -> tuple[dict[str, Any], int]:
    """Parse a safetensors header: (tensor entries, byte offset where data starts)."""
    try:
        with open(shard, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            if length > _MAX_HEADER:
                raise LingraftError(f"{shard}: corrupt shard (header length {length} is implausible)")
            header = json.loads(fh.read(length))
    except FileNotFoundError:
        raise LingraftError(f"{shard}: missing shard") from None
    except struct.error:
        raise LingraftError(f"{shard}: corrupt shard (shorter than a safetensors header)") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise LingraftError(f"{shard}: corrupt shard (header is not JSON)") from None
    header.pop("__metadata__", None)
    return header, 8 + length


def _shard_tensors(shard: Path) -> list[TensorInfo]:
    header, start = read_header(shard)
    data_size = shard.stat().st_size - start
    infos, end_max = [], 0
    for name, entry in header.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise LingraftError(f"{shard}: corrupt shard (bad header entry for {name})") from None
        expected = ITEMSIZE.get(dtype, 0) * math.prod(shape)
        if dtype not in ITEMSIZE or end - begin != expected or begin < 0 or end > data_size:
            raise LingraftError(f"{shard}: corrupt shard ({name}: offsets {begin}..{end} do not fit "
                                f"{dtype}{list(shape)} in {data_size} data bytes)")
        end_max = max(end_max, end)
        infos.append(TensorInfo(name, dtype, shape, shard, start + begin, end - begin))
    if end_max != data_size:
        raise LingraftError(f"{shard}: corrupt shard (data is {data_size} bytes, tensors cover {end_max}; truncated?)")
    return sorted(infos, key=lambda t: t.offset)


def _expected_checksums(folder: Path, index: dict[str, Any] | None) -> dict[str, str]:
    if index and CHECKSUM_KEY in index.get("metadata", {}):
        return dict(index["metadata"][CHECKSUM_KEY])
    manifest = folder / "manifest.json"
    if manifest.is_file():
        try:
            return dict(json.loads(manifest.read_text()).get("outputs", {}).get(CHECKSUM_KEY, {}))
        except (json.JSONDecodeError, AttributeError):
            raise LingraftError(f"{manifest}: corrupt manifest") from None
    return {}


def open_checkpoint(folder: str | Path, verify_checksums: bool = True) -> Checkpoint:
    """Read config and shard headers, checking every shard's layout (and sha256 when recorded)."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise LingraftError(f"{folder}: no config.json (not a Hugging Face model folder)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise LingraftError(f"{config_path}: corrupt config (not JSON)") from None
    index = None
    if (folder / INDEX_FILE).is_file():
        try:
            index = json.loads((folder / INDEX_FILE).read_text(encoding="utf-8"))
            weight_map: dict[str, str] = index["weight_map"]
        except (json.JSONDecodeError, KeyError):
            raise LingraftError(f"{folder / INDEX_FILE}: corrupt index (no weight_map)") from None
        shard_names = list(dict.fromkeys(weight_map.values()))
    elif (folder / SINGLE_FILE).is_file():
        weight_map, shard_names = {}, [SINGLE_FILE]
    else:
        bins = sorted(p.name for p in folder.glob("*.bin"))
        hint = f" (found {bins[0]}; convert PyTorch .bin weights to safetensors first)" if bins else ""
        raise LingraftError(f"{folder}: no {SINGLE_FILE} or {INDEX_FILE}{hint}")
    checksums = _expected_checksums(folder, index) if verify_checksums else {}
    tensors: dict[str, TensorInfo] = {}
    shards = tuple(safe_join(folder, name, f"{folder / INDEX_FILE}: shard") for name in shard_names)
    for shard in shards:
        if not shard.is_file():
            raise LingraftError(f"{shard}: missing shard (listed in {INDEX_FILE})")
        for info in _shard_tensors(shard):
            tensors[info.name] = info
        if shard.name in checksums and sha256_file(shard) != checksums[shard.name]:
            raise LingraftError(f"{shard}: corrupt shard (sha256 differs from the recorded checksum)")
    for name, shard_name in weight_map.items():
        if name not in tensors or tensors[name].shard.name != shard_name:
            raise LingraftError(f"{folder / shard_name}: corrupt shard (index lists {name}, the shard lacks it)")
    return Checkpoint(folder=folder, config=config, shards=shards, tensors=tensors)


def embedding_names(ckpt: Checkpoint) -> EmbeddingNames:
    """The checkpoint's input-embedding and LM-head tensor names, and whether they are tied."""
    from transformers import AutoConfig
    try:
        config = AutoConfig.from_pretrained(str(ckpt.folder))
    except (ValueError, KeyError) as exc:
        raise LingraftError(f"{ckpt.folder}: unknown architecture model_type={ckpt.config.get('model_type')!r} "
                            f"({str(exc).splitlines()[0][:160]})") from None
    tied = bool(getattr(config, "tie_word_embeddings", False))
    model_type = ckpt.config.get("model_type")
    if model_type in _EMBED_NAMES:
        input_name, output_name = _EMBED_NAMES[model_type]
    else:
        input_name, output_name = _names_from_model_class(config, ckpt)
    if input_name not in ckpt.tensors:
        raise LingraftError(f"{ckpt.folder}: input embedding {input_name} not found in the checkpoint")
    if output_name not in ckpt.tensors and not tied:
        raise LingraftError(f"{ckpt.folder}: config says the LM head is untied but {output_name} is missing")
    declared_head = output_name
    output_name = output_name if output_name in ckpt.tensors else None
    for name in (input_name, output_name):
        bias = name and name.removesuffix(".weight") + ".bias"
        if bias and bias in ckpt.tensors:
            raise LingraftError(f"{ckpt.folder}: {bias} is vocabulary-sized and lingraft does not remap biases")
    return EmbeddingNames(input=input_name, output=output_name, tied=tied, head=declared_head)


def _names_from_model_class(config: Any, ckpt: Checkpoint) -> tuple[str, str]:
    """Ask the transformers class (built on the meta device, no memory) where its embeddings live."""
    import torch
    from transformers import AutoModelForCausalLM
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError) as exc:
        raise LingraftError(f"{ckpt.folder}: unknown architecture model_type={ckpt.config.get('model_type')!r} "
                            f"is not a causal LM ({str(exc).splitlines()[0][:160]})") from None
    module_names = {id(m): n for n, m in model.named_modules()}
    prefix = getattr(model, "base_model_prefix", "") + "."
    found = []
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        name = module_names[id(module)] + ".weight"
        # Some checkpoints store the base model's tensors without its prefix (GPT-2's "wte.weight").
        found.append(name if name in ckpt.tensors or name.removeprefix(prefix) not in ckpt.tensors
                     else name.removeprefix(prefix))
    if found[0] in ckpt.tensors and (found[1] in ckpt.tensors or config.tie_word_embeddings):
        return found[0], found[1]
    # transformers renames some tensors on load (GPT-NeoX's embed_out -> lm_head), so fall back to
    # shape: the vocabulary-sized tensor inside the base model is the input embedding, the one
    # outside it the head.
    vocab_sized = [n for n, t in ckpt.tensors.items() if len(t.shape) == 2 and t.shape[0] == config.vocab_size]
    inside = [n for n in vocab_sized if n.startswith(prefix)]
    outside = [n for n in vocab_sized if not n.startswith(prefix)]
    if len(inside) == 1 and len(outside) <= 1:
        return inside[0], outside[0] if outside else found[1]
    raise LingraftError(f"{ckpt.folder}: cannot tell the embedding tensors apart among {vocab_sized}")


def read_tensors(ckpt: Checkpoint, names: Iterable[str]) -> dict[str, "torch.Tensor"]:
    """Load just `names` (the embedding tables), each from its own shard."""
    from safetensors import safe_open
    out = {}
    for name in names:
        with safe_open(str(ckpt.tensors[name].shard), framework="pt") as fh:
            out[name] = fh.get_tensor(name)
    return out


_TORCH_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                 "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def storage_dtype(info: TensorInfo) -> "torch.dtype":
    """The torch dtype a tensor is stored in; an error for dtypes training cannot load."""
    import torch
    if info.dtype not in _TORCH_DTYPES:
        raise LingraftError(f"{info.shard}: {info.name} has dtype {info.dtype}, which cannot be loaded for training")
    return getattr(torch, _TORCH_DTYPES[info.dtype])


def read_flat_range(info: TensorInfo, start: int, stop: int, out: "torch.Tensor | None" = None) -> "torch.Tensor":
    """Elements [start, stop) of a tensor flattened in row-major order, read from its shard with
    plain file reads: no mmap of the shard, no byte outside the range (a rank's share of a
    tensor costs that rank only its share of memory). A 1-D tensor in the stored dtype, or
    `out` (contiguous, on the CPU, in the stored dtype) filled in place with no staging copy."""
    import torch
    dtype = storage_dtype(info)
    numel = info.nbytes // ITEMSIZE[info.dtype]
    if not 0 <= start <= stop <= numel:
        raise LingraftError(f"{info.shard}: {info.name} has {numel} elements, asked for [{start}, {stop})")
    if out is None:
        out = torch.empty(stop - start, dtype=dtype)
    elif out.dtype != dtype or out.numel() != stop - start or not out.is_contiguous() or out.device.type != "cpu":
        raise ValueError(f"read_flat_range: out must be a contiguous CPU {dtype} tensor of {stop - start} elements")
    if stop == start:
        return out
    view, done = memoryview(out.view(torch.uint8).numpy()).cast("B"), 0
    with open(info.shard, "rb", buffering=0) as fh:
        fh.seek(info.offset + start * ITEMSIZE[info.dtype])
        while done < len(view):
            got = fh.readinto(view[done:])
            if not got:
                raise LingraftError(f"{info.shard}: truncated while reading {info.name}")
            done += got
    return out


def copy_model_files(model: Path, dest: Path, keep: Iterable[str] = ()) -> list[str]:
    """Copy `model`'s top-level non-weight files (config, tokenizer, chat template) into `dest`,
    and the files named in `keep` (e.g. a token map) even though they end like weights. Hidden
    files and subfolders (an exported adapter) are not copied. Returns the names copied."""
    dest.mkdir(parents=True, exist_ok=True)
    keep = set(keep)
    copied = []
    for path in sorted(model.iterdir()):
        if path.is_file() and (path.name in keep or not (path.name.startswith(".")
                                                         or path.name.endswith(NOT_MODEL_FILES))):
            shutil.copy2(path, dest / path.name)
            copied.append(path.name)
    return copied
