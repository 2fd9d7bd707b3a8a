"""The resource-reduction schedule: ΔR_i = initial_reduction · R_0 · decay^i."""
from __future__ import annotations

import pytest

from adaptation.netadapt.schedule import (iteration_target, reachable_fraction, reduction,
                                          unreachable_warning)

PAPER = (0.025, 0.96)  # the paper's initial reduction and decay


@pytest.mark.parametrize("iteration, expected", [(0, 2.5), (1, 2.4), (2, 2.304)])
def test_it_reduces_by_the_paper_schedule(iteration, expected):
    assert reduction(iteration, 100.0, *PAPER) == pytest.approx(expected, rel=1e-12)


def test_it_targets_current_minus_reduction_above_the_budget():
    assert iteration_target(90.0, 1, 100.0, *PAPER, budget=50.0) == pytest.approx(87.6)


def test_it_clamps_the_target_at_the_budget():
    # 51 - 2.5 = 48.5 would undershoot the budget of 50: the target is the budget itself.
    assert iteration_target(51.0, 0, 100.0, *PAPER, budget=50.0) == 50.0
    # Exactly at the boundary nothing changes either.
    assert iteration_target(52.5, 0, 100.0, *PAPER, budget=50.0) == pytest.approx(50.0)


def test_it_has_an_exact_reachable_fraction_for_ten_iterations():
    expected = 0.025 * (1 - 0.96 ** 10) / (1 - 0.96)
    assert reachable_fraction(*PAPER, 10) == pytest.approx(expected, rel=1e-12)
    assert reachable_fraction(*PAPER, 10) == pytest.approx(
        sum(reduction(i, 1.0, *PAPER) for i in range(10)), rel=1e-12)


def test_it_approaches_62_5_percent_with_many_iterations():
    fractions = [reachable_fraction(*PAPER, n) for n in (10, 50, 100, 1000)]
    assert fractions == sorted(fractions)
    assert all(f < 0.625 for f in fractions)
    assert fractions[-1] == pytest.approx(0.625, abs=1e-12)


def test_it_reaches_initial_reduction_times_iterations_without_decay():
    assert reachable_fraction(0.1, 1.0, 5) == pytest.approx(0.5)


def test_it_does_not_warn_when_the_budget_is_reachable():
    assert unreachable_warning(50.0, 100.0, *PAPER, 100) is None


def test_it_warns_when_the_budget_is_out_of_reach():
    message = unreachable_warning(30.0, 100.0, *PAPER, 100)
    assert isinstance(message, str)
    assert "70.0%" in message  # what the budget needs removed
    assert "100 iterations" in message
