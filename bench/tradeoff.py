"""NetAdapt against uniform width multipliers and MACs-driven NetAdapt, measured on this machine.

The paper's comparison (Yang et al. 2018, Fig. 6 / Table 1) at a size a 2-core CPU can run:
MobileNetV1 (width 0.5, stride-1 stem) trained here on Fashion-MNIST, adapted to 50% of its
measured latency in ONNX Runtime on one thread. Every final model is measured in one interleaved
session (A B C ... rounds) and compared by the minimum of its runs; the spread (p10-p90 over the
median) is printed beside it.

Usage: python bench/tradeoff.py [--quick] [--seeds 3] [--out bench/out]

Pretraining is cached in bench/cache/ and not counted in the reported time.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adaptation.netadapt.baselines import uniform_baseline  # noqa: E402
from adaptation.netadapt.config import AdaptConfig  # noqa: E402
from adaptation.netadapt.data import load_dataset  # noqa: E402
from adaptation.netadapt.export import export_pytorch, load_pytorch  # noqa: E402
from adaptation.netadapt.graph import NetworkAnalysis  # noqa: E402
from adaptation.netadapt.loop import FinishRecord, IterationRecord, NetAdapt, run_with  # noqa: E402
from adaptation.netadapt.lut import MemoryLatencyTable  # noqa: E402
from adaptation.netadapt.report import plot_tradeoff  # noqa: E402
from adaptation.netadapt.resources import LatencyTableModel, MacsModel  # noqa: E402
from adaptation.netadapt.spec import ArchitectureSpec  # noqa: E402
from adaptation.netadapt.training import accuracy, steps_for_epochs, train_steps  # noqa: E402
from devices.measure import LocalMeasurer, MeasureProtocol, TimingStats  # noqa: E402

# Sizes chosen so the full run ends within 2 hours on 2 cores and --quick within 15 minutes.
# MACs-driven NetAdapt runs on the first `macs_seeds` seeds only (it is the secondary comparison).
FULL = dict(seeds=3, macs_seeds=1, limit_train=None, holdout=2000, pretrain_epochs=5,
            short_term_steps=15, long_term_epochs=0.5, ratios=(0.5, 0.625, 0.75, 1.0))
QUICK = dict(seeds=1, macs_seeds=1, limit_train=10000, holdout=1000, pretrain_epochs=5,
             short_term_steps=10, long_term_epochs=0.5, ratios=(0.5, 0.75, 1.0))
# The paper's schedule (0.025, 0.96) needs ~39 iterations to reach 50%; this one needs 7.
SCHEDULE = dict(initial_reduction=0.1, decay=0.9)
SPEC = ArchitectureSpec("mobilenet_v1", 10, 1, 0.5, 28)


def pretrained(cache: Path, epochs: float) -> torch.nn.Module:
    """The starting network, trained once on the full training set and cached."""
    path = cache / f"{SPEC.arch}_w{SPEC.width}_r{SPEC.resolution}_e{epochs:g}.pt"
    if path.exists():
        return load_pytorch(path)
    data = load_dataset("fashion_mnist", holdout_size=2000, seed=0)
    torch.manual_seed(0)
    model = SPEC.build()
    steps = steps_for_epochs(data.train, epochs, 128)
    print(f"pretraining {SPEC.arch} for {epochs} epochs ({steps} steps)...", flush=True)
    train_steps(model, data.train, steps, lr=0.1, batch_size=128, seed=0, cosine=True)
    cache.mkdir(parents=True, exist_ok=True)
    export_pytorch(model, SPEC, {}, path)
    print(f"pretrained: validation accuracy {accuracy(model, data.validation):.4f}", flush=True)
    return model


class Progress:
    """Finished runs saved as they finish (rows, curves, models, the look-up table), so an
    interrupted benchmark restarted with the same options picks up where it stopped."""

    def __init__(self, out: Path, size: dict, measurer: LocalMeasurer) -> None:
        self.path, self.models_dir, self.table_path = out / "progress.json", out / "models", out / "lut.json"
        self.size = json.loads(json.dumps(size))
        self.rows: dict[str, dict] = {}
        self.curves: dict[str, list] = {}
        self.models: dict[str, torch.nn.Module] = {}
        self.table = MemoryLatencyTable({"runtime": measurer.runtime_name, "threads": 1})
        if self.path.exists():
            saved = json.loads(self.path.read_text())
            if saved["size"] == self.size:
                self.rows, self.curves = saved["rows"], saved["curves"]
                self.models = {name: load_pytorch(self.models_dir / f"{name}.pt")
                               for name in self.rows if name != "original"}
                if self.table_path.exists():
                    self.table = MemoryLatencyTable.load(self.table_path)
                print(f"resuming: {len(self.models)} finished runs loaded", flush=True)

    def done(self, name: str, model: torch.nn.Module, channels: dict, row: dict) -> None:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        export_pytorch(model, SPEC, channels, self.models_dir / f"{name}.pt")
        self.models[name], self.rows[name] = model, row
        self.table.save(self.table_path)
        self.path.write_text(json.dumps({"size": self.size, "rows": self.rows,
                                         "curves": self.curves}, indent=1))


def run_netadapt(model, data, analysis, config, resource, measurer, table):
    """One adaptation; returns (finish record, per-iteration dicts)."""
    finish, iterations = None, []
    for record in run_with(NetAdapt(model, SPEC.example_input(), data, config, resource,
                                    analysis=analysis), measurer, table):
        if isinstance(record, IterationRecord):
            iterations.append(record.to_dict())
            print(f"  [{config.metric} seed {config.seed}] iteration {record.iteration}: "
                  f"{record.chosen_group} -> {record.channels[record.chosen_group]} ch, "
                  f"{record.resource.value:.4g}, holdout {record.holdout_accuracy:.4f}", flush=True)
        elif isinstance(record, FinishRecord):
            finish = record
    return finish, iterations


def latency_at_accuracy(points: list[tuple[float, float]], target: float) -> tuple[float, str]:
    """Latency where a (latency, accuracy) curve reaches ``target`` accuracy, linearly
    interpolated; outside the curve, the nearest end and whether it is a bound."""
    points = sorted(points)
    accs = [a for _, a in points]
    if target > max(accs):
        return points[-1][0], ">"  # even the widest baseline is less accurate
    if target <= accs[0]:
        return points[0][0], "<"
    for (l0, a0), (l1, a1) in zip(points, points[1:]):
        if a0 < target <= a1 or a1 < target <= a0:
            return l0 + (target - a0) * (l1 - l0) / (a1 - a0), "="
    best = min(points, key=lambda p: abs(p[1] - target))
    return best[0], "~"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, small data: ~15 min")
    parser.add_argument("--seeds", type=int, default=None, help="adaptation seeds")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out"))
    parser.add_argument("--cache", default=str(ROOT / "bench" / "cache"))
    parser.add_argument("--report-partial", action="store_true",
                        help="train nothing: measure and report the runs saved so far in --out")
    args = parser.parse_args()
    size = dict(QUICK if args.quick else FULL)
    if args.seeds:
        size["seeds"] = args.seeds
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    original = pretrained(Path(args.cache), size["pretrain_epochs"])
    started = time.perf_counter()
    data = load_dataset("fashion_mnist", holdout_size=size["holdout"], seed=0,
                        limit_train=size["limit_train"])
    example = SPEC.example_input()
    analysis = NetworkAnalysis(original, example)
    measurer = LocalMeasurer("onnxruntime", MeasureProtocol(threads=1, rounds=5, runs_per_round=40))
    progress = Progress(out, size, measurer)
    table, models, rows, curves = progress.table, progress.models, progress.rows, progress.curves
    models.setdefault("original", original)
    rows.setdefault("original", {"kind": "original", "seed": None,
                                 "macs": analysis.macs(analysis.original_config()),
                                 "validation_accuracy": accuracy(original, data.validation)})
    for seed in range(0 if args.report_partial else size["seeds"]):
        for metric in ("latency", "macs"):
            name = f"netadapt-{metric} s{seed}"
            if name in rows or (metric == "macs" and seed >= size["macs_seeds"]):
                continue
            config = AdaptConfig(metric=metric, budget=0.5, short_term_steps=size["short_term_steps"],
                                 long_term_epochs=size["long_term_epochs"], seed=seed,
                                 **SCHEDULE)
            resource = LatencyTableModel(table) if metric == "latency" else MacsModel()
            tick = time.perf_counter()
            finish, iterations = run_netadapt(original, data, analysis, config, resource,
                                              measurer, table)
            curves[name] = iterations
            progress.done(name, finish.model, finish.channels, {
                "kind": f"netadapt-{metric}", "seed": seed,
                "validation_accuracy": finish.validation_accuracy, "iterations": finish.iterations,
                "minutes": (time.perf_counter() - tick) / 60,
                "macs": iterations[-1]["macs"] if iterations else None})
        steps_total = rows[f"netadapt-latency s{seed}"]["iterations"] * size["short_term_steps"]
        for ratio in size["ratios"]:
            name = f"uniform x{ratio:g} s{seed}"
            if name in rows:
                continue
            config = AdaptConfig(short_term_steps=size["short_term_steps"],
                                 long_term_epochs=size["long_term_epochs"], seed=seed)
            result = uniform_baseline(original, example, analysis, data, config, ratio, steps_total)
            progress.done(name, result.model, result.channels, {
                "kind": "uniform", "seed": seed, "ratio": ratio,
                "validation_accuracy": result.validation_accuracy, "macs": result.macs})
            print(f"  [uniform seed {seed}] x{ratio:g}: validation {result.validation_accuracy:.4f}",
                  flush=True)
    print("measuring every final model interleaved...", flush=True)
    models = {name: models[name] for name in rows}  # the same order as the table
    protocol = MeasureProtocol(threads=1, warmup=20, rounds=10, runs_per_round=50)
    stats = LocalMeasurer("onnxruntime", protocol).measure_models(list(models.values()), example)
    for name, measured in zip(models, stats):
        rows[name]["latency"] = measured.to_dict()
    seeds_done = len({r["seed"] for r in rows.values() if r["kind"] == "netadapt-latency"})
    report = summarise(rows, seeds_done)
    report["minutes"] = (time.perf_counter() - started) / 60
    report["table_entries"] = len(table)
    errors = lut_prediction_errors(curves)
    report["lut_prediction_mape"] = float(np.mean(np.abs(errors))) if errors else None
    report["lut_prediction_max_error"] = float(np.max(np.abs(errors))) if errors else None
    report["size"] = {**size, **SCHEDULE, "spec": SPEC.to_dict()}
    (out / "tradeoff.json").write_text(json.dumps({"rows": rows, "summary": report,
                                                   "curves": curves}, indent=1))
    print_table(rows, report)
    plot(out / "tradeoff.png", rows)


def summarise(rows: dict[str, dict], seeds: int) -> dict:
    """Speedup over the uniform curve at NetAdapt's accuracy, per seed and method."""
    speedups: dict[str, list] = {"netadapt-latency": [], "netadapt-macs": []}
    for seed in range(seeds):
        curve = [(r["latency"]["min_ms"], r["validation_accuracy"])
                 for r in rows.values() if r["kind"] == "uniform" and r["seed"] == seed]
        for kind in speedups:
            row = rows.get(f"{kind} s{seed}")
            if row is None or not curve:
                continue
            at, bound = latency_at_accuracy(curve, row["validation_accuracy"])
            speedups[kind].append({"seed": seed, "speedup": at / row["latency"]["min_ms"],
                                   "bound": bound})
    return {"speedup_vs_uniform": speedups,
            "mean_speedup": {k: float(np.mean([s["speedup"] for s in v])) if v else None
                             for k, v in speedups.items()}}


def lut_prediction_errors(curves: dict[str, list[dict]]) -> list[float]:
    """Relative error of each chosen network's latency as predicted by the calibrated table
    *before* it was measured (the measurement then joins the calibration)."""
    errors = []
    for iterations in curves.values():
        for record in iterations:
            if record.get("measured"):
                chosen = next(p for p in record["proposals"] if p["group"] == record["chosen_group"])
                measured = record["measured"]["min_ms"]
                errors.append((chosen["resource"] - measured) / measured)
    return errors


def print_table(rows: dict[str, dict], report: dict) -> None:
    print(f"\n{'model':<24}{'min ms':>9}{'median ms':>11}{'spread':>8}{'val acc %':>11}{'MACs':>12}")
    for name, row in rows.items():
        lat = TimingStats.from_dict(row["latency"])
        macs = row.get("macs")
        print(f"{name:<24}{lat.min_ms:>9.4f}{lat.median_ms:>11.4f}{lat.spread:>8.1%}"
              f"{100 * row['validation_accuracy']:>11.2f}{(macs or 0):>12,}")
    print("\nspeedup over the uniform-multiplier curve at equal accuracy "
          "('>' / '<': outside the curve, a bound):")
    for kind, entries in report["speedup_vs_uniform"].items():
        listed = ", ".join(f"{e['bound'] if e['bound'] != '=' else ''}{e['speedup']:.2f}x" for e in entries)
        mean = report["mean_speedup"][kind]
        print(f"  {kind:<18} {listed}" + (f"  (mean {mean:.2f}x)" if mean is not None else ""))
    if report.get("lut_prediction_mape") is not None:
        print(f"look-up table: chosen networks' latency predicted before measuring within "
              f"{report['lut_prediction_mape']:.1%} on average (worst "
              f"{report['lut_prediction_max_error']:.1%})")
    print(f"\n{report.get('table_entries')} look-up-table entries; "
          f"{report.get('minutes', 0):.1f} min without pretraining")


def plot(path: Path, rows: dict[str, dict]) -> None:
    series: dict[str, list] = {}
    for row in rows.values():
        label = {"original": "original", "uniform": "uniform width multiplier",
                 "netadapt-latency": "NetAdapt (latency LUT)",
                 "netadapt-macs": "NetAdapt (MACs)"}[row["kind"]]
        series.setdefault(label, []).append((row["latency"]["min_ms"], row["validation_accuracy"]))
    plot_tradeoff(path, series, xlabel="measured latency (ms, ONNX Runtime, 1 thread, min)",
                  ylabel="validation accuracy (%)",
                  title="MobileNetV1-0.5 on Fashion-MNIST, 28 px")


if __name__ == "__main__":
    main()
