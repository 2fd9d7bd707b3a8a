"""The pure helpers of bench/lut_fidelity.py: random prunings, one-step pairs, disjoint calibration
fits and the error figures (the benchmark itself measures for minutes and is not run here)."""
from __future__ import annotations

import numpy as np
import pytest

from bench.lut_fidelity import (channel_choices, delta_errors, draw_pruning, fold_calibrations, mape,
                                one_step_smaller, pearson)

ORIGINAL = {"stem": 32, "a": 24, "b": 96, "odd": 20, "thin": 8}


def test_channel_choices_are_steps_up_to_the_original():
    assert channel_choices(32) == [8, 16, 24, 32]
    assert channel_choices(20) == [8, 16, 20]
    assert channel_choices(8) == [8]


def test_draw_pruning_is_seeded_and_keeps_allowed_counts():
    first = [draw_pruning(np.random.default_rng(3), ORIGINAL) for _ in range(2)]
    assert first[0] == first[1]
    rng = np.random.default_rng(0)
    for _ in range(50):
        config = draw_pruning(rng, ORIGINAL)
        assert set(config) == set(ORIGINAL)
        for name, channels in config.items():
            assert channels in channel_choices(ORIGINAL[name])


def test_one_step_smaller_shrinks_one_group_by_one_step():
    rng = np.random.default_rng(1)
    config = {"stem": 32, "a": 16, "b": 96, "odd": 20, "thin": 8}
    for _ in range(20):
        name, smaller = one_step_smaller(rng, config, ORIGINAL)
        assert name != "thin"  # already at the smallest step
        changed = {k for k in config if smaller[k] != config[k]}
        assert changed == {name}
        assert smaller[name] == max(c for c in channel_choices(ORIGINAL[name]) if c < config[name])
    with pytest.raises(ValueError):
        one_step_smaller(rng, {"thin": 8}, ORIGINAL)


def test_fold_calibrations_never_fit_on_the_scored_point():
    raw = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    measured = [0.5 * r + 0.1 for r in raw]
    measured[2] = 50.0  # an outlier: only its own prediction may ignore it
    loo = fold_calibrations(raw, measured, len(raw))
    assert loo[2](raw[2]) == pytest.approx(0.5 * raw[2] + 0.1)
    assert (raw[2], measured[2]) not in loo[2].points
    assert all((raw[2], measured[2]) in cal.points for i, cal in enumerate(loo) if i != 2)
    halves = fold_calibrations(raw, measured, 2)
    assert halves[0] is halves[2] and halves[1] is halves[3]
    assert all((r, m) not in halves[i].points for i, (r, m) in enumerate(zip(raw, measured)))
    with pytest.raises(ValueError):
        fold_calibrations(raw, measured, 1)


def test_error_figures():
    assert mape([1.1, 0.9], [1.0, 1.0]) == pytest.approx(0.1)
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 1, 1], [2, 4, 6]) is None
    figures = delta_errors([0.02, 0.01, -0.01, 0.03], [0.01, 0.01, 0.02, 0.03], [1.0, 1.0, 2.0, 1.0])
    assert figures["sign_agreement"] == pytest.approx(0.75)
    assert figures["median_abs_error"] == pytest.approx(0.005)  # errors 0.01, 0, 0.015, 0
