"""`lingraft generate`: continue a prompt with a Hydra model (choosing its head) or a plain HF model."""
from __future__ import annotations

from pathlib import Path

import torch

from lingraft.errors import LingraftError
from lingraft.propagate.hydra.config import GenerateConfig
from lingraft.propagate.hydra.model import HydraForCausalLM, HydraSpec, is_hydra, namespaced


def split_prompt(pieces: list[str], spec: HydraSpec, default: str) -> list[tuple[str, str]]:
    """[(vocabulary, text)]: "NAME:TEXT" names a vocabulary, anything else uses `default`."""
    names = {v.name for v in spec.vocabularies}
    out = []
    for piece in pieces:
        name, sep, text = piece.partition(":")
        out.append((name, text) if sep and name in names else (default, piece))
    return out


def hydra_prompt_ids(folder: Path, spec: HydraSpec, pieces: list[tuple[str, str]], chat: bool) -> list[int]:
    """Namespaced ids of a prompt whose pieces may come from different tokenizers."""
    from transformers import AutoTokenizer
    if chat and len({name for name, _ in pieces}) > 1:
        raise LingraftError("--chat needs a prompt in one vocabulary (a chat template belongs to one tokenizer)")
    ids: list[int] = []
    for k, (name, text) in enumerate(pieces):
        vocab = spec.vocabulary(name)
        tok = AutoTokenizer.from_pretrained(str(folder / vocab.tokenizer_dir))
        if chat:
            own = tok.apply_chat_template([{"role": "user", "content": "".join(t for _, t in pieces)}],
                                          add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
            return namespaced(list(own), vocab)
        own = tok(text, add_special_tokens=k == 0)["input_ids"]
        ids += namespaced(own, vocab)
    return ids


def run_generate(cfg: GenerateConfig) -> str:
    folder = Path(cfg.model)
    if is_hydra(folder):
        model = HydraForCausalLM.from_pretrained(folder, dtype=torch.float32)
        head = cfg.head or model.spec.default_head
        pieces = split_prompt(cfg.prompt, model.spec, head)
        ids = hydra_prompt_ids(folder, model.spec, pieces, cfg.chat)
        new = model.generate(torch.tensor([ids]), head, cfg.max_new_tokens, cfg.temperature, cfg.seed)
        from transformers import AutoTokenizer
        text = AutoTokenizer.from_pretrained(str(folder / model.spec.vocabulary(head).tokenizer_dir)).decode(
            new, skip_special_tokens=True)
    else:
        if cfg.head:
            raise LingraftError(f"{folder}: --head needs a Hydra model (this folder has no hydra.json)")
        text = _generate_plain(folder, cfg)
    print(text)
    return text


def _generate_plain(folder: Path, cfg: GenerateConfig) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    prompt = "".join(cfg.prompt)
    if cfg.chat:
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
    else:
        ids = tok(prompt, return_tensors="pt")["input_ids"]
    torch.manual_seed(cfg.seed)
    out = model.generate(ids, max_new_tokens=cfg.max_new_tokens, do_sample=cfg.temperature > 0,
                         temperature=cfg.temperature if cfg.temperature > 0 else None)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
