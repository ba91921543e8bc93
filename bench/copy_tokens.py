"""Where a chat model's copying fails: the copy task teacher-forced, token by token.

    .venv/bin/python bench/copy_tokens.py I=runs/demo/instruct grafted=runs/demo/grafted \\
        calibrated=runs/demo/calibrate/model [--data ../shared/data/ru_text/ud_russian_sentences.jsonl] [--items 48]

`eval copy` asks each model, through its chat template, to repeat a sentence (the same prompt), and
here the correct answer is fed in instead of the model's own: every answer token is scored given
the right answer so far. Tokens are split into the model's new rows and the rows that copy an old
one (the token map's `kept`/`special` provenance, `lingraft.train.model_setup.copies_old_row`); a
model without a token map has old rows only. Per class: how often the top-1 prediction is the
answer token, its mean log-probability, and, where the top-1 is wrong, how often it is a new token.
A few of the wrong predictions at new tokens are printed (answer -> top-1).
Last line (bench convention): one JSON object with the same numbers.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from lingraft.evaluation.config import CopyEvalConfig

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "ru_text" / "ud_russian_sentences.jsonl"


@dataclass
class ClassStats:
    tokens: int = 0
    top1_right: int = 0
    logprob_sum: float = 0.0
    wrong_top1_new: int = 0

    def add(self, logprobs: torch.Tensor, targets: torch.Tensor, top1_is_new: torch.Tensor) -> None:
        """logprobs (n, vocab) log-softmax rows, targets (n,), top1_is_new (n,) bool."""
        right = logprobs.argmax(-1) == targets
        self.tokens += targets.numel()
        self.top1_right += int(right.sum())
        self.logprob_sum += float(logprobs.gather(-1, targets[:, None]).sum())
        self.wrong_top1_new += int((~right & top1_is_new).sum())

    def summary(self) -> dict[str, float]:
        n, wrong = max(self.tokens, 1), max(self.tokens - self.top1_right, 1)
        return {"tokens": self.tokens, "top1_right": round(self.top1_right / n, 4),
                "mean_logprob": round(self.logprob_sum / n, 4), "wrong_top1_is_new": round(self.wrong_top1_new / wrong, 4)}


def new_row_mask(model_dir: Path, vocab_size: int) -> torch.Tensor:
    from lingraft.train.model_setup import copies_old_row
    from lingraft.vocabulary.token_map import TOKEN_MAP_NAME, TokenMap
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    path = model_dir / TOKEN_MAP_NAME
    if path.is_file():
        tmap = TokenMap.load(path)
        mask[: tmap.new_vocab] = ~copies_old_row(tmap)
    return mask


def measure(spec: str, cfg: "CopyEvalConfig", items: list[str], examples: int) -> dict:
    from lingraft.evaluation.generation import chat_prompt_ids
    from lingraft.evaluation.models import load_model
    loaded = load_model(spec, cfg.dtype, cfg.device, cfg.trust_remote_code, cfg.seed)
    tok, model, prompt = loaded.tokenizer, loaded.model, cfg.prompt
    is_new = new_row_mask(loaded.folder, model.get_output_embeddings().weight.shape[0])
    stats = {"new": ClassStats(), "old": ClassStats()}
    confusions: list[str] = []
    for item in items:
        prompt_ids = chat_prompt_ids(tok, prompt.replace("{text}", item))
        answer = torch.tensor(tok(item, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            logits = model(torch.cat([torch.tensor(prompt_ids), answer])[None]).logits[0]
        logprobs = logits[len(prompt_ids) - 1:-1].float().log_softmax(-1)
        top1 = logprobs.argmax(-1)
        for name, rows in (("new", is_new[answer]), ("old", ~is_new[answer])):
            stats[name].add(logprobs[rows], answer[rows], is_new[top1[rows]])
        wrong = (is_new[answer] & (top1 != answer)).nonzero().flatten().tolist()
        confusions += [f"{tok.decode([int(answer[i])])!r} -> {tok.decode([int(top1[i])])!r}" for i in wrong]
    return {"model": loaded.name, **{k: v.summary() for k, v in stats.items()}, "confusions": confusions[:examples]}


def main() -> None:
    from lingraft.evaluation.config import CopyEvalConfig, DataSet
    from lingraft.evaluation.copy_task import load_set
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="name=path of each chat model")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="JSONL of sentences (field `text`)")
    ap.add_argument("--items", type=int, default=48, help="the first N sentences, as `eval copy --max-items`")
    ap.add_argument("--examples", type=int, default=12, help="wrong new-token predictions printed per model")
    args = ap.parse_args()
    # `eval copy`'s own config: its prompt, loading and items (the first sentences); nothing is written to `out`.
    cfg = CopyEvalConfig(model=args.models, out=Path("unused"), sentences=[DataSet(path=args.data)], max_items=args.items)
    items = load_set(cfg.sentences[0], "sentence", cfg).items
    results = [measure(spec, cfg, items, args.examples) for spec in cfg.model]
    print("| model | new tokens | top-1 right | mean log-prob | old tokens | top-1 right | mean log-prob |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['model']} | " + " | ".join(f"{r[k]['tokens']} | {r[k]['top1_right']:.3f} | {r[k]['mean_logprob']:.2f}"
                                             for k in ("new", "old")) + " |")
    for r in results:
        if r["confusions"]:
            print(f"{r['model']}: wrong top-1 at new tokens is new {r['new']['wrong_top1_is_new']:.0%}: "
                  + ", ".join(r["confusions"]))
    print(json.dumps({"items": len(items), "data": str(args.data), "results": results}, ensure_ascii=False))


if __name__ == "__main__":
    main()
