"""The Markdown tables of RESULTS.md, from the eval JSONs of `make demo` (configs/demo.yaml).

    .venv/bin/python bench/demo_results.py [runs/demo/eval]

Reads every result JSON in the folder (`lingraft eval bpc|tokenizer|copy|speed` output), prints
one table per task with the models in the demo's order, then (bench convention) one JSON line
holding the same numbers. Nothing is typed in by hand: RESULTS.md pastes this output.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MODEL_ORDER = ["B", "I", "init", "A", "swap", "overlap", "conversion"]
MODEL_ROLE = {"B": "base (SmolLM2-135M-Instruct)", "I": "B + short SFT", "init": "B, Extended vocab, distilled init",
              "A": "init + new rows trained", "swap": "A -> I, swap", "overlap": "A -> I, overlap",
              "conversion": "A -> I, conversion"}


def _order(model: str) -> int:
    return MODEL_ORDER.index(model) if model in MODEL_ORDER else len(MODEL_ORDER)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) if rows else ""


def load(folder: Path) -> list[dict]:
    from lingraft.evaluation.results import read_result
    results = [read_result(p) for p in sorted(folder.glob("*.json"))]
    if not results:
        raise SystemExit(f"{folder}: no eval result JSON")
    return results


def bpc_table(results: list[dict]) -> str:
    sets = sorted({r["label"] for r in results if r["task"] == "bpc"}, key=lambda s: (s == "fineweb_en", s))
    cell = {(r["model"], r["label"]): r for r in results if r["task"] == "bpc"}
    models = sorted({m for m, _ in cell}, key=_order)
    rows = [[m, MODEL_ROLE.get(m, "")] + [f"{cell[m, s]['bits_per_char']:.3f} ({cell[m, s]['chars_per_token']:.2f})"
                                          if (m, s) in cell else "-" for s in sets] for m in models]
    return _table(["model", "what", *(f"{s}: bpc (chars/token)" for s in sets)], rows)


def tokenizer_table(results: list[dict]) -> str:
    rows = [[r["model"], r["label"], f"{r['tokens_per_word']:.3f}", f"{r['chars_per_token']:.3f}"]
            for r in sorted((r for r in results if r["task"] == "tokenizer"), key=lambda r: _order(r["model"]))]
    return _table(["model", "text", "tokens per word", "chars per token"], rows)


def copy_table(results: list[dict]) -> str:
    rows = []
    for r in sorted((r for r in results if r["task"] == "copy"), key=lambda r: _order(r["model"])):
        for name, s in r["sets"].items():
            rows.append([r["model"], f"{name} ({s['kind']})", str(s["n"]),
                         f"{s['exact_match']:.3f}", f"{s['mean_char_match']:.3f}",
                         f"{s['length_ratio']:.3f}" if "length_ratio" in s else "-"])
    return _table(["model", "set", "items", "exact match", "mean char match", "length ratio"], rows)


def speed_table(results: list[dict]) -> str:
    rows = []
    for r in (r for r in results if r["task"] == "speed"):
        for name, m in ((r["baseline"]["model"], r["baseline"]), (r["model"], r)) if "baseline" in r \
                else ((r["model"], r),):
            rows.append([name, f"{m['tokens_per_s']:.1f}", f"{m['chars_per_s']:.1f}", f"{m['chars_per_token']:.2f}",
                         str(m["new_tokens"])])
        if "baseline" in r:
            rows.append([f"{r['model']} / {r['baseline']['model']}", f"{r['tokens_per_s_vs_baseline']:.2f}x",
                         f"{r['chars_per_s_vs_baseline']:.2f}x", "", ""])
    return _table(["model", "tokens/s", "chars/s", "chars/token", "new tokens"], rows)


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "runs" / "demo" / "eval"
    results = load(folder)
    for title, make in (("Bits per character", bpc_table), ("Tokens per word", tokenizer_table),
                        ("Copy task", copy_table), ("Generation speed", speed_table)):
        table = make(results)
        print(f"### {title}\n\n{table or '(no result of this task in ' + str(folder) + ')'}\n")
    print(json.dumps({"bench": "demo_results", "results": [
        {k: v for k, v in r.items() if k not in ("meta", "sets")} for r in results]}, ensure_ascii=False))


if __name__ == "__main__":
    main()
