"""The Markdown tables of RESULTS.md, from the eval records of `make demo` (configs/demo.yaml).

    .venv/bin/python bench/demo_results.py [runs/demo/report ...]

Reads the records of the demo's eval stages (by default the report stage's results.jsonl,
which holds all of them; any eval output folder or results.jsonl, or a folder of the earlier
per-model result JSONs such as runs/demo/eval, reads the same), prints one table per task with
the models in the demo's order, then (bench convention) one JSON line holding the same numbers.
Nothing is typed in by hand: RESULTS.md pastes this output.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lingraft.evaluation.results import EvalResult

REPO = Path(__file__).resolve().parents[1]

MODEL_ORDER = ["B", "I", "init", "trained", "rows", "A", "swap", "overlap", "conversion", "grafted", "calibrated"]
MODEL_ROLE = {"B": "base (SmolLM2-135M-Instruct)", "I": "B + short SFT", "init": "B, Extended vocab, distilled init",
              "trained": "init + new rows trained (head rows from init)",
              "rows": "init + new rows trained", "A": "rows + body LoRA (distilled)",
              "swap": "A -> I, swap", "overlap": "A -> I, overlap", "conversion": "A's tables -> I, conversion",
              "grafted": "conversion + A's body skill pack", "calibrated": "grafted + LEP self-calibration"}


def _order(model: str) -> int:
    return MODEL_ORDER.index(model) if model in MODEL_ORDER else len(MODEL_ORDER)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) if rows else ""


def load(paths: list[Path]) -> list[EvalResult]:
    from lingraft.evaluation.results import read_results
    results = [r for path in paths for r in read_results(path)]
    if not results:
        raise SystemExit(f"{', '.join(map(str, paths))}: no eval record")
    return results


def of_task(results: list[EvalResult], task: str) -> list[EvalResult]:
    return sorted((r for r in results if r.task == task), key=lambda r: _order(r.model))


def bpc_table(results: list[EvalResult]) -> str:
    sets = sorted({r.label for r in results if r.task == "bpc"}, key=lambda s: (s == "fineweb_en", s))
    cell = {(r.model, r.label): r.metrics for r in of_task(results, "bpc")}
    models = sorted({m for m, _ in cell}, key=_order)
    rows = [[m, MODEL_ROLE.get(m, "")] + [f"{cell[m, s]['bits_per_char']:.3f} ({cell[m, s]['chars_per_token']:.2f})"
                                          if (m, s) in cell else "-" for s in sets] for m in models]
    return _table(["model", "what", *(f"{s}: bpc (chars/token)" for s in sets)], rows)


def tokenizer_table(results: list[EvalResult]) -> str:
    rows = [[r.model, r.label, f"{r.metrics['tokens_per_word']:.3f}", f"{r.metrics['chars_per_token']:.3f}"]
            for r in of_task(results, "tokenizer")]
    return _table(["model", "text", "tokens per word", "chars per token"], rows)


def copy_table(results: list[EvalResult]) -> str:
    rows = [[r.model, f"{r.label} ({r.meta.get('kind', '?')})", str(r.metrics["n"]), f"{r.metrics['exact_match']:.3f}",
             f"{r.metrics['mean_char_match']:.3f}",
             f"{r.metrics['length_ratio']:.3f}" if "length_ratio" in r.metrics else "-"]
            for r in of_task(results, "copy")]
    return _table(["model", "set", "items", "exact match", "mean char match", "length ratio"], rows)


def speed_table(results: list[EvalResult]) -> str:
    """Each baseline's row first, then the models measured against it and their ratios."""
    speed = of_task(results, "speed")
    baselines = [r for r in speed if any(o.meta.get("baseline") == r.model and o.label == r.label for o in speed)]
    rows = []
    for r in baselines + [r for r in speed if r not in baselines]:
        m = r.metrics
        rows.append([r.model, f"{m['tokens_per_s']:.1f}", f"{m['chars_per_s']:.1f}", f"{m['chars_per_token']:.2f}",
                     str(m["new_tokens"])])
        if "chars_per_s_vs_baseline" in m:
            rows.append([f"{r.model} / {r.meta['baseline']}", f"{m['tokens_per_s_vs_baseline']:.2f}x",
                         f"{m['chars_per_s_vs_baseline']:.2f}x", "", ""])
    return _table(["model", "tokens/s", "chars/s", "chars/token", "new tokens"], rows)


def main() -> None:
    paths = [Path(a) for a in sys.argv[1:]] or [REPO / "runs" / "demo" / "report"]
    results = load(paths)
    for title, make in (("Bits per character", bpc_table), ("Tokens per word", tokenizer_table),
                        ("Copy task", copy_table), ("Generation speed", speed_table)):
        table = make(results)
        print(f"### {title}\n\n{table or '(no result of this task in ' + ', '.join(map(str, paths)) + ')'}\n")
    print(json.dumps({"bench": "demo_results", "results": [
        {"task": r.task, "model": r.model, "label": r.label, **r.metrics} for r in results]}, ensure_ascii=False))


if __name__ == "__main__":
    main()
