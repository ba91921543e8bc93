"""`lingraft eval report`: several models' results side by side.

Input: any number of result JSONs written by the eval tasks (any mix of tasks and models).
Output folder:
  report.json  {"models": [...], "metrics": [...], "lower_is_better": {metric: bool},
                "values": {model: {metric: number or null}}, "sources": [paths]}
  report.md    one row per metric, one column per model (best value in bold)
  report.png   one bar chart per metric
A metric is named task/label/key, e.g. bpc/ud_russian/bits_per_char or mc/parus/acc_norm.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from lingraft.evaluation.config import ReportConfig
from lingraft.evaluation.results import HEADLINE, read_result
from lingraft.atomic import atomic_path, write_json
from lingraft.errors import LingraftError
from lingraft.log import get_logger

log = get_logger(__name__)
LOWER_IS_BETTER = {"bits_per_char", "bits_per_byte", "tokens_per_word"}


def metrics_of(result: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """{model: {metric: value}} of one result: the task's headline keys, per sub-task for mc, and
    the baseline's own row for a speed run with --baseline (same prompts, so comparable)."""
    task, label = result["task"], result["label"]
    values = {f"{task}/{label}/{key}": result.get(key) for key in HEADLINE[task]}
    if task == "mc" and len(result.get("tasks", {})) > 1:
        for sub, sub_result in result["tasks"].items():
            values.update({f"mc/{sub}/{key}": sub_result[key] for key in HEADLINE["mc"]})
    rows = {result["model"]: values}
    if task == "speed" and result.get("baseline"):
        base = result["baseline"]
        rows[base["model"]] = {f"speed/{label}/{key}": base[key] for key in HEADLINE["speed"]}
    return rows


def result_paths(specs: list[str]) -> list[str]:
    """Files as given; a folder stands for the *.json files in it, in name order."""
    paths = []
    for spec in specs:
        folder = Path(spec)
        paths += sorted(str(p) for p in folder.glob("*.json")) if folder.is_dir() else [spec]
    if not paths:
        raise LingraftError(f"no result JSON in {', '.join(specs)}")
    return paths


def build_report(paths: list[str]) -> dict[str, Any]:
    models: list[str] = []
    metrics: list[str] = []
    values: dict[str, dict[str, float | None]] = {}
    for path in paths:
        for model, row in metrics_of(read_result(path)).items():
            if model not in values:
                models.append(model)
                values[model] = {}
            for metric, value in row.items():
                if metric in values[model]:
                    raise LingraftError(f"{path}: {model} has {metric} twice; give each result once")
                if metric not in metrics:
                    metrics.append(metric)
                values[model][metric] = value
    for model in models:
        for metric in metrics:
            values[model].setdefault(metric, None)
    return {"models": models, "metrics": metrics,
            "lower_is_better": {m: m.rsplit("/", 1)[1] in LOWER_IS_BETTER for m in metrics},
            "values": values, "sources": [str(p) for p in paths]}


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
    report = build_report(result_paths(cfg.result))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(report)
    write_json(out / "report.json", report)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(table, encoding="utf-8")
    plot(report, out / "report.png")
    print(table, end="")
    log.info("report of %d models, %d metrics in %s", len(report["models"]), len(report["metrics"]), out)
    return report
