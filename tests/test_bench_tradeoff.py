"""bench/tradeoff.py's summary: the figures of issue 8's goal recomputed from raw rows (the
benchmark itself trains for hours and is not run here)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.tradeoff_summary import (accuracy_at_latency, goal_holds, latency_at_accuracy,
                                    monotone_curve, summarise)

RESULTS = sorted((Path(__file__).resolve().parent.parent / "bench" / "results").glob("tradeoff*.json"))


def row(kind: str, latency: float, accuracy: float, seed: int = 0, ratio: float | None = None,
        regime: str = "r") -> dict:
    extra = {"ratio": ratio} if ratio is not None else {}
    return {"regime": regime, "kind": kind, "seed": seed, "accuracy": accuracy,
            "latency": {"min_ms": latency, "p10_ms": latency, "median_ms": latency,
                        "p90_ms": latency}, **extra}


CURVE = [row("uniform", 0.1, 0.80, ratio=0.5), row("uniform", 0.2, 0.90, ratio=0.75),
         row("uniform", 0.3, 0.95, ratio=1.0)]


def test_the_monotone_fit_pools_a_dip_instead_of_following_it():
    curve = monotone_curve([(0.1, 0.8), (0.2, 0.9), (0.25, 0.86), (0.3, 0.95)])
    accuracies = [a for _, a in curve]
    assert accuracies == sorted(accuracies)
    assert accuracies[1] == accuracies[2] == pytest.approx(0.88)


def test_interpolation_both_ways_and_the_bounds_outside_the_curve():
    curve = monotone_curve([(0.1, 0.8), (0.2, 0.9), (0.3, 0.95)])
    assert latency_at_accuracy(curve, 0.85) == (pytest.approx(0.15), None)
    assert latency_at_accuracy(curve, 0.97) == (0.3, "lower")   # more accurate than x1
    assert latency_at_accuracy(curve, 0.70) == (0.1, "upper")   # less accurate than the narrowest
    assert accuracy_at_latency(curve, 0.25) == (pytest.approx(0.925), None)
    assert accuracy_at_latency(curve, 0.05) == (0.8, "lower")
    assert accuracy_at_latency(curve, 0.40) == (0.95, "upper")


def test_a_seed_places_both_methods_on_its_own_curve():
    rows = CURVE + [row("netadapt-latency", 0.1, 0.90), row("netadapt-macs", 0.15, 0.90),
                    row("uniform", 0.1, 0.50, seed=1, ratio=0.5)]  # another seed's curve: ignored
    seed = summarise(rows)["regimes"][0]["seeds"][0]
    assert seed["latency_vs_uniform"] == pytest.approx(2.0)        # the curve needs 0.2 ms for 90%
    assert seed["macs_vs_uniform"] == pytest.approx(0.2 / 0.15)
    assert seed["latency_vs_macs"] == pytest.approx(1.5)
    assert seed["latency_acc_gain_pts"] == pytest.approx(10.0)     # the curve has 80% at 0.1 ms
    assert seed["bound"] is None
    assert summarise(rows)["regimes"][0]["uniform_drop_x1_to_x05_pts"] == pytest.approx(15.0)


def test_bounded_seeds_are_reported_but_left_out_of_the_mean():
    rows = (CURVE + [row("netadapt-latency", 0.1, 0.90)]
            + [dict(r, seed=1) for r in CURVE] + [row("netadapt-latency", 0.05, 0.99, seed=1)])
    regime = summarise(rows)["regimes"][0]
    assert [s["bound"] for s in regime["seeds"]] == [None, "lower"]
    assert regime["mean"]["latency_vs_uniform"] == pytest.approx(2.0)
    assert regime["mean"]["seeds_counted"] == 1 and regime["mean"]["seeds_bounded"] == 1


def test_the_goal_needs_every_qualifying_regime_and_no_bounds():
    fast = CURVE + [row("netadapt-latency", 0.1, 0.90), row("netadapt-macs", 0.15, 0.90)]
    assert goal_holds(summarise(fast))
    flat = [dict(r, regime="flat", accuracy=0.9) for r in CURVE]       # drops 0 points: not counted
    assert goal_holds(summarise(fast + flat))
    slow = [dict(r, regime="slow") for r in CURVE] + [row("netadapt-latency", 0.25, 0.90, regime="slow")]
    assert not goal_holds(summarise(fast + slow))
    assert not goal_holds(summarise(flat))                               # nothing qualifies


def test_report_recomputes_what_a_run_wrote(tmp_path):
    from bench.tradeoff import report

    rows = CURVE + [row("netadapt-latency", 0.1, 0.90)]
    path = tmp_path / "tradeoff.json"
    path.write_text(json.dumps({"rows": rows, "summary": summarise(rows)}))
    assert report(path) == 0
    document = json.loads(path.read_text())
    document["summary"]["regimes"][0]["seeds"][0]["latency_vs_uniform"] = 1.7
    path.write_text(json.dumps(document))
    assert report(path) == 1


@pytest.mark.parametrize("path", RESULTS, ids=[p.name for p in RESULTS])
def test_committed_results_agree_with_their_rows(path):
    document = json.loads(path.read_text())
    assert json.dumps(summarise(document["rows"]), sort_keys=True) == \
        json.dumps(document["summary"], sort_keys=True)
