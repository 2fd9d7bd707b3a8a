"""Run reports: results.json, a CSV of the iterations and the latency/accuracy trade-off plot."""
from __future__ import annotations

import csv
import json
from pathlib import Path

CSV_COLUMNS = ("iteration", "chosen_group", "target", "resource", "resource_raw", "measured_min_ms",
               "measured_median_ms", "macs", "params", "holdout_accuracy", "proposals")


def write_json(path: str | Path, results: dict) -> None:
    Path(path).write_text(json.dumps(results, indent=1, default=str))


def iteration_rows(results: dict) -> list[dict]:
    """One flat row per iteration (the original network as iteration -1)."""
    start = results["start"]
    rows = [{"iteration": -1, "chosen_group": "", "target": "", "resource": start["resource"],
             "resource_raw": start["resource_raw"],
             "measured_min_ms": (start.get("measured") or {}).get("min_ms", ""),
             "measured_median_ms": (start.get("measured") or {}).get("median_ms", ""),
             "macs": start["macs"], "params": start["params"],
             "holdout_accuracy": start["holdout_accuracy"], "proposals": 0}]
    for record in results["iterations"]:
        measured = record.get("measured") or {}
        rows.append({"iteration": record["iteration"], "chosen_group": record["chosen_group"],
                     "target": record["target"], "resource": record["resource"],
                     "resource_raw": record["resource_raw"],
                     "measured_min_ms": measured.get("min_ms", ""),
                     "measured_median_ms": measured.get("median_ms", ""),
                     "macs": record["macs"], "params": record["params"],
                     "holdout_accuracy": record["holdout_accuracy"],
                     "proposals": len(record["proposals"])})
    return rows


def write_csv(path: str | Path, results: dict) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(iteration_rows(results))


def plot_tradeoff(path: str | Path, series: dict[str, list[tuple[float, float]]], *,
                  xlabel: str, ylabel: str, title: str) -> None:
    """Save a scatter/line plot: one named series of (resource, accuracy) points each."""
    # matplotlib only for plots (heavy), its Agg backend chosen before pyplot loads.
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): no display here

    figure, axes = plt.subplots(figsize=(7, 4.5))
    markers = iter("os^Dv<>p*h")
    for label, points in series.items():
        if not points:
            continue
        xs, ys = zip(*sorted(points))
        style = "-" if len(points) > 1 else ""
        axes.plot(xs, [100 * y for y in ys], style, marker=next(markers, "o"), label=label)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
