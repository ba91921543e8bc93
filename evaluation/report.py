"""`lingraft eval report`: several eval outputs side by side.

Input: any number of eval outputs (folders holding results.jsonl, written by the eval tasks;
any mix of tasks and models). Output folder:
  results.jsonl  every record of the inputs, in the order given (one result set)
  report.json    {"models": [...], "metrics": [...], "lower_is_better": {metric: bool},
                  "values": {model: {metric: number or null}}, "sources": [paths]}
  report.md      one row per metric, one column per model (best value in bold)
  report.png     one bar chart per metric
A metric is named task/label/key, e.g. bpc/ud_russian/bits_per_char or mc/parus/acc_norm.
Each eval task writes the same report.md of its own records (evaluation.pairs).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from lingraft.atomic import atomic_path, write_json
from lingraft.errors import LingraftError
from lingraft.evaluation.config import ReportConfig
from lingraft.evaluation.results import RESULTS_NAME, EvalResult, read_results, write_results
from lingraft.log import get_logger

log = get_logger(__name__)
LOWER_IS_BETTER = {"bits_per_char", "bits_per_byte", "tokens_per_word"}


def build_report(records: Sequence[EvalResult], sources: Sequence[str]) -> dict[str, Any]:
    models: list[str] = []
    metrics: list[str] = []
    values: dict[str, dict[str, float | None]] = {}
    for r in records:
        if r.model not in values:
            models.append(r.model)
            values[r.model] = {}
        for key, value in r.headline().items():
            metric = f"{r.task}/{r.label}/{key}"
            if metric in values[r.model]:
                raise LingraftError(f"{r.model} has {metric} twice; give each result once")
            if metric not in metrics:
                metrics.append(metric)
            values[r.model][metric] = value
    for model in models:
        for metric in metrics:
            values[model].setdefault(metric, None)
    return {"models": models, "metrics": metrics,
            "lower_is_better": {m: m.rsplit("/", 1)[1] in LOWER_IS_BETTER for m in metrics},
            "values": values, "sources": [str(p) for p in sources]}


def flat_values(report: dict[str, Any]) -> dict[str, float]:
    """{model/metric: value} of the values present, e.g. {"B/bpc/ud_russian/bits_per_char": 3.42}."""
    return {f"{model}/{metric}": value for model, row in report["values"].items()
            for metric, value in row.items() if value is not None}


def _best(report: dict[str, Any], metric: str) -> float | None:
    present = [v[metric] for v in report["values"].values() if v[metric] is not None]
    if not present:
        return None
    return min(present) if report["lower_is_better"][metric] else max(present)


def markdown_table(report: dict[str, Any]) -> str:
    header = ["metric", *report["models"]]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * len(report["models"])]
    for metric in report["metrics"]:
        best = _best(report, metric)
        arrow = "↓" if report["lower_is_better"][metric] else "↑"
        cells = []
        for model in report["models"]:
            value = report["values"][model][metric]
            text = "–" if value is None else f"{value:.4g}"
            cells.append(f"**{text}**" if value is not None and value == best and len(report["models"]) > 1 else text)
        lines.append(f"| {metric} {arrow} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    metrics, models = report["metrics"], report["models"]
    cols = min(3, len(metrics))
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes.flat, metrics):
        heights = [report["values"][m][metric] for m in models]
        ax.bar(range(len(models)), [h if h is not None else 0.0 for h in heights],
               color=[colors[i % len(colors)] for i in range(len(models))])
        ax.set_xticks(range(len(models)), models, rotation=20, fontsize=8)
        ax.set_title(metric + (" (lower is better)" if report["lower_is_better"][metric] else ""), fontsize=8)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def run_report(cfg: ReportConfig) -> dict[str, Any]:
    records = [r for path in cfg.result for r in read_results(path)]
    if not records:
        raise LingraftError(f"no eval record in {', '.join(map(str, cfg.result))}")
    report = build_report(records, [str(p) for p in cfg.result])
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(report)
    write_results(out / RESULTS_NAME, records)
    write_json(out / "report.json", report)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(table, encoding="utf-8")
    plot(report, out / "report.png")
    print(table, end="")
    log.info("report of %d models, %d metrics in %s", len(report["models"]), len(report["metrics"]), out)
    return report
