"""The trade-off benchmark's summary, computed from its raw rows alone.

Kept apart from `tradeoff.py` (which trains and measures) so that `tradeoff.py --report` and the
unit test recompute exactly what a run wrote, from the committed rows, without torch.

Each row is one network: ``{"regime", "kind", "seed", "ratio"?, "latency": {"min_ms", ...},
"accuracy", ...}`` with ``kind`` one of ``original``, ``uniform``, ``netadapt-latency``,
``netadapt-macs``; a NetAdapt variant's rows (other settings for how channels are chosen) carry
a regime of their own and ``curve``, the regime whose multipliers they are placed against.
``accuracy`` is the accuracy on the run's evaluation split (the official
test set, or a validation split carved from the training data for ablations).

Placing a method against the uniform-multiplier curve of its regime and seed:
- the curve is a monotone (isotonic, non-decreasing) fit of accuracy against measured latency,
  so one noisy multiplier point cannot create a dip that flatters or hurts a method;
- *speedup at equal accuracy* = the curve's latency at the method's accuracy / the method's
  latency; when the method's accuracy lies outside the curve's range, the curve's end is used and
  the figure is only a bound (``"upper"``: the method is less accurate than the narrowest
  multiplier, so the true speedup is at most this; ``"lower"``: more accurate than the widest);
- *accuracy gain at equal latency* = the method's accuracy minus the curve's at the method's
  latency, in points (a bound too outside the curve's latency range).
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
from sklearn.isotonic import IsotonicRegression

METHODS = ("netadapt-latency", "netadapt-macs")


def monotone_curve(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """(latency, accuracy) points as a non-decreasing accuracy-over-latency fit, by latency."""
    points = sorted(points)
    if not points:
        return []
    latencies = np.array([p[0] for p in points], dtype=float)
    accuracies = np.array([p[1] for p in points], dtype=float)
    fitted = IsotonicRegression(increasing=True).fit_transform(latencies, accuracies)
    return [(float(l), float(a)) for l, a in zip(latencies, fitted)]


def latency_at_accuracy(curve: list[tuple[float, float]], target: float) -> tuple[float, str | None]:
    """The smallest latency at which the monotone ``curve`` reaches ``target``, interpolated
    linearly; outside the curve, its nearest end and which bound that makes the speedup."""
    if target > curve[-1][1]:
        return curve[-1][0], "lower"
    if target < curve[0][1]:
        return curve[0][0], "upper"
    for (l0, a0), (l1, a1) in zip(curve, curve[1:]):
        if a0 <= target <= a1:
            if a1 == a0:
                return l0, None
            return l0 + (target - a0) * (l1 - l0) / (a1 - a0), None
    return curve[0][0], None  # a single-point curve whose accuracy equals the target


def accuracy_at_latency(curve: list[tuple[float, float]], latency: float) -> tuple[float, str | None]:
    """The monotone ``curve``'s accuracy at ``latency``, interpolated linearly; outside its
    latency range, its nearest end and which bound that makes the gain."""
    if latency < curve[0][0]:
        return curve[0][1], "lower"  # the curve can only be lower there: the gain is at least this
    if latency > curve[-1][0]:
        return curve[-1][1], "upper"
    for (l0, a0), (l1, a1) in zip(curve, curve[1:]):
        if l0 <= latency <= l1:
            return (a0 if l1 == l0 else a0 + (latency - l0) * (a1 - a0) / (l1 - l0)), None
    return curve[0][1], None


def _latency(row: dict) -> float:
    return float(row["latency"]["min_ms"])


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(values)) if values else None


def uniform_drop_points(rows: list[dict], seed: int | None = None) -> float | None:
    """Accuracy points the multiplier curve loses from x1 to x0.5 (mean over seeds)."""
    drops = []
    seeds = sorted({r["seed"] for r in rows if r["kind"] == "uniform"}) if seed is None else [seed]
    for s in seeds:
        by_ratio = {r["ratio"]: r["accuracy"] for r in rows if r["kind"] == "uniform" and r["seed"] == s}
        if 1.0 in by_ratio and 0.5 in by_ratio:
            drops.append(100 * (by_ratio[1.0] - by_ratio[0.5]))
    return _mean(drops)


def place(curve: list[tuple[float, float]], row: dict) -> dict:
    """Speedup at equal accuracy and accuracy gain at equal latency of one method's row."""
    at, bound = latency_at_accuracy(curve, row["accuracy"])
    acc, gain_bound = accuracy_at_latency(curve, _latency(row))
    return {"speedup": at / _latency(row), "bound": bound,
            "acc_gain_pts": 100 * (row["accuracy"] - acc), "gain_bound": gain_bound}


def seed_summary(rows: list[dict], seed: int) -> dict | None:
    """The goal's figures for one seed of one regime, or None when it has no latency run."""
    curve = monotone_curve((_latency(r), r["accuracy"]) for r in rows
                           if r["kind"] == "uniform" and r["seed"] == seed and "latency" in r)
    methods = {r["kind"]: r for r in rows if r["kind"] in METHODS and r["seed"] == seed
               and "latency" in r}
    if not curve or "netadapt-latency" not in methods:
        return None
    latency = place(curve, methods["netadapt-latency"])
    macs = place(curve, methods["netadapt-macs"]) if "netadapt-macs" in methods else None
    # A bound on either speedup makes their ratio a bound (or nothing) as well.
    bound = latency["bound"] or (macs["bound"] if macs else None)
    return {"seed": seed,
            "latency_vs_uniform": latency["speedup"],
            "macs_vs_uniform": macs["speedup"] if macs else None,
            "latency_vs_macs": latency["speedup"] / macs["speedup"] if macs else None,
            "latency_acc_gain_pts": latency["acc_gain_pts"],
            "latency_gain_bound": latency["gain_bound"],
            "macs_bound": macs["bound"] if macs else None,
            "bound": bound,
            "drop_x1_to_x05_pts": uniform_drop_points(rows, seed)}


def regime_summary(name: str, rows: list[dict]) -> dict:
    """Per-seed figures and their means; bounds are left out of the means (they do not count)."""
    seeds = sorted({r["seed"] for r in rows if r["kind"] == "netadapt-latency"})
    per_seed = [s for s in (seed_summary(rows, seed) for seed in seeds) if s is not None]
    exact = [s for s in per_seed if s["bound"] is None]
    keys = ("latency_vs_uniform", "macs_vs_uniform", "latency_vs_macs", "latency_acc_gain_pts")
    return {"name": name,
            "uniform_drop_x1_to_x05_pts": uniform_drop_points(rows),
            "seeds": per_seed,
            "mean": {**{k: _mean([s[k] for s in exact]) for k in keys},
                     "seeds_counted": len(exact), "seeds_bounded": len(per_seed) - len(exact)}}


def regime_rows(rows: list[dict], name: str) -> list[dict]:
    """Regime ``name``'s rows plus, for a NetAdapt variant, the multiplier rows of the curve it
    is placed against (its rows name that regime in ``curve``): a variant changes only how
    NetAdapt chooses channels, so it shares its regime's curve, measured in the same session."""
    own = [r for r in rows if r["regime"] == name]
    curves = {r["curve"] for r in own if r.get("curve") not in (None, name)}
    return own + [r for r in rows if r["regime"] in curves and r["kind"] == "uniform"]


def summarise(rows: list[dict]) -> dict:
    """The whole summary: one entry per regime, in the order regimes first appear in ``rows``."""
    names = list(dict.fromkeys(r["regime"] for r in rows))
    return {"regimes": [regime_summary(name, regime_rows(rows, name)) for name in names]}


def placements(rows: list[dict]) -> list[dict]:
    """Every measured row of a method besides the goal's two (the global allocation's points),
    placed against its seed's multiplier curve as ``place`` places them."""
    placed = []
    for name in dict.fromkeys(r["regime"] for r in rows):
        own = regime_rows(rows, name)
        for row in own:
            if row["regime"] != name or row["kind"] in ("uniform", "original", *METHODS) \
                    or "latency" not in row:
                continue
            curve = monotone_curve((_latency(r), r["accuracy"]) for r in own
                                   if r["kind"] == "uniform" and r["seed"] == row["seed"]
                                   and "latency" in r)
            if curve:
                placed.append({"regime": name, "name": row.get("name"), "kind": row["kind"],
                               "seed": row["seed"], "latency_ms": _latency(row),
                               "accuracy": row["accuracy"], **place(curve, row)})
    return placed


def base_regime(name: str) -> str:
    """The network-and-data regime an entry belongs to: ``name`` without its levers (``+...``)
    and its variant (``[...]``). Levers and variants are settings run on a regime, not regimes."""
    return name.split("+", 1)[0].split("[", 1)[0]


def ran_with(rows: list[dict], settings: dict, absent: dict) -> set[str]:
    """The regimes whose NetAdapt rows all ran with ``settings`` (each row's ``config``); a
    setting a row's config lacks (it predates the setting) reads as its ``absent`` value."""
    ran: dict[str, bool] = {}
    for row in rows:
        if row["kind"] in METHODS:
            config = row.get("config", {})
            same = all(config.get(k, absent.get(k)) == v for k, v in settings.items())
            ran[row["regime"]] = ran.get(row["regime"], True) and same
    return {name for name, same in ran.items() if same}


def goal_holds(summary: dict, judged: set[str] | None = None, *, speedup: float = 1.3,
               over_macs: float = 1.1, min_drop_pts: float = 5.0) -> bool:
    """Issue 8's goal on every regime (``base_regime``) with a multiplier curve that drops at least
    ``min_drop_pts``, under any levers: each of its entries in ``judged`` has a mean speedup >=
    ``speedup`` with every seed above 1.0x and none a bound, and latency-driven over MACs-driven
    >= ``over_macs``; a qualifying regime with no judged entry fails. ``judged``: the entries the
    goal is about (the product's defaults, ``ran_with``); None judges every entry with runs. The
    others are ablations: reported, not judged. False when no regime qualifies."""
    entries = summary["regimes"]
    if judged is None:
        judged = {r["name"] for r in entries if r["seeds"]}
    qualifying = {base_regime(r["name"]) for r in entries
                  if (r["uniform_drop_x1_to_x05_pts"] or 0) >= min_drop_pts}
    if not qualifying:
        return False
    for base in qualifying:
        mine = [r for r in entries if base_regime(r["name"]) == base and r["name"] in judged]
        if not mine:
            return False
        for regime in mine:
            seeds, mean = regime["seeds"], regime["mean"]
            if not seeds or any(s["bound"] is not None or s["latency_vs_uniform"] <= 1.0
                                for s in seeds):
                return False
            if (mean["latency_vs_uniform"] or 0) < speedup or (mean["latency_vs_macs"] or 0) < over_macs:
                return False
    return True
