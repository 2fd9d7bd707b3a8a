"""Settings of one NetAdapt run, and the range of every numeric setting.

``SETTING_RANGES`` is the one statement of what each numeric setting accepts: ``AdaptConfig``
checks itself against it when constructed (so the CLI, the job runner and stored checkpoints are
all held to it), the job form builds its fields' limits and help texts from it, and the API
schema derives its ``minimum``/``maximum`` from the form. The ranges are generous for a demanding
user but finite, so one job cannot hold a worker for days.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from .floors import FloorRule
from .resources import METRICS

SELECTION_RULES = ("accuracy", "holdout_loss", "loss_per_resource")


def show_number(value: float) -> str:
    """A limit or value as a reader writes it: 20,000, 0.025, 1e+15."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return repr(value)
    if math.isfinite(value) and value == int(value) and abs(value) <= 1e7:
        return f"{int(value):,}"
    return f"{value:.6g}"


@dataclass(frozen=True)
class Range:
    """The numbers a setting accepts: ``low`` to ``high``, both included unless marked open."""

    low: float
    high: float
    integer: bool = False
    low_open: bool = False   # ``low`` itself is refused
    high_open: bool = False  # ``high`` itself is refused

    def contains(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and not isinstance(value, int):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below  # False for NaN

    def describe(self) -> str:
        """``"a whole number from 1 to 256"``, ``"a number above 0 and at most 1"``..."""
        kind = "a whole number" if self.integer else "a number"
        low, high = show_number(self.low), show_number(self.high)
        if not self.low_open and not self.high_open:
            return f"{kind} from {low} to {high}"
        start = f"above {low}" if self.low_open else f"at least {low}"
        end = f"below {high}" if self.high_open else f"at most {high}"
        return f"{kind} {start} and {end}"


#: The range of every numeric setting (AdaptConfig fields and the job's data options).
SETTING_RANGES: dict[str, Range] = {
    "initial_reduction": Range(0, 1, low_open=True, high_open=True),
    "decay": Range(0, 1, low_open=True),
    "channel_step": Range(1, 256, integer=True),
    "short_term_steps": Range(0, 20_000, integer=True),
    "long_term_epochs": Range(0, 200),
    "batch_size": Range(1, 4096, integer=True),
    "short_term_lr": Range(0, 10, low_open=True),
    "long_term_lr": Range(0, 10, low_open=True),
    "momentum": Range(0, 1, high_open=True),
    "weight_decay": Range(0, 1),
    "max_iterations": Range(1, 200, integer=True),
    "min_proposals": Range(0, 1000, integer=True),
    "seed": Range(0, 2**31 - 1, integer=True),
    # The levers beyond the paper (issue 8); 0 turns each off.
    "bn_recalibration_batches": Range(0, 1000, integer=True),
    "distillation_alpha": Range(0, 1),
    "distillation_temperature": Range(0, 100, low_open=True),
    "floor_minimum": Range(0, 4096, integer=True),
    "floor_fraction": Range(0, 1),
    # The data: a holdout is a count of images or a fraction of the training images.
    "holdout_count": Range(1, 1_000_000, integer=True),
    "holdout_fraction": Range(0, 1, low_open=True, high_open=True),
    "limit_train": Range(1, 10_000_000, integer=True),
    # The command line's own: training from scratch, and how this machine measures.
    "pretrain_epochs": Range(0, 1000, low_open=True),
    "pretrain_lr": Range(0, 10, low_open=True),
    "width": Range(0, 4, low_open=True),
    "resolution": Range(4, 1024, integer=True),
    "threads": Range(1, 256, integer=True),
    "rounds": Range(1, 100, integer=True),
    "runs_per_round": Range(1, 10_000, integer=True),
}
#: The budget: a fraction of the original (relative), or an absolute amount in the metric's unit.
RELATIVE_BUDGET = Range(0, 1, low_open=True, high_open=True)
ABSOLUTE_BUDGETS: dict[str, Range] = {
    "latency": Range(0, 100_000, low_open=True),  # ms
    "macs": Range(0, 1e15, low_open=True),
    "params": Range(0, 1e12, low_open=True),
}


def range_problem(name: str, value: object, allowed: Range | None = None) -> str | None:
    """``"<name> must be <range>, not <value>"`` when ``value`` is out of the setting's range."""
    allowed = allowed or SETTING_RANGES[name]
    if allowed.contains(value):
        return None
    return f"{name} must be {allowed.describe()}, not {show_number(value)}"


def holdout_problem(value: object, name: str = "holdout") -> str | None:
    """Why ``value`` is not a holdout (a count of images, or a fraction below 1), if it is not."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 1:
        count = SETTING_RANGES["holdout_count"]
        if value != int(value) or not count.contains(int(value)):
            return (f"{name} must be a fraction below 1 or a count of images ("
                    f"{count.describe()}), not {show_number(value)}")
        return None
    fraction = SETTING_RANGES["holdout_fraction"]
    if fraction.contains(value):
        return None
    return (f"{name} must be a fraction ({fraction.describe()}) or a count of images ("
            f"{SETTING_RANGES['holdout_count'].describe()}), not {show_number(value)}")


class SettingsError(ValueError):
    """Settings out of their ranges; ``problems`` maps each offending field to its message."""

    def __init__(self, problems: dict[str, str]) -> None:
        super().__init__("; ".join(problems.values()))
        self.problems = dict(problems)


@dataclass(frozen=True)
class AdaptConfig:
    """Everything that decides what an adaptation does (and so goes into its checkpoint)."""

    metric: str = "latency"          # resource that drives decisions: latency | macs | params
    budget: float = 0.5              # target: fraction of the original if budget_relative, else absolute
    budget_relative: bool = True     # absolute budgets are in ms (latency), MACs or parameters
    initial_reduction: float = 0.025  # ΔR_0 as a fraction of the original resource (paper: 0.025)
    decay: float = 0.96              # ΔR_i = initial_reduction · R_0 · decay^i (paper: 0.96)
    channel_step: int = 8            # channel counts are multiples of this (and never below it)
    short_term_steps: int = 100      # SGD steps of each proposal's short-term fine-tune
    long_term_epochs: float = 1.0    # epochs of the final long-term fine-tune (0 skips it)
    batch_size: int = 128
    short_term_lr: float = 0.01
    long_term_lr: float = 0.01       # cosine-annealed from this value
    momentum: float = 0.9
    weight_decay: float = 4e-5
    selection: str = "accuracy"      # one of SELECTION_RULES: accuracy is the paper's
    max_iterations: int = 50
    seed: int = 0
    measure_iterations: bool = True  # measure each chosen network whole (latency metric only)
    # Beyond the paper (the "paper" preset turns them off): see PRESETS.
    bn_recalibration_batches: int = 10  # re-estimate batch-norm statistics on this many training
    #                                     batches after every fine-tune, before scoring (0: off)
    distillation_alpha: float = 0.5   # weight of distillation from the original in fine-tunes (0: off)
    distillation_temperature: float = 4.0
    floor_minimum: int = 0            # no group shrinks below this many channels ...
    floor_fraction: float = 0.0       # ... nor below this fraction of its original channels
    min_proposals: int = 4            # an iteration that fewer groups can meet asks for a smaller
    #                                   cut, the most this many can make (0: the paper's schedule)
    keep_pace: bool = False           # ... yet never smaller than the budget still needs at an
    #                                   even pace over the iterations left (``schedule.pace_target``;
    #                                   off: it lost on the benchmark, see bench/README.md)

    def __post_init__(self) -> None:
        """Check every field against its range: SettingsError naming each field out of it."""
        problems: dict[str, str] = {}
        if self.metric not in METRICS:
            problems["metric"] = f"metric must be one of {', '.join(METRICS)}, not {self.metric!r}"
        for flag in ("budget_relative", "measure_iterations", "keep_pace"):
            if not isinstance(getattr(self, flag), bool):
                problems[flag] = f"{flag} must be true or false, not {getattr(self, flag)!r}"
        budget_range = (RELATIVE_BUDGET if self.budget_relative is True
                        else ABSOLUTE_BUDGETS.get(self.metric))
        if budget_range is not None:
            problem = range_problem("budget", self.budget, budget_range)
            if problem:
                problems["budget"] = problem + (" (a fraction of the original)" if self.budget_relative
                                                else f" (an absolute {self.metric} budget)")
        for name in (f.name for f in fields(self)):
            if name in SETTING_RANGES:
                problem = range_problem(name, getattr(self, name))
                if problem:
                    problems[name] = problem
        if self.selection not in SELECTION_RULES:
            problems["selection"] = (f"selection must be one of {', '.join(SELECTION_RULES)}, "
                                     f"not {self.selection!r}")
        if problems:
            raise SettingsError(problems)

    def floor_rule(self) -> FloorRule | None:
        """The per-group channel floor these settings ask for (None: no floor beyond the step)."""
        if not self.floor_minimum and not self.floor_fraction:
            return None
        return FloorRule(self.floor_minimum, float(self.floor_fraction))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "AdaptConfig":
        """The configuration ``to_dict`` gave; a lever missing from it (a checkpoint or job
        stored before the lever existed) is off, as that run was."""
        return cls(**{**PRESETS["paper"], **data})


#: Named sets of settings. "paper": the plain algorithm of the NetAdapt paper, every lever beyond
#: it off; "recommended": this project's defaults (``AdaptConfig()``).
PRESETS: dict[str, dict] = {
    "recommended": {},
    "paper": {"bn_recalibration_batches": 0, "distillation_alpha": 0.0, "floor_minimum": 0,
              "floor_fraction": 0.0, "min_proposals": 0},
}
#: The settings a preset decides (the levers).
LEVER_SETTINGS = tuple(PRESETS["paper"])


def preset_settings(name: str) -> dict:
    """Every lever's value under preset ``name`` (ValueError naming the presets if unknown)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset '{name}': choose one of {', '.join(PRESETS)}")
    defaults = AdaptConfig()
    return {lever: PRESETS[name].get(lever, getattr(defaults, lever)) for lever in LEVER_SETTINGS}
