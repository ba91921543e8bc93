"""Where a chat model's copying fails: the copy task teacher-forced, token by token.

    .venv/bin/python bench/copy_tokens.py I=runs/demo/instruct grafted=runs/demo/grafted \\
        calibrated=runs/demo/calibrate/model [--data ../shared/data/ru_text/ud_russian_sentences.jsonl] [--items 48] \\
        [--counts runs/demo/pack]

`eval copy` asks each model, through its chat template, to repeat a sentence (the same prompt), and
here the correct answer is fed in instead of the model's own: every answer token is scored given
the right answer so far. Tokens are split into the model's new rows and the rows that copy an old
one (the token map's `kept`/`special` provenance, `lingraft.train.model_setup.copies_old_row`); a
model without a token map has old rows only. Per class: how often the top-1 prediction is the
answer token, its mean log-probability, and, where the top-1 is wrong, how often it is a new token.
A few of the wrong predictions at new tokens are printed (answer -> top-1). With `--counts` (the
packed training mix), the new tokens are also split by how often the mix holds each: the rows of
rare tokens are where copying fails (BENCHMARKS.md, "Where copying fails by token frequency").
Last line (bench convention): one JSON object with the same numbers.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
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


# Count bins for --counts: [0, 1), [1, 10), [10, 100), [100, 1000), [1000, ...)
COUNT_EDGES = (1, 10, 100, 1000)


def count_bin(count: int) -> str:
    lower = max((edge for edge in COUNT_EDGES if edge <= count), default=0)
    upper = min((edge for edge in COUNT_EDGES if edge > count), default=None)
    return f"{lower}+" if upper is None else f"{lower}-{upper - 1}"


COUNT_BINS = [count_bin(edge) for edge in (0, *COUNT_EDGES)]


def pack_token_counts(folder: Path) -> np.ndarray:
    """How often each token id occurs in a packed folder (`lingraft prep pack`), all shards."""
    from lingraft.data_prep.dataset import PackedDataset
    from lingraft.data_prep.packed_format import open_shard
    from lingraft.manifest import read_manifest
    PackedDataset(folder, shuffle=False)          # refuses what is not a packed folder
    outputs = read_manifest(folder)["outputs"]
    counts = np.zeros(int(outputs["tokenizer"]["vocab_size"]), dtype=np.int64)
    for record in outputs["shards"]:
        tokens = open_shard(folder, record, np.dtype(outputs["dtype"])).tokens
        counts += np.bincount(tokens, minlength=counts.size)[:counts.size]
    return counts


def new_row_mask(model_dir: Path, vocab_size: int) -> torch.Tensor:
    from lingraft.train.model_setup import copies_old_row
    from lingraft.vocabulary.token_map import TOKEN_MAP_NAME, TokenMap
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    path = model_dir / TOKEN_MAP_NAME
    if path.is_file():
        tmap = TokenMap.load(path)
        mask[: tmap.new_vocab] = ~copies_old_row(tmap)
    return mask


def measure(spec: str, cfg: "CopyEvalConfig", items: list[str], examples: int,
            counts: np.ndarray | None = None) -> dict:
    from lingraft.evaluation.generation import chat_prompt_ids
    from lingraft.evaluation.models import load_model
    loaded = load_model(spec, cfg.dtype, cfg.device, cfg.trust_remote_code, cfg.seed)
    tok, model, prompt = loaded.tokenizer, loaded.model, cfg.prompt
    is_new = new_row_mask(loaded.folder, model.get_output_embeddings().weight.shape[0])
    if counts is not None and is_new.any() and len(tok) != counts.size:
        raise SystemExit(f"{loaded.name}: a vocabulary of {len(tok)} ids, but --counts was packed with {counts.size}")
    stats = {"new": ClassStats(), "old": ClassStats()}
    by_count = {name: ClassStats() for name in COUNT_BINS}
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
        if counts is not None:
            for i in is_new[answer].nonzero().flatten().tolist():
                by_count[count_bin(int(counts[answer[i]]))].add(logprobs[i:i + 1], answer[i:i + 1],
                                                               is_new[top1[i:i + 1]])
        wrong = (is_new[answer] & (top1 != answer)).nonzero().flatten().tolist()
        confusions += [f"{tok.decode([int(answer[i])])!r} -> {tok.decode([int(top1[i])])!r}" for i in wrong]
    result = {"model": loaded.name, **{k: v.summary() for k, v in stats.items()}, "confusions": confusions[:examples]}
    if counts is not None:
        result["new_by_count"] = {k: v.summary() for k, v in by_count.items()}
    return result


def main() -> None:
    from lingraft.evaluation.config import CopyEvalConfig, DataSet
    from lingraft.evaluation.copy_task import load_set
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="name=path of each chat model")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="JSONL of sentences (field `text`)")
    ap.add_argument("--items", type=int, default=48, help="the first N sentences, as `eval copy --max-items`")
    ap.add_argument("--examples", type=int, default=12, help="wrong new-token predictions printed per model")
    ap.add_argument("--counts", type=Path, default=None,
                    help="packed training mix (`prep pack` folder): split the new tokens by how often it holds each")
    args = ap.parse_args()
    counts = pack_token_counts(args.counts) if args.counts else None
    # `eval copy`'s own config: its prompt, loading and items (the first sentences); nothing is written to `out`.
    cfg = CopyEvalConfig(model=args.models, out=Path("unused"), sentences=[DataSet(path=args.data)], max_items=args.items)
    items = load_set(cfg.sentences[0], "sentence", cfg).items
    results = [measure(spec, cfg, items, args.examples, counts) for spec in cfg.model]
    print("| model | new tokens | top-1 right | mean log-prob | old tokens | top-1 right | mean log-prob |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['model']} | " + " | ".join(f"{r[k]['tokens']} | {r[k]['top1_right']:.3f} | {r[k]['mean_logprob']:.2f}"
                                             for k in ("new", "old")) + " |")
    for r in results:
        if r["confusions"]:
            print(f"{r['model']}: wrong top-1 at new tokens is new {r['new']['wrong_top1_is_new']:.0%}: "
                  + ", ".join(r["confusions"]))
    if counts is not None:
        print(f"\nnew tokens by their count in {args.counts}: answer positions, top-1 right, mean log-prob")
        print("| model | " + " | ".join(COUNT_BINS) + " |")
        print("|---|" + "---:|" * len(COUNT_BINS))
        for r in results:
            cells = (r["new_by_count"][b] for b in COUNT_BINS)
            print(f"| {r['model']} | " + " | ".join(f"{v['tokens']}, {v['top1_right']:.3f}, {v['mean_logprob']:.2f}"
                                                 if v["tokens"] else "–" for v in cells) + " |")
    print(json.dumps({"items": len(items), "data": str(args.data), "results": results}, ensure_ascii=False))


if __name__ == "__main__":
    main()
