"""How well the latency look-up table predicts whole networks, measured on this machine.

NetAdapt's decisions rest on the table: a pruned network's latency is estimated as the
overhead-corrected sum of its layers' isolated timings (``LatencyTableModel.raw_ms``, exactly the
engine's estimate) and an affine calibration maps that sum to the whole-network latency. This
benchmark draws random prunings of MobileNetV1 (width 0.5, our model) and torchvision's
MobileNetV2 (width 1.0) at two input sizes, builds the table of every layer they need, measures
every network whole, and reports per (model, size, runtime):

- raw MAPE of the table's sum and its Pearson correlation with the measurement;
- calibrated MAPE, the calibration (the engine's ``AffineCalibration``) fitted only on *other*
  prunings: 2-fold (fit on one half, score the other) and leave-one-out;
- the same for an affine fit on MACs (the indirect metric the table is meant to beat);
- single-step deltas: each pruning paired with a copy of itself with one random group one
  channel step smaller, measured side by side; the error of the estimated latency saved relative
  to the network's latency, and how often the estimate gets the sign of the saving right;
- measurement noise: every network is measured in two passes, so the pass-to-pass difference of
  latencies and of deltas shows how much of the error is the measurement itself;
- table noise: after the networks, every entry is measured once more (shuffled); the figures are
  repeated for a table keeping each entry's lower minimum (the engine measures entries once);
- table size (entries) and the time spent measuring it.

Measured on this machine's CPU, one thread; nothing here is a pass/fail test.

Usage: python bench/lut_fidelity.py [--quick] [--prunings 24] [--seed 0] [--out bench/out]
       python bench/lut_fidelity.py --report bench/out/lut_fidelity.json   (recompute, no measuring)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adaptation.netadapt.graph import NetworkAnalysis, rebuild_pruned  # noqa: E402
from adaptation.netadapt.lut import AffineCalibration, MemoryLatencyTable, entry_ms  # noqa: E402
from adaptation.netadapt.models import build_model, example_input  # noqa: E402
from adaptation.netadapt.resources import CALL_OVERHEAD_SIGNATURE, LatencyTableModel  # noqa: E402
from devices.measure import MeasureProtocol, TimingStats, time_with_retries  # noqa: E402
from devices.measure.local import LocalMeasurer, device_facts  # noqa: E402
from devices.measure.tracing import trace_layers  # noqa: E402

# (architecture, width): our MobileNetV1 at the trade-off benchmark's width, torchvision's V2.
MODELS = (("mobilenet_v1", 0.5), ("mobilenet_v2", 1.0))
RUNTIMES = ("onnxruntime", "torch")
# 32 px takes the small-input stem (stride 1, the Fashion-MNIST regime: well under 1 ms in ONNX
# Runtime, where per-call overhead is a large share); 128 px the ImageNet stem (stride 2).
FULL = dict(sizes=(32, 128), prunings=24, passes=2)
QUICK = dict(sizes=(32,), prunings=8, passes=2)
CHANNEL_STEP = 8
# ONNX Runtime's CPU convolutions on AVX-512 run in a blocked layout (NCHWc) whose channel blocks
# hold 16: a step from 16k to 16k-8 channels leaves the padded work unchanged. Deltas are also
# reported apart for steps from a multiple of BLOCK and from an odd multiple of the step.
BLOCK = 16
# Network-level keep ratio drawn in [MIN_KEEP, 1], then each group jittered around it, so the
# networks span the range NetAdapt walks through (original down to ~30% of the channels).
MIN_KEEP, GROUP_JITTER = 0.3, 0.25
# Entries: the engine's protocol (jobs use MeasureProtocol(threads=...) with its defaults).
TABLE_PROTOCOL = MeasureProtocol(threads=1)
# Whole networks: min of >= 200 runs per pass in interleaved rounds (DESIGN.md section 4). No
# re-timing of wide-spread networks: the minimum hardly moves with the spread, the second pass is
# the repeat, and the retries tripled the eager-torch time under load (quick run).
NETWORK_PROTOCOL = MeasureProtocol(threads=1, warmup=20, rounds=10, runs_per_round=20, max_retries=0)


# ----------------------------------------------------------------------------- pure helpers

def channel_choices(channels: int, step: int = CHANNEL_STEP) -> list[int]:
    """Channel counts a group may keep: multiples of ``step`` up to its original count (and that
    count itself when it is not a multiple)."""
    return sorted({c for c in range(step, channels + 1, step)} | {channels})


def draw_pruning(rng: np.random.Generator, original: Mapping[str, int],
                 step: int = CHANNEL_STEP) -> dict[str, int]:
    """A random channel configuration: one keep ratio for the network, jittered per group, each
    group's count the nearest allowed multiple of ``step``."""
    keep = rng.uniform(MIN_KEEP, 1.0)
    config = {}
    for name, channels in original.items():
        target = channels * keep * rng.uniform(1 - GROUP_JITTER, 1 + GROUP_JITTER)
        choices = channel_choices(channels, step)
        config[name] = min(choices, key=lambda c: (abs(c - target), c))
    return config


def one_step_smaller(rng: np.random.Generator, config: Mapping[str, int],
                     original: Mapping[str, int], step: int = CHANNEL_STEP) -> tuple[str, dict[str, int]]:
    """A random group that can shrink, and ``config`` with that group one channel step smaller."""
    shrinkable = [name for name in config if channel_choices(original[name], step)[0] < config[name]]
    if not shrinkable:
        raise ValueError("no group of this configuration can shrink")
    name = shrinkable[int(rng.integers(len(shrinkable)))]
    smaller = max(c for c in channel_choices(original[name], step) if c < config[name])
    return name, {**config, name: smaller}


def fold_calibrations(raw: Sequence[float], measured: Sequence[float],
                      folds: int) -> list[AffineCalibration]:
    """For each point, the engine's affine calibration fitted on the points of the *other* folds
    (point i is in fold i mod folds; ``folds == len(raw)`` is leave-one-out)."""
    if not 2 <= folds <= len(raw):
        raise ValueError(f"folds must be in [2, {len(raw)}], got {folds}")
    fitted = []
    for fold in range(folds):
        calibration = AffineCalibration()
        for i, (r, m) in enumerate(zip(raw, measured)):
            if i % folds != fold:
                calibration.add(r, m)
        fitted.append(calibration)
    return [fitted[i % folds] for i in range(len(raw))]


def steps_from_block_multiple(networks: Sequence[Mapping], block: int = BLOCK) -> np.ndarray:
    """For each pruning (the even networks), whether its stepped group had a multiple of
    ``block`` channels before the step."""
    return np.array([net["config"][net["step_group"]] % block == 0 for net in networks[0::2]])


def mape(predicted: Sequence[float], measured: Sequence[float]) -> float:
    """Mean absolute percentage error, as a fraction."""
    p, m = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    return float(np.mean(np.abs(p - m) / m))


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson correlation; None when either side is constant or has fewer than 3 points."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def delta_errors(estimated: Sequence[float], measured: Sequence[float],
                 latency: Sequence[float]) -> dict:
    """Estimated vs measured latency saved by one step: median absolute error relative to the
    network's latency, and the share of steps whose saving has the measured sign (zero counts as
    its own sign)."""
    e, m, lat = (np.asarray(v, dtype=float) for v in (estimated, measured, latency))
    return {"median_abs_error": float(np.median(np.abs(e - m) / lat)),
            "sign_agreement": float(np.mean(np.sign(e) == np.sign(m)))}


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


# ----------------------------------------------------------------------------- measurement

def build_networks(arch: str, width: float, size: int, prunings: int, seed: int, case: int):
    """The analysis, and ``prunings`` random configurations each followed by its one-step pair."""
    torch.manual_seed(0)
    x = example_input(3, size)
    analysis = NetworkAnalysis(build_model(arch, 10, 3, width, size), x)
    original = analysis.original_config()
    rng = np.random.default_rng([seed, case])
    networks = []
    for _ in range(prunings):
        config = draw_pruning(rng, original)
        group, smaller = one_step_smaller(rng, config, original)
        networks.append({"config": config, "step_group": group})
        networks.append({"config": smaller, "step_group": group})
    mismatched = 0
    for net in networks:
        torch.manual_seed(0)
        net["model"] = rebuild_pruned(build_model(arch, 10, 3, width, size), x, net["config"])
        net["signatures"] = analysis.signatures(net["config"])
        traced = [layer.signature for layer in trace_layers(net["model"], x)]
        mismatched += traced != net["signatures"]
        net["macs"] = analysis.macs(net["config"])
    return analysis, x, networks, mismatched


def measure_case(networks: list[dict], x: torch.Tensor, runtime: str, passes: int,
                 rng: np.random.Generator) -> dict:
    """Table of every signature the networks need (as the engine measures it), every network
    whole in ``passes`` interleaved passes (each pruning next to its one-step pair in every
    round), then every table entry once more in a shuffled order: the engine keeps the first
    measurement; the second shows what re-measuring the table would change."""
    measurer = LocalMeasurer(runtime, TABLE_PROTOCOL)
    needed = LatencyTableModel(MemoryLatencyTable()).missing(
        sig for net in networks for sig in net["signatures"])
    tick = time.perf_counter()
    first = measurer.measure_signatures(needed)
    table_s = time.perf_counter() - tick
    # The same calls as LocalMeasurer.measure_models, with the runners (ONNX exports, model
    # copies) built once and reused by every pass.
    tick = time.perf_counter()
    runners = [measurer.runtime.load_module(net["model"], tuple(x.shape), 1) for net in networks]
    build_s = time.perf_counter() - tick
    tick = time.perf_counter()
    measured = [time_with_retries(runners, NETWORK_PROTOCOL) for _ in range(passes)]
    networks_s = time.perf_counter() - tick
    del runners
    tick = time.perf_counter()
    second = measurer.measure_signatures([needed[i] for i in rng.permutation(len(needed))])
    table2_s = time.perf_counter() - tick
    engine_table = MemoryLatencyTable({"runtime": runtime, "threads": 1})
    engine_table.add(first)
    twice_table = MemoryLatencyTable({"runtime": runtime, "threads": 1})
    twice_table.add({sig: min(first[sig], second[sig], key=lambda t: t.min_ms) for sig in needed})
    engine, twice = LatencyTableModel(engine_table), LatencyTableModel(twice_table)
    change = [abs(first[s].min_ms - second[s].min_ms) / min(first[s].min_ms, second[s].min_ms)
              for s in needed]
    return {"entries": len(needed), "table_seconds": table_s, "table_again_seconds": table2_s,
            "build_seconds": build_s, "networks_seconds": networks_s,
            "raw_ms": [engine.raw_ms(net["signatures"]) for net in networks],
            "raw_twice_ms": [twice.raw_ms(net["signatures"]) for net in networks],
            "plain_sum_ms": [sum(entry_ms(first[s], "min") for s in net["signatures"])
                             for net in networks],
            "overhead_ms": entry_ms(first[CALL_OVERHEAD_SIGNATURE], "min"),
            "entry_spread_median": float(np.median([first[s].spread for s in needed])),
            "entry_change_median": float(np.median(change)),
            "entries_changed_over_10pct": float(np.mean(np.array(change) > 0.1)),
            # measurement order kept: entries are timed in chunks of 32 (local.DEFAULT_CHUNK_SIZE)
            "table": {s.key(): [round(first[s].min_ms, 5), round(first[s].median_ms, 5),
                                round(first[s].spread, 3), round(second[s].min_ms, 5)]
                      for s in needed},
            "passes": [[s.to_dict() for s in stats] for stats in measured]}


def fidelity(estimate: np.ndarray, measured: np.ndarray,
             subsets: Mapping[str, np.ndarray] | None = None) -> dict:
    """How well ``estimate`` (raw sums, or MACs) predicts ``measured``: prunings are the even
    networks, their one-step pairs the odd ones. Calibrations are fitted on other prunings only;
    a delta's estimate is the slope of the calibration fitted without that pruning times the
    estimated difference (the intercept cancels)."""
    a, b = slice(0, None, 2), slice(1, None, 2)
    lat = measured[a]
    halves = fold_calibrations(estimate[a], lat, 2)
    loo = fold_calibrations(estimate[a], lat, len(lat))
    loo_pred = np.array([cal(e) for cal, e in zip(loo, estimate[a])])
    slopes = np.array([cal.coefficients()[0] for cal in loo])
    estimated_delta = slopes * (estimate[a] - estimate[b])
    measured_delta = measured[a] - measured[b]
    deltas = delta_errors(estimated_delta, measured_delta, lat)
    by_subset = {}
    for name, mask in (subsets or {}).items():
        if mask.any():
            by_subset[name] = {"n": int(mask.sum()),
                               "measured_median": float(np.median(measured_delta[mask] / lat[mask])),
                               "estimated_median": float(np.median(estimated_delta[mask] / lat[mask])),
                               **delta_errors(estimated_delta[mask], measured_delta[mask], lat[mask])}
    return {"raw_mape": mape(estimate[a], lat), "pearson": pearson(estimate[a], lat),
            "calibrated_mape_2fold": mape([cal(e) for cal, e in zip(halves, estimate[a])], lat),
            "calibrated_mape_loo": mape(loo_pred, lat),
            "calibrated_max_error_loo": float(np.max(np.abs(loo_pred - lat) / lat)),
            "calibration_all": list(AffineCalibration(list(zip(estimate[a], lat))).coefficients()),
            "delta_error_median": deltas["median_abs_error"],
            "delta_sign_agreement": deltas["sign_agreement"],
            "delta_pearson": pearson(estimated_delta, measured_delta),
            "delta_by_step_from": by_subset}


def summarise(networks: list[dict], result: dict) -> dict:
    """Fidelity figures of one (model, size, runtime)."""
    passes = [[TimingStats.from_dict(s) for s in stats] for stats in result["passes"]]
    per_pass = np.array([[s.min_ms for s in stats] for stats in passes])  # (passes, networks)
    measured = per_pass.min(axis=0)
    a, b = slice(0, None, 2), slice(1, None, 2)
    lat = measured[a]
    measured_delta = measured[a] - measured[b]
    from_block = steps_from_block_multiple(networks)
    summary = {
        "prunings": int(len(lat)), "latency_min_ms": float(lat.min()),
        "latency_max_ms": float(lat.max()),
        **fidelity(np.array(result["raw_ms"]), measured, {
            f"{BLOCK}k": from_block, f"{BLOCK}k+{CHANNEL_STEP}": ~from_block}),
        "plain_sum_mape": mape(np.array(result["plain_sum_ms"])[a], lat),
        "twice": fidelity(np.array(result["raw_twice_ms"]), measured),
        "macs": fidelity(np.array([float(net["macs"]) for net in networks]), measured),
        "delta_measured_median": float(np.median(np.abs(measured_delta) / lat)),
        "delta_measured_positive": float(np.mean(measured_delta > 0)),
        "network_spread_median": float(np.median([s.spread for stats in passes for s in stats])),
    }
    if len(per_pass) > 1:
        first, second = per_pass[0], per_pass[1]
        first_delta, second_delta = first[a] - first[b], second[a] - second[b]
        summary["pass_to_pass_latency"] = float(np.mean(np.abs(first - second) / measured))
        summary["pass_to_pass_delta_median"] = float(np.median(np.abs(first_delta - second_delta) / lat))
        summary["pass_to_pass_sign_agreement"] = float(np.mean(np.sign(first_delta) == np.sign(second_delta)))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one size, 8 prunings: a few minutes")
    parser.add_argument("--prunings", type=int, default=None, help="random prunings per (model, size)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "out"))
    parser.add_argument("--report", metavar="JSON", help="measure nothing: recompute the figures "
                        "of a saved results file (rewritten in place) and print them")
    args = parser.parse_args()
    if args.report:
        path = Path(args.report)
        report = json.loads(path.read_text())
        for row in report["rows"]:
            row.update(summarise(row["networks"], row))
        path.write_text(json.dumps(report, indent=1))
        print_table(report)
        return
    size = dict(QUICK if args.quick else FULL)
    if args.prunings:
        size["prunings"] = args.prunings
    if size["prunings"] < 3:
        parser.error("--prunings must be at least 3 (a calibration needs other prunings to fit on)")
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started, load_start = time.perf_counter(), load_average()
    print(f"load average at start: {load_start}", flush=True)
    rows = []
    case = 0
    for arch, width in MODELS:
        for pixels in size["sizes"]:
            case += 1
            analysis, x, networks, mismatched = build_networks(arch, width, pixels, size["prunings"],
                                                               args.seed, case)
            if mismatched:
                print(f"  WARNING: {mismatched} networks' traced layers differ from "
                      "NetworkAnalysis.signatures", flush=True)
            for runtime in RUNTIMES:
                load = load_average()
                result = measure_case(networks, x, runtime, size["passes"],
                                      np.random.default_rng([args.seed, case, len(rows)]))
                summary = summarise(networks, result)
                row = {"model": f"{arch}-{width:g}", "size": pixels, "runtime": runtime,
                       "groups": len(analysis.groups), "signature_mismatches": mismatched,
                       "load_before": load, **summary, **{k: v for k, v in result.items()
                                                          if k not in ("passes",)},
                       "networks": [{"config": net["config"], "step_group": net["step_group"],
                                     "macs": net["macs"]} for net in networks],
                       "passes": result["passes"]}
                rows.append(row)
                print(f"  {row['model']} {pixels}px {runtime}: {row['entries']} entries in "
                      f"{row['table_seconds']:.0f} s, networks {row['networks_seconds']:.0f} s; "
                      f"raw MAPE {row['raw_mape']:.1%}, calibrated {row['calibrated_mape_2fold']:.1%} "
                      f"(2-fold) / {row['calibrated_mape_loo']:.1%} (LOO), "
                      f"r {row['pearson']:.3f}", flush=True)
            del networks
    report = {"minutes": (time.perf_counter() - started) / 60, "load_start": load_start,
              "load_end": load_average(), "quick": args.quick, "seed": args.seed,
              "size": size, "device": device_facts(),
              "table_protocol": asdict(TABLE_PROTOCOL), "network_protocol": asdict(NETWORK_PROTOCOL),
              "rows": rows}
    name = "lut_fidelity_quick.json" if args.quick else "lut_fidelity.json"
    (out / name).write_text(json.dumps(report, indent=1))
    print_table(report)
    print(f"\nresults: {out / name}")


def print_table(report: dict) -> None:
    rows = report["rows"]
    head = f"{'model':<16}{'px':>4} {'runtime':<12}"
    print("\nwhole networks (MAPE; r: Pearson of raw sum and measurement; cal: affine calibration "
          "fitted on other prunings;\n2x table: every entry measured twice, min kept; rep: "
          "pass-to-pass difference of the measurement)")
    print(f"{head}{'ms (min-max)':>15}{'raw':>7}{'r':>7}{'cal 2f':>8}{'cal LOO':>8}{'worst':>7}"
          f"{'MACs':>7}{'2x tbl':>8}{'worst':>7}{'rep':>6}{'spread':>7}")
    for r in rows:
        print(f"{r['model']:<16}{r['size']:>4} {r['runtime']:<12}"
              f"{r['latency_min_ms']:>7.3f}-{r['latency_max_ms']:<7.3f}{r['raw_mape']:>7.1%}"
              f"{r['pearson']:>7.3f}{r['calibrated_mape_2fold']:>8.1%}{r['calibrated_mape_loo']:>8.1%}"
              f"{r['calibrated_max_error_loo']:>7.1%}{r['macs']['calibrated_mape_loo']:>7.1%}"
              f"{r['twice']['calibrated_mape_loo']:>8.1%}{r['twice']['calibrated_max_error_loo']:>7.1%}"
              f"{r.get('pass_to_pass_latency', float('nan')):>6.1%}{r['network_spread_median']:>7.1%}")
    print("\none-step deltas, relative to the network's latency (step: measured saving; err: "
          "median |estimated - measured|;\nsign: share with the measured sign; saves: share "
          "measured faster; rep: the measurement's own pass-to-pass err and sign)")
    print(f"{head}{'step':>7}{'err':>7}{'sign':>6}{'r':>7}{'2x err':>8}{'2x sign':>8}{'MACs err':>9}"
          f"{'saves':>7}{'rep err':>8}{'rep sign':>9}")
    for r in rows:
        print(f"{r['model']:<16}{r['size']:>4} {r['runtime']:<12}{r['delta_measured_median']:>7.2%}"
              f"{r['delta_error_median']:>7.2%}{r['delta_sign_agreement']:>6.0%}"
              f"{r['delta_pearson'] or float('nan'):>7.2f}"
              f"{r['twice']['delta_error_median']:>8.2%}{r['twice']['delta_sign_agreement']:>8.0%}"
              f"{r['macs']['delta_error_median']:>9.2%}{r['delta_measured_positive']:>7.0%}"
              f"{r.get('pass_to_pass_delta_median', float('nan')):>8.2%}"
              f"{r.get('pass_to_pass_sign_agreement', float('nan')):>9.0%}")
    print(f"\none-step deltas by the channel count stepped from (median saving, measured / estimated; "
          f"sign agreement; n):\n{BLOCK} k -> {BLOCK} k - {CHANNEL_STEP} keeps the padded work of "
          f"{BLOCK}-channel blocks, {BLOCK} k + {CHANNEL_STEP} -> {BLOCK} k removes a block")
    print(f"{head}{f'from {BLOCK}k':>26}{f'from {BLOCK}k+{CHANNEL_STEP}':>30}")
    for r in rows:
        cells = []
        for name in (f"{BLOCK}k", f"{BLOCK}k+{CHANNEL_STEP}"):
            d = r["delta_by_step_from"].get(name)
            cells.append(f"{d['measured_median']:+.2%} / {d['estimated_median']:+.2%} "
                         f"{d['sign_agreement']:>4.0%} {d['n']:>2}" if d else "-")
        print(f"{r['model']:<16}{r['size']:>4} {r['runtime']:<12}{cells[0]:>26}{cells[1]:>30}")
    print("\ncost (table s: measuring the entries once, as the engine does; entry change: "
          "median change of an entry's min\nwhen measured again later, and the share that "
          "changed by more than 10%)")
    print(f"{head}{'entries':>8}{'table s':>8}{'ms/entry':>9}{'change':>8}{'>10%':>6}"
          f"{'nets s':>8}{'load before':>20}")
    for r in rows:
        print(f"{r['model']:<16}{r['size']:>4} {r['runtime']:<12}{r['entries']:>8}"
              f"{r['table_seconds']:>8.0f}{1000 * r['table_seconds'] / r['entries']:>9.0f}"
              f"{r['entry_change_median']:>8.1%}{r['entries_changed_over_10pct']:>6.0%}"
              f"{r['networks_seconds']:>8.0f}{str(r['load_before']):>20}")
    entries = sum(r["entries"] for r in rows)
    seconds = sum(r["table_seconds"] for r in rows)
    print(f"\n{entries} table entries measured in {seconds / 60:.1f} min "
          f"({1000 * seconds / max(entries, 1):.0f} ms each); {report['minutes']:.1f} min in all; "
          f"load average {report['load_start']} at start, {report['load_end']} at end")


if __name__ == "__main__":
    main()
