"""Train BPE or Unigram tokenizers: from scratch, or with the pipeline of a base tokenizer.

A tokenizer is a *pipeline* (normalizer, pre-tokenizer, decoder, post-processor, special
and added tokens, chat template) around a *model* (the vocabulary). `like: base` keeps the
base's pipeline and learns a new model: the "full replacement" vocabularies of the LEP
paper, for byte-level BPE bases (Llama-3, GPT-2) and SentencePiece bases (Mistral) alike.

`vocab_size` is the size of the whole result: special tokens, byte-fallback pieces and the
base's non-special added tokens count toward it.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

from lingraft.atomic import atomic_dir
from lingraft.errors import LingraftError
from lingraft.log import get_logger
from lingraft.manifest import new_manifest
from lingraft.vocabulary.config import TrainTokenizerConfig
from lingraft.vocabulary.corpus import CorpusText
from lingraft.vocabulary.loading import (backend_json, load_tokenizer, pipeline_components, tokenizer_fingerprint,
                                tokenizer_kind)
from lingraft.vocabulary.token_rules import BaseRules, infer_rules, training_splits

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

log = get_logger(__name__)

SPACE = "▁"   # SentencePiece's visible space
BYTE_PIECES = [f"<0x{b:02X}>" for b in range(256)]
# Words for SentencePiece-style training: a run of spaces goes with the word after it, except its
# last space, which starts that word ("▁▁▁И" -> "▁▁", "▁И"), as sentencepiece itself splits.
SPM_WORD_REGEX = f"{SPACE}+(?={SPACE}[^{SPACE}])|{SPACE}?[^{SPACE}]+|{SPACE}+"
# Llama-3 / cl100k-style split: letters, 1-3 digit groups, punctuation runs, newlines; script-agnostic.
BYTE_LEVEL_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIAL_ATTRIBUTES = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")
_SPLITTING_PRE_TOKENIZERS = {"Split", "Whitespace", "WhitespaceSplit", "BertPreTokenizer", "ByteLevel",
                             "Punctuation", "Digits", "UnicodeScripts", "CharDelimiterSplit"}


@dataclass
class Pipeline:
    """Everything a trained tokenizer takes over from its base (or from a from-scratch style)."""
    normalizer: dict | None
    pre_tokenizer: dict | None
    decoder: dict | None
    post_processor: dict | None
    byte_level: bool                       # bytes are mapped to visible characters before the model
    byte_fallback: bool                    # unknown characters become <0xNN> pieces
    unk_token: str | None
    special_tokens: list[dict]             # added-token dicts (content, lstrip, ...), in id order
    added_tokens: list[dict] = field(default_factory=list)   # non-special added tokens, in id order
    wrapper_kwargs: dict[str, Any] = field(default_factory=dict)  # bos_token=..., chat_template=...
    model_params: dict[str, Any] | None = None   # the base model's settings (fuse_unk, ignore_merges...), no vocab
    rules: BaseRules | None = None         # how the base splits digits, whitespace, unknown characters


def _state(component: Any) -> dict:
    return json.loads(component.__getstate__())


def _added(content: str, special: bool = True) -> dict:
    return {"content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": special}


def scratch_pipeline(style: str, extra_special: list[str]) -> Pipeline:
    """A from-scratch pipeline: byte-level (GPT-2/Llama-3 family) or SentencePiece-style."""
    from tokenizers import Regex, decoders, normalizers, pre_tokenizers, processors
    extras = {"extra_special_tokens": list(extra_special)} if extra_special else {}
    if style == "byte_level":
        specials = ["<|endoftext|>", *[t for t in extra_special if t != "<|endoftext|>"]]
        return Pipeline(
            normalizer=None,
            pre_tokenizer=_state(pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(BYTE_LEVEL_REGEX), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])),
            decoder=_state(decoders.ByteLevel()),
            post_processor=_state(processors.ByteLevel(trim_offsets=False)),
            byte_level=True, byte_fallback=False, unk_token=None,
            special_tokens=[_added(t) for t in specials],
            wrapper_kwargs={"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", **extras})
    if style == "sentencepiece":
        base = ["<unk>", "<s>", "</s>"]
        specials = base + [t for t in extra_special if t not in base]
        return Pipeline(
            normalizer=_state(normalizers.Sequence([normalizers.Prepend(SPACE), normalizers.Replace(" ", SPACE)])),
            pre_tokenizer=_state(pre_tokenizers.Split(Regex(SPM_WORD_REGEX), behavior="isolated")),
            decoder=_state(decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse(),
                                              decoders.Strip(content=" ", left=1, right=0)])),
            post_processor=None,
            byte_level=False, byte_fallback=True, unk_token="<unk>",
            special_tokens=[_added(t) for t in specials],
            wrapper_kwargs={"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", **extras})
    raise LingraftError(f"style: unknown tokenizer style {style!r} (byte_level|sentencepiece)")


def base_pipeline(base: "PreTrainedTokenizerFast", extra_special: list[str]) -> Pipeline:
    """The pipeline of `base`, with its special tokens, added tokens and chat template."""
    data = backend_json(base)
    model = data["model"]
    unk = model.get("unk_token")
    if model.get("type") == "Unigram" and model.get("unk_id") is not None:
        unk = model["vocab"][model["unk_id"]][0]
    if unk is None and base.unk_token is not None:
        unk = str(base.unk_token)  # e.g. HF Llama-2 conversions name <unk> only in tokenizer_config.json
    added = sorted(data.get("added_tokens", []), key=lambda t: t["id"])
    specials = [{k: v for k, v in t.items() if k != "id"} for t in added if t["special"]]
    kwargs: dict[str, Any] = {}
    named = []
    for attr in SPECIAL_ATTRIBUTES:
        value = getattr(base, attr, None)
        if value is not None:
            kwargs[attr] = str(value)
            named.append(str(value))
    # New special tokens, and named ones that live in the base's model vocabulary, not in added_tokens.
    for content in [*extra_special, *named]:
        if content not in {t["content"] for t in specials}:
            specials.append(_added(content))
    for key in ("add_bos_token", "add_eos_token", "clean_up_tokenization_spaces", "padding_side",
                "truncation_side", "model_max_length"):
        if key in base.init_kwargs:
            kwargs[key] = base.init_kwargs[key]
    if base.chat_template:
        kwargs["chat_template"] = base.chat_template
    extra = [str(t) for t in (base.extra_special_tokens or [])] + list(extra_special)
    if extra:
        kwargs["extra_special_tokens"] = list(dict.fromkeys(extra))
    byte_level = tokenizer_kind(data).startswith("byte_level")
    return Pipeline(
        normalizer=data.get("normalizer"), pre_tokenizer=data.get("pre_tokenizer"), decoder=data.get("decoder"),
        post_processor=data.get("post_processor"), byte_level=byte_level,
        byte_fallback=bool(model.get("byte_fallback")), unk_token=unk, special_tokens=specials,
        added_tokens=[{k: v for k, v in t.items() if k != "id"} for t in added if not t["special"]],
        wrapper_kwargs=kwargs, model_params={k: v for k, v in model.items() if k not in ("vocab", "merges")},
        rules=infer_rules(data, byte_level))


def _training_pre_tokenizer(pipeline: Pipeline) -> dict | None:
    """SentencePiece-style pipelines often do not split words at all (Metaspace split=False):
    training on whole documents as single "words" would be slow and learn nothing useful,
    so for training only, words are split the way sentencepiece splits them. A base's rules
    (split digits, characters it spells in byte pieces) are obeyed the same way: the trainer
    never sees the pieces they forbid, so the base's own pipeline serves the result."""
    parts = pipeline_components(pipeline.pre_tokenizer)
    splits = any(c.get("type") in _SPLITTING_PRE_TOKENIZERS or (c.get("type") == "Metaspace" and c.get("split"))
                 for c in parts)
    steps = [pipeline.pre_tokenizer] if pipeline.pre_tokenizer is not None else []
    if not (splits or pipeline.byte_level):
        steps.append({"type": "Split", "pattern": {"Regex": SPM_WORD_REGEX}, "behavior": "Isolated", "invert": False})
    if pipeline.rules is not None and pipeline.byte_level:
        # Before the byte mapping: ByteLevel turns UTF-8 continuation bytes into characters such as
        # "²" or "½", which a Digits step would split off (the second byte of "в", "м", "о" ...).
        steps = training_splits(pipeline.rules) + steps
    elif pipeline.rules is not None:
        steps += training_splits(pipeline.rules)
    if len(steps) <= 1:
        return steps[0] if steps else None
    return {"type": "Sequence", "pretokenizers": steps}


def _empty_model(kind: str, pipeline: Pipeline) -> dict:
    base_model = pipeline.model_params
    if kind == "bpe":
        model = dict(base_model) if base_model and base_model.get("type") == "BPE" else {
            "type": "BPE", "dropout": None, "continuing_subword_prefix": None, "end_of_word_suffix": None,
            "fuse_unk": pipeline.unk_token is not None, "ignore_merges": False}
        model.update(vocab={}, merges=[], unk_token=pipeline.unk_token, byte_fallback=pipeline.byte_fallback)
        return model
    if kind == "unigram":
        # The Unigram model refuses an empty vocabulary; the trainer replaces this placeholder.
        return {"type": "Unigram", "unk_id": 0, "vocab": [[pipeline.unk_token or "<placeholder>", 0.0]],
                "byte_fallback": pipeline.byte_fallback}
    raise LingraftError(f"kind: unknown tokenizer kind {kind!r} (bpe|unigram)")


def _remap_post_processor(node: Any, token_to_id: Any) -> Any:
    """Point the post-processor's special-token ids at their ids in the new vocabulary."""
    def lookup(token: str) -> int:
        idx = token_to_id(token)
        if idx is None:
            raise LingraftError(f"post-processor token {token!r} is missing from the trained vocabulary")
        return idx
    if isinstance(node, list):
        return [_remap_post_processor(n, token_to_id) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _remap_post_processor(v, token_to_id) for k, v in node.items()}
    if node.get("type") == "TemplateProcessing":
        for entry in node["special_tokens"].values():
            entry["ids"] = [lookup(t) for t in entry["tokens"]]
    for key in ("sep", "cls"):
        if isinstance(node.get(key), list) and node[key] and isinstance(node[key][0], str):
            node[key] = [node[key][0], lookup(node[key][0])]
    return node


@dataclass
class TrainParams:
    kind: str = "bpe"
    vocab_size: int = 32000
    min_frequency: int | None = None
    max_token_length: int | None = None


def train_tokenizer(texts: Iterable[str], pipeline: Pipeline, params: TrainParams) -> "PreTrainedTokenizerFast":
    """Learn a `params.kind` vocabulary on `texts` inside `pipeline`; return a fast tokenizer."""
    from tokenizers import AddedToken, Tokenizer, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [AddedToken(**t) for t in pipeline.special_tokens]
    special_contents = {t["content"] for t in pipeline.special_tokens}
    # Byte pieces go in as trainer "special tokens" so they get fixed ids right after the real
    # special tokens (as in Llama-2/Mistral); they are then made ordinary vocabulary entries.
    byte_pieces = [b for b in BYTE_PIECES if b not in special_contents] if pipeline.byte_fallback else []
    budget = params.vocab_size - len(pipeline.added_tokens)
    if budget <= len(specials) + len(byte_pieces):
        raise LingraftError(f"vocab_size {params.vocab_size} leaves no room beyond {len(specials)} special, "
                            f"{len(byte_pieces)} byte-fallback and {len(pipeline.added_tokens)} added tokens")
    trainer_specials = specials + [AddedToken(b, special=True, normalized=False) for b in byte_pieces]
    alphabet = pre_tokenizers.ByteLevel.alphabet() if pipeline.byte_level else []
    if params.kind == "bpe":
        trainer = trainers.BpeTrainer(vocab_size=budget, min_frequency=params.min_frequency or 2,
                                      special_tokens=trainer_specials, initial_alphabet=alphabet,
                                      max_token_length=params.max_token_length, show_progress=False)
    else:
        trainer = trainers.UnigramTrainer(vocab_size=budget, special_tokens=trainer_specials,
                                          initial_alphabet=alphabet, unk_token=pipeline.unk_token,
                                          max_piece_length=params.max_token_length or 16, show_progress=False)
    skeleton = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
                "normalizer": pipeline.normalizer, "pre_tokenizer": _training_pre_tokenizer(pipeline),
                "post_processor": None, "decoder": pipeline.decoder,
                "model": _empty_model(params.kind, pipeline)}
    backend = Tokenizer.from_str(json.dumps(skeleton))
    backend.train_from_iterator(texts, trainer=trainer)

    trained = json.loads(backend.to_str())
    byte_set = set(byte_pieces)
    trained["added_tokens"] = [t for t in trained["added_tokens"] if t["content"] not in byte_set]
    trained["pre_tokenizer"] = pipeline.pre_tokenizer
    trained["model"]["byte_fallback"] = pipeline.byte_fallback
    if pipeline.post_processor is not None:
        trained["post_processor"] = _remap_post_processor(pipeline.post_processor, backend.token_to_id)
    backend = Tokenizer.from_str(json.dumps(trained))
    if pipeline.added_tokens:
        backend.add_tokens([AddedToken(**t) for t in pipeline.added_tokens])
    return PreTrainedTokenizerFast(tokenizer_object=backend, **pipeline.wrapper_kwargs)


def run_train(cfg: TrainTokenizerConfig) -> dict:
    """`lingraft tokenizer train`: train, save a HF folder with manifest.json, return the metrics."""
    base = load_tokenizer(cfg.like, cfg.trust_remote_code) if cfg.like else None
    pipeline = base_pipeline(base, cfg.special_tokens) if base is not None else \
        scratch_pipeline(cfg.style, cfg.special_tokens)
    corpus = CorpusText(cfg.data, cfg.text_field, cfg.max_chars, desc="tokenizer corpus")
    params = TrainParams(cfg.kind, cfg.vocab_size, cfg.min_frequency, cfg.max_token_length)
    start = time.perf_counter()
    tok = train_tokenizer(corpus, pipeline, params)
    seconds = time.perf_counter() - start
    if corpus.chars == 0:
        raise LingraftError(f"{', '.join(cfg.data)}: no text to train on (field {cfg.text_field!r})")
    log.info("trained %s %s tokenizer of %d tokens on %d chars in %.1f s (%.0f chars/s)",
             cfg.kind, "like " + cfg.like if cfg.like else cfg.style, len(tok), corpus.chars, seconds,
             corpus.chars / seconds)
    inputs: dict[str, Any] = {f"data[{i}]": p for i, p in enumerate(cfg.data)}
    if cfg.like:
        inputs["like"] = cfg.like
    manifest = new_manifest("tokenizer_train", cfg, inputs=inputs)
    trained = backend_json(tok)
    manifest.metrics = {"vocab_size": len(tok), "kind": tokenizer_kind(trained), "seconds": round(seconds, 3),
                        "chars_per_second": round(corpus.chars / seconds, 1), "corpus": corpus.summary()}
    manifest.outputs = {"tokenizer": str(cfg.out), "fingerprint": tokenizer_fingerprint(trained)}
    with atomic_dir(cfg.out) as tmp:
        tok.save_pretrained(str(tmp))
        manifest.write(tmp)
    return manifest.metrics
