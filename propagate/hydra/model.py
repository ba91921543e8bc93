"""HydraForCausalLM: one transformer body, several input vocabularies, one swappable LM head per language.

On disk a Hydra model is an ordinary Hugging Face folder of its body's architecture whose input
table stacks every vocabulary's rows in namespaced id ranges (the original's at offset 0, the
next one after it, ...), plus one head tensor per vocabulary and a `hydra.json` describing the
ranges. Each vocabulary's tokenizer lives in `tokenizers/<name>/`. A prompt may therefore mix
tokens of several tokenizers: encode each piece with its vocabulary and concatenate.

The body is loaded with the architecture's own transformers class (`AutoModel`), so no remote
code is involved; only the heads are this module's, followed by the architecture's own logit
scaling or soft-capping (`hydra.logits`).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lingraft.errors import LingraftError
from lingraft.propagate.hydra.logits import logit_transform

HYDRA_FILE = "hydra.json"
FORMAT = "lingraft.hydra/1"
HEAD_PREFIX = "hydra.heads."


@dataclass(frozen=True)
class Vocabulary:
    name: str
    offset: int                   # first id of this vocabulary in the shared input table
    size: int                     # rows it owns there (its model's table rows, padding included)
    tokens: int                   # len(tokenizer)
    tied: bool                    # its source model tied the head to the input table
    config_token_ids: dict[str, Any] = field(default_factory=dict)       # bos/eos/pad ids in its own ids
    generation_config: dict[str, Any] = field(default_factory=dict)

    @property
    def tokenizer_dir(self) -> str:
        return f"tokenizers/{self.name}"

    @property
    def head_tensor(self) -> str:
        return f"{HEAD_PREFIX}{self.name}.weight"


@dataclass(frozen=True)
class HydraSpec:
    embedding: str                # the input table's tensor name
    head_name: str                # the architecture's LM-head tensor name (for plain exports)
    vocabularies: tuple[Vocabulary, ...]
    default_head: str

    def vocabulary(self, name: str) -> Vocabulary:
        for vocab in self.vocabularies:
            if vocab.name == name:
                return vocab
        raise LingraftError(f"no vocabulary {name!r} in this Hydra model (has {[v.name for v in self.vocabularies]})")

    @property
    def rows(self) -> int:
        return sum(v.size for v in self.vocabularies)

    def save(self, folder: Path) -> None:
        from lingraft.atomic import write_json
        write_json(folder / HYDRA_FILE, {"format": FORMAT, "embedding": self.embedding,
                                         "head_name": self.head_name, "default_head": self.default_head,
                                         "vocabularies": [asdict(v) for v in self.vocabularies]})

    @classmethod
    def load(cls, folder: str | Path) -> "HydraSpec":
        path = Path(folder) / HYDRA_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise LingraftError(f"{folder}: not a Hydra model (no {HYDRA_FILE})") from None
        except json.JSONDecodeError:
            raise LingraftError(f"{path}: corrupt (not JSON)") from None
        if raw.get("format") != FORMAT:
            raise LingraftError(f"{path}: format {raw.get('format')!r}, expected {FORMAT!r}")
        vocabs = tuple(Vocabulary(**v) for v in raw["vocabularies"])
        return cls(embedding=raw["embedding"], head_name=raw["head_name"], vocabularies=vocabs,
                   default_head=raw["default_head"])


def is_hydra(folder: str | Path) -> bool:
    return (Path(folder) / HYDRA_FILE).is_file()


class HydraForCausalLM(nn.Module):
    """A decoder body over the stacked input table, and a head per vocabulary."""

    def __init__(self, body: nn.Module, heads: dict[str, torch.Tensor], spec: HydraSpec) -> None:
        super().__init__()
        self.body = body
        self.spec = spec
        self.logit_transform = logit_transform(body.config, f"Hydra body {type(body).__name__}")
        self.heads = nn.ModuleDict()
        for name, weight in heads.items():
            head = nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=weight.dtype)
            head.weight = nn.Parameter(weight, requires_grad=False)
            self.heads[name] = head

    @classmethod
    def from_pretrained(cls, folder: str | Path, dtype: torch.dtype | str = "auto") -> "HydraForCausalLM":
        from safetensors import safe_open
        from transformers import AutoModel

        from lingraft.hf_folder import open_checkpoint
        spec = HydraSpec.load(folder)
        # The body's class ignores the head tensors (reported as unexpected keys) and strips
        # its base-model prefix from the others, exactly as for a plain causal-LM checkpoint.
        body = AutoModel.from_pretrained(str(folder), dtype=dtype)
        ckpt = open_checkpoint(folder)
        heads = {}
        for vocab in spec.vocabularies:
            info = ckpt.tensors.get(vocab.head_tensor)
            if info is None:
                raise LingraftError(f"{folder}: head {vocab.head_tensor} missing")
            with safe_open(str(info.shard), framework="pt") as fh:
                heads[vocab.name] = fh.get_tensor(vocab.head_tensor).to(body.dtype)
        model = cls(body, heads, spec)
        return model.eval()

    def forward(self, input_ids: torch.Tensor, head: str | None = None, attention_mask: torch.Tensor | None = None,
                past_key_values: Any = None, use_cache: bool = False) -> tuple[torch.Tensor, Any]:
        """Logits over `head`'s vocabulary (its own ids, not namespaced), and the KV cache."""
        if int(input_ids.max()) >= self.spec.rows or int(input_ids.min()) < 0:
            raise LingraftError(f"input id outside the Hydra table [0, {self.spec.rows})")
        name = head or self.spec.default_head
        if name not in self.heads:
            raise LingraftError(f"no head {name!r} (has {list(self.heads)})")
        out = self.body(input_ids=input_ids, attention_mask=attention_mask, past_key_values=past_key_values,
                        use_cache=use_cache)
        return self.logit_transform(self.heads[name](out.last_hidden_state)), out.past_key_values

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, head: str | None = None, max_new_tokens: int = 32,
                 temperature: float = 0.0, seed: int = 0) -> list[int]:
        """Continue one namespaced prompt (1, n); returns the new tokens in `head`'s own ids.

        Each generated token is fed back at its namespaced id (offset + id), so the cache and
        the body see the same table the prompt used.
        """
        vocab = self.spec.vocabulary(head or self.spec.default_head)
        stop = _eos_ids(vocab)
        generator = torch.Generator().manual_seed(seed)
        logits, cache = self(input_ids, vocab.name, use_cache=True)
        new: list[int] = []
        for _ in range(max_new_tokens):
            scores = logits[0, -1, :vocab.tokens].float()      # padding rows are never real tokens
            if temperature > 0:
                token = int(torch.multinomial(torch.softmax(scores / temperature, -1), 1, generator=generator))
            else:
                token = int(scores.argmax())
            new.append(token)
            if token in stop:
                break
            logits, cache = self(torch.tensor([[vocab.offset + token]]), vocab.name, past_key_values=cache,
                                 use_cache=True)
        return new


def _eos_ids(vocab: Vocabulary) -> set[int]:
    eos = vocab.generation_config.get("eos_token_id", vocab.config_token_ids.get("eos_token_id"))
    return set(eos if isinstance(eos, list) else [] if eos is None else [eos])


def namespaced(ids: list[int], vocab: Vocabulary) -> list[int]:
    """Ids of `vocab`'s tokenizer as ids of the Hydra input table."""
    if any(not 0 <= i < vocab.size for i in ids):
        raise LingraftError(f"token id outside vocabulary {vocab.name!r} (size {vocab.size})")
    return [vocab.offset + i for i in ids]
