"""Load any tokenizer a user is likely to hold as a transformers *fast* tokenizer.

Accepted specs:
  * a Hugging Face tokenizer folder (tokenizer.json / tokenizer_config.json) or hub id; a folder's
    tokenizer.json is used exactly as written (see `_from_pretrained`);
  * a `tokenizer.json` file, optionally `.xz`-compressed (decompressed in memory);
  * a SentencePiece `.model` file (BPE or Unigram), or a folder holding exactly one;
  * GPT-2 style `encoder.json` + `vocab.bpe`: their folder, either file, or "enc.json,vocab.bpe".

SentencePiece models are converted from their protobuf so that the fast tokenizer
encodes exactly like `sentencepiece` does: byte fallback, the `<unk>` piece, the
precompiled normalisation charsmap, the dummy prefix and whitespace collapsing all come
from the model file instead of from model-family defaults. One known difference remains,
shared with Hugging Face's own Llama/Mistral conversions: sentencepiece splits text into
words before merging, the converted pipeline does not, so inside runs of several spaces the
two can pick different (equally long) pieces.
"""
from __future__ import annotations

import functools
import json
import lzma
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lingraft.atomic import atomic_dir
from lingraft.errors import LingraftError
from lingraft.hashing import sha256_text

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

TokenizerKind = Literal["byte_level_bpe", "sentencepiece_bpe", "bpe", "unigram", "byte_level_unigram",
                        "wordpiece", "wordlevel"]

_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
_SPM_BPE, _SPM_UNIGRAM = 2, 1     # sentencepiece ModelProto.TrainerSpec.ModelType values


def load_tokenizer(spec: str | Path, trust_remote_code: bool = False) -> "PreTrainedTokenizerFast":
    """A fast tokenizer from a folder, hub id, tokenizer.json(.xz), SentencePiece .model or GPT-2 files."""
    text = str(spec)
    if "," in text and not Path(text).exists():
        parts = [Path(p.strip()) for p in text.split(",")]
        return _finish(_from_gpt2_pair(parts, text), text)
    path = Path(text)
    if path.is_dir():
        tok = _from_folder(path, trust_remote_code)
    elif path.is_file():
        tok = _from_file(path, trust_remote_code)
    elif _HUB_ID.match(text) and not path.suffix and not text.startswith("."):
        tok = _from_pretrained(text, trust_remote_code)
    else:
        raise LingraftError(f"{text}: no such tokenizer file or folder")
    return _finish(tok, text)


def _finish(tok: Any, spec: str) -> "PreTrainedTokenizerFast":
    if not getattr(tok, "is_fast", False):
        raise LingraftError(f"{spec}: loaded a slow tokenizer ({type(tok).__name__}); lingraft needs a fast one")
    return tok


def _from_folder(folder: Path, trust_remote_code: bool) -> "PreTrainedTokenizerFast":
    if (folder / "tokenizer.json").is_file():
        return _from_pretrained(str(folder), trust_remote_code, exact=True)
    if (folder / "tokenizer_config.json").is_file():
        return _from_pretrained(str(folder), trust_remote_code)
    if (folder / "tokenizer.json.xz").is_file():
        return _from_tokenizer_json(folder / "tokenizer.json.xz")
    if (folder / "encoder.json").is_file() and (folder / "vocab.bpe").is_file():
        return _from_gpt2_pair([folder / "encoder.json", folder / "vocab.bpe"], str(folder))
    models = sorted(folder.glob("*.model"))
    if len(models) == 1:
        return _from_sentencepiece(models[0])
    if len(models) > 1:
        names = ", ".join(m.name for m in models)
        raise LingraftError(f"{folder}: holds several .model files ({names}); name one of them")
    raise LingraftError(f"{folder}: no tokenizer.json, tokenizer_config.json, tokenizer.json.xz, "
                        f"encoder.json+vocab.bpe or SentencePiece .model found")


def _from_file(path: Path, trust_remote_code: bool) -> "PreTrainedTokenizerFast":
    name = path.name
    if name == "encoder.json" or path.suffix == ".bpe":
        sibling = path.with_name("vocab.bpe" if name == "encoder.json" else "encoder.json")
        return _from_gpt2_pair(sorted([path, sibling], key=lambda p: p.suffix != ".json"), str(path))
    if name.endswith(".json") or name.endswith(".json.xz"):
        config = path.parent / "tokenizer_config.json"
        if name == "tokenizer.json" and config.is_file():
            # The folder's config adds the special-token names and the chat template.
            return _from_pretrained(str(path.parent), trust_remote_code, exact=True)
        return _from_tokenizer_json(path)
    if path.suffix == ".model":
        return _from_sentencepiece(path)
    raise LingraftError(f"{path}: unsupported tokenizer format (expected a folder, tokenizer.json[.xz], "
                        f"a SentencePiece .model, or GPT-2 encoder.json + vocab.bpe)")


def _from_pretrained(name: str, trust_remote_code: bool, exact: bool = False) -> "PreTrainedTokenizerFast":
    """`exact`: the folder has a tokenizer.json, which is used verbatim. transformers' model classes
    (LlamaTokenizer...) rebuild the pipeline from their own defaults instead, which can differ
    from the file (and does for HF Llama-2 conversions: normalizer vs Metaspace prefixing)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    try:
        if exact:
            return PreTrainedTokenizerFast.from_pretrained(name)
        return AutoTokenizer.from_pretrained(name, use_fast=True, trust_remote_code=trust_remote_code)
    except Exception as exc:  # transformers raises OSError, ValueError, EnvironmentError... for bad input
        raise LingraftError(f"{name}: cannot load tokenizer ({type(exc).__name__}: {_first_line(exc)})") from None


def _from_tokenizer_json(path: Path) -> "PreTrainedTokenizerFast":
    from transformers import PreTrainedTokenizerFast

    # Built from a file, not from a `tokenizers.Tokenizer` object: transformers deep-copies an
    # object it is given, which for a 128k vocabulary costs as much as parsing the JSON again.
    def from_file(file: Path) -> "PreTrainedTokenizerFast":
        return PreTrainedTokenizerFast(tokenizer_file=str(file))

    try:
        if path.name.endswith(".xz"):
            with lzma.open(path, "rt", encoding="utf-8") as fh, \
                    tempfile.NamedTemporaryFile("w", suffix=".json", encoding="utf-8") as plain:
                plain.write(fh.read())
                plain.flush()
                tok = from_file(Path(plain.name))
        else:
            tok = from_file(path)
    except Exception as exc:  # I/O, xz, UTF-8 and JSON-schema errors all mean the same to the user
        raise LingraftError(f"{path}: not a readable tokenizers JSON ({type(exc).__name__}: {_first_line(exc)})") \
            from None
    for name, token in _template_bos(tok.backend_tokenizer).items():
        setattr(tok, name, token)
    return tok


def _template_bos(backend: Any) -> dict[str, str]:
    """The BOS token a bare tokenizer.json declares through its post-processor template, if any.

    A bare JSON has no tokenizer_config.json naming its special tokens, but a template that
    starts every sequence with a special token (Llama-3's <|begin_of_text|>) says which it is.
    """
    if backend.post_processor is None:
        return {}
    proc = json.loads(backend.post_processor.__getstate__())
    procs = proc.get("processors", [proc]) if proc.get("type") == "Sequence" else [proc]
    for p in procs:
        if p.get("type") == "TemplateProcessing" and p.get("single"):
            first = p["single"][0]
            if "SpecialToken" in first:
                return {"bos_token": first["SpecialToken"]["id"]}
    return {}


def _from_gpt2_pair(paths: list[Path], spec: str) -> "PreTrainedTokenizerFast":
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    encoder = next((p for p in paths if p.suffix == ".json"), None)
    merges = next((p for p in paths if p.suffix == ".bpe"), None)
    if len(paths) != 2 or encoder is None or merges is None:
        raise LingraftError(f"{spec}: a GPT-2 tokenizer needs one encoder .json and one .bpe merges file")
    for p in (encoder, merges):
        if not p.is_file():
            raise LingraftError(f"{p}: no such file (needed for the GPT-2 tokenizer {spec})")
    try:
        model = models.BPE.from_file(str(encoder), str(merges))
    except Exception as exc:
        raise LingraftError(f"{spec}: cannot read GPT-2 encoder/merges ({_first_line(exc)})") from None
    backend = Tokenizer(model)
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    vocab = model.get_vocab() if hasattr(model, "get_vocab") else backend.get_vocab()
    eot = "<|endoftext|>"
    special = {"bos_token": eot, "eos_token": eot, "unk_token": eot} if eot in vocab else {}
    return PreTrainedTokenizerFast(tokenizer_object=backend, **special)


def _from_sentencepiece(path: Path) -> "PreTrainedTokenizerFast":
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers
    from tokenizers.models import BPE, Unigram
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SentencePieceExtractor
    try:
        extractor = SentencePieceExtractor(str(path))
    except Exception as exc:
        raise LingraftError(f"{path}: not a SentencePiece model ({type(exc).__name__}: {_first_line(exc)}); "
                            f"a tiktoken rank file needs its tokenizer.json instead") from None
    proto = extractor.proto
    ts, ns = proto.trainer_spec, proto.normalizer_spec
    if ts.model_type == _SPM_BPE:
        extracted = extractor.extract(BPE)
        model = BPE(extracted["vocab"], extracted["merges"], unk_token=ts.unk_piece, fuse_unk=True,
                    byte_fallback=ts.byte_fallback, dropout=None)
    elif ts.model_type == _SPM_UNIGRAM:
        model = Unigram([(p.piece, p.score) for p in proto.pieces], unk_id=ts.unk_id, byte_fallback=ts.byte_fallback)
    else:
        raise LingraftError(f"{path}: SentencePiece model type {ts.model_type} is not supported (only BPE and Unigram)")
    backend = Tokenizer(model)
    # The dummy-prefix "▁" is prepended by a normalizer, not by Metaspace(prepend_scheme="first"):
    # Metaspace skips the prefix when the text already starts with "▁" or when leading
    # whitespace was stripped, where sentencepiece still adds it.
    steps = [normalizers.Precompiled(ns.precompiled_charsmap)] if ns.precompiled_charsmap else []
    if ns.remove_extra_whitespaces:
        steps += [normalizers.Strip(left=True, right=True), normalizers.Replace(Regex(" {2,}"), " ")]
    if ns.add_dummy_prefix:
        steps.append(normalizers.Prepend("▁"))
    steps.append(normalizers.Replace(" ", "▁"))
    backend.normalizer = normalizers.Sequence(steps)
    decode = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if ns.add_dummy_prefix:
        decode.append(decoders.Strip(content=" ", left=1, right=0))
    backend.decoder = decoders.Sequence(decode)
    # Control pieces (type 3) are special tokens; user-defined pieces (type 4) are matched verbatim.
    backend.add_tokens([AddedToken(p.piece, normalized=False, special=p.type == 3)
                        for p in proto.pieces if p.type in (3, 4)])
    special = {name: proto.pieces[idx].piece for name, idx in
               (("unk_token", ts.unk_id), ("bos_token", ts.bos_id), ("eos_token", ts.eos_id), ("pad_token", ts.pad_id))
               if 0 <= idx < len(proto.pieces)}
    # Llama/Mistral-style models prepend BOS when encoding; their HF configs say add_bos_token=True.
    return PreTrainedTokenizerFast(tokenizer_object=backend, add_bos_token="bos_token" in special, **special)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]


@functools.cache
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table, used by every byte-level BPE."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@functools.cache
def unicode_to_byte() -> dict[str, int]:
    return {c: b for b, c in byte_to_unicode().items()}


def backend_json(tok: "PreTrainedTokenizerFast | dict[str, Any]") -> dict[str, Any]:
    """The parsed `tokenizers` JSON of a fast tokenizer (a dict is passed through, so callers that
    need several facts about a large tokenizer parse its JSON once)."""
    if isinstance(tok, dict):
        return tok
    return json.loads(tok.backend_tokenizer.to_str())


def tokenizer_fingerprint(tok: "PreTrainedTokenizerFast | dict[str, Any]") -> str:
    """sha256 of the canonical backend JSON: model, normalizer, pre-tokenizer, post-processor, decoder
    and added tokens. Truncation and padding are runtime settings, so they are left out."""
    data = dict(backend_json(tok))
    data.pop("truncation", None)
    data.pop("padding", None)
    return sha256_text(json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":")))


def pipeline_components(node: Any) -> list[dict[str, Any]]:
    """Every component (a dict with a `type`) of a pipeline part, looking inside Sequences."""
    if isinstance(node, list):
        return [c for item in node for c in pipeline_components(item)]
    if not isinstance(node, dict):
        return []
    nested = [c for value in node.values() if isinstance(value, (list, dict)) for c in pipeline_components(value)]
    return ([node] if "type" in node else []) + nested


def _component_types(node: Any) -> set[str]:
    return {c["type"] for c in pipeline_components(node)}


def _uses_metaspace(data: dict[str, Any]) -> bool:
    if "Metaspace" in _component_types(data.get("pre_tokenizer")):
        return True
    # Older SentencePiece conversions put Prepend/Replace(" " -> "▁") in the normalizer instead.
    return "▁" in json.dumps(data.get("normalizer"), ensure_ascii=False)


def tokenizer_kind(tok: "PreTrainedTokenizerFast | dict[str, Any]") -> TokenizerKind:
    """What kind of tokenizer this is, read from its pipeline (not from the class name)."""
    data = backend_json(tok)
    model_type = data["model"].get("type")
    byte_level = "ByteLevel" in _component_types(data.get("pre_tokenizer")) | _component_types(data.get("decoder"))
    if model_type == "BPE":
        if byte_level:
            return "byte_level_bpe"
        return "sentencepiece_bpe" if _uses_metaspace(data) or data["model"].get("byte_fallback") else "bpe"
    if model_type == "Unigram":
        return "byte_level_unigram" if byte_level else "unigram"
    if model_type == "WordPiece":
        return "wordpiece"
    if model_type == "WordLevel":
        return "wordlevel"
    raise LingraftError(f"unknown tokenizer model type {model_type!r}")


def has_byte_fallback(tok: "PreTrainedTokenizerFast | dict[str, Any]") -> bool:
    return bool(backend_json(tok)["model"].get("byte_fallback"))


def save_tokenizer(tok: "PreTrainedTokenizerFast", out_dir: str | Path) -> Path:
    """Write `tok` as a Hugging Face folder (tokenizer.json, config, chat template), atomically."""
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        tok.save_pretrained(str(tmp))
    return out
