"""The resource-reduction schedule of NetAdapt: ΔR_i = initial_reduction · R_0 · decay^i."""
from __future__ import annotations


def reduction(iteration: int, initial_resource: float, initial_reduction: float, decay: float) -> float:
    """How much resource iteration ``iteration`` (0-based) must remove."""
    assert iteration >= 0, "iterations count from 0"
    assert 0 < initial_reduction < 1, "initial_reduction is a fraction of the original resource"
    assert 0 < decay <= 1, "decay must be in (0, 1]"
    return initial_reduction * initial_resource * decay ** iteration


def iteration_target(current: float, iteration: int, initial_resource: float,
                     initial_reduction: float, decay: float, budget: float) -> float:
    """Target resource of an iteration, never asking for less than the final budget."""
    return max(current - reduction(iteration, initial_resource, initial_reduction, decay), budget)


def pace_target(current: float, budget: float, iterations_left: int) -> float:
    """The resource an iteration must reach for ``budget`` to be met by an even cut in each of
    the ``iterations_left`` iterations (this one included). With ``AdaptConfig.keep_pace``, a
    cut smaller than the schedule's (``min_proposals``) is never smaller than this."""
    return current - (current - budget) / max(iterations_left, 1)


def reachable_fraction(initial_reduction: float, decay: float, max_iterations: int) -> float:
    """Fraction of the original resource the schedule can remove in ``max_iterations`` iterations.

    With the paper's defaults (0.025, 0.96) the limit for infinitely many iterations is 62.5%.
    """
    if decay == 1:
        return initial_reduction * max_iterations
    return initial_reduction * (1 - decay ** max_iterations) / (1 - decay)


def unreachable_warning(budget: float, initial_resource: float, initial_reduction: float,
                        decay: float, max_iterations: int) -> str | None:
    """A message when the schedule cannot bring the resource down to the budget."""
    removable = reachable_fraction(initial_reduction, decay, max_iterations)
    needed = 1 - budget / initial_resource
    if needed <= removable + 1e-12:
        return None
    return (f"the budget needs {needed:.1%} of the original resource removed, but the schedule "
            f"(initial reduction {initial_reduction}, decay {decay}, {max_iterations} iterations) "
            f"removes at most {removable:.1%}: raise the initial reduction or decay, or allow "
            "more iterations")
