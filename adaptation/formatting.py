"""Numbers for people about jobs: resources, accuracies, budgets and where an iteration's time went.

A job's settings read as text (schedule, levers, latency estimate) too. Byte sizes and counts,
which every page names alike, are ``webapp.lib.formatting``'s. This module imports neither Django
nor torch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adaptation.netadapt.config import AdaptConfig

#: The unit of each metric a job can adapt for.
METRIC_UNITS = {"latency": "ms", "macs": "MACs", "params": "parameters"}
NO_VALUE = "—"


def metric_unit(metric: str) -> str:
    """``ms``, ``MACs`` or ``parameters``; an unknown metric is its own unit."""
    return METRIC_UNITS.get(metric, metric)


def resource_text(value: float | None, unit: str) -> str:
    """A resource in its unit: milliseconds to the microsecond, counts with thousands separators."""
    if value is None:
        return NO_VALUE
    return f"{value:.3f} {unit}" if unit == "ms" else f"{value:,.0f} {unit}"


def accuracy_text(value: float | None) -> str:
    """A fraction as a percentage with two decimals."""
    return NO_VALUE if value is None else f"{100 * value:.2f}%"


def budget_text(job_settings: dict) -> str:
    """A job's budget as its settings give it: a share of the original, or an absolute value."""
    metric = job_settings.get("metric", "latency")
    budget = job_settings.get("budget")
    if budget is None:
        return NO_VALUE
    if job_settings.get("budget_relative", True):
        return f"{budget * 100:g}% of the original {metric}"
    return f"{budget:g} {metric_unit(metric)}"


def outcome_text(result: dict | None, job_settings: dict) -> str | None:
    """A finished adaptation's outcome (``FinishRecord.to_dict()``): for a relative latency budget,
    the final network against the original measured side by side, which is what decides whether
    the budget is met; otherwise the final estimate against the budget. None before it finishes."""
    if not result or "budget_met" not in result:
        return None
    met = "budget met" if result["budget_met"] else "budget not met"
    cap = job_settings.get("max_iterations")
    if not result["budget_met"] and cap is not None and result.get("iterations", 0) >= cap:
        met += (f" after all {cap} iterations (a larger Max iterations or Initial reduction, or a "
                "smaller Fewest proposals, lets a job cut further)")
    metric = job_settings.get("metric", "latency")
    ratio, checked = result.get("measured_ratio"), result.get("checked_ratio")
    if metric == "latency" and job_settings.get("budget_relative", True) and ratio is not None:
        text = (f"{ratio:.1%} of the original's latency, measured side by side with it after the "
                f"long-term fine-tune ({result['ab_final']['min_ms']:.3f} ms against "
                f"{result['ab_original']['min_ms']:.3f} ms): {met}")
        if checked is not None:
            text += f"; the iterations stopped at {checked:.1%} by the same check"
        return text
    unit = metric_unit(metric)
    return (f"{resource_text(result.get('resource'), unit)} by the run's estimate, against a budget "
            f"of {resource_text(result.get('budget'), unit)}: {met}")


#: How a latency job's estimate reads (``JobOptions.latency_model``; absent: the table).
LATENCY_MODEL_TEXT = {"table": "calibrated look-up table", "whole": "every candidate measured whole",
                      "auto": "automatic: chosen once the device has measured the original's layers"}


def schedule_text(config: AdaptConfig) -> str:
    """How a job shrinks and fine-tunes."""
    fewest = (f"; an iteration asks for a smaller cut when fewer than {config.min_proposals} "
              "groups can make it" if config.min_proposals else "")
    return (f"ΔR₀ {config.initial_reduction:g} of the original, decay {config.decay:g}, at most "
            f"{config.max_iterations} iterations; {config.short_term_steps} short-term steps, "
            f"{config.long_term_epochs:g} long-term epochs; channels in steps of "
            f"{config.channel_step}{fewest}")


def levers_text(config: AdaptConfig) -> str:
    """The training levers beyond the paper a job uses, or that it uses none."""
    levers = []
    if config.bn_recalibration_batches:
        levers.append(f"batch-norm re-estimation on {config.bn_recalibration_batches} batches")
    if config.distillation_alpha:
        levers.append(f"distillation {config.distillation_alpha:g} at temperature "
                      f"{config.distillation_temperature:g}")
    if config.floor_minimum:
        levers.append(f"at least {config.floor_minimum} channels a group")
    if config.floor_fraction:
        levers.append(f"at least {config.floor_fraction:g} of each group's channels")
    return "; ".join(levers) if levers else "none (the paper's recipe)"


def latency_model_text(job_settings: dict, whole_since: int | None = None) -> str | None:
    """How a latency job estimates its candidates; None for the indirect metrics.
    ``whole_since``: the first iteration measured whole after the table had parted from the
    measurements (``netadapt.table_check``), if it did."""
    if job_settings.get("metric", "latency") != "latency":
        return None
    text = LATENCY_MODEL_TEXT.get(job_settings.get("latency_model", "table"), NO_VALUE)
    if whole_since is not None and job_settings.get("latency_model") != "whole":
        text += (f"; proposed candidates measured whole from iteration {whole_since} on (the table's "
                 "predictions had parted from the measurements)")
    return text


#: What people call each phase of an iteration's time (``netadapt.loop.PHASES``, same order).
PHASE_LABELS = {"measure_table_s": "measuring layers", "plan_s": "planning",
                "finetune_s": "fine-tuning", "evaluate_s": "evaluating",
                "measure_network_s": "measuring the network",
                "wait_measure_s": "waiting for the device", "wait_proposals_s": "waiting for proposals",
                "overhead_s": "overhead"}


def seconds_text(value: float) -> str:
    """``0.42 s``, ``12.3 s``, ``4 min 05 s``: a duration for people."""
    if value < 60:
        return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"
    minutes, seconds = divmod(round(value), 60)
    return f"{minutes} min {seconds:02d} s"


def phase_breakdown(record: dict) -> list[dict]:
    """The nonzero phases of an iteration record (``IterationRecord.to_dict()``), in order:
    ``key``, ``label``, ``seconds`` (text), ``share`` (percent of the wall time, rounded to
    a tenth) and ``percent`` (its text); [] for a record without a wall time (the original network, older jobs)."""
    phases, wall = record.get("phases_s") or {}, record.get("wall_s")
    if not wall:
        return []
    return [{"key": key, "label": label, "seconds": seconds_text(phases[key]),
             "share": round(100 * phases[key] / wall, 1), "percent": f"{100 * phases[key] / wall:.0f}%"}
            for key, label in PHASE_LABELS.items() if phases.get(key)]
