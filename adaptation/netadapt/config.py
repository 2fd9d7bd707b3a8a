"""Settings of one NetAdapt run."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .resources import METRICS

SELECTION_RULES = ("accuracy", "loss_per_resource")


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
    selection: str = "accuracy"      # accuracy (paper) | loss_per_resource (official code)
    max_iterations: int = 50
    seed: int = 0
    measure_iterations: bool = True  # measure each chosen network whole (latency metric only)

    def __post_init__(self) -> None:
        problems = []
        if self.metric not in METRICS:
            problems.append(f"metric must be one of {METRICS}, not '{self.metric}'")
        if self.budget <= 0:
            problems.append(f"budget must be positive, got {self.budget}")
        if self.budget_relative and self.budget >= 1:
            problems.append(f"a relative budget must be below 1 (the original), got {self.budget}")
        if not 0 < self.initial_reduction < 1:
            problems.append("initial_reduction must be in (0, 1)")
        if not 0 < self.decay <= 1:
            problems.append("decay must be in (0, 1]")
        if self.channel_step < 1:
            problems.append("channel_step must be at least 1")
        if self.short_term_steps < 0 or self.long_term_epochs < 0:
            problems.append("fine-tune lengths cannot be negative")
        if self.batch_size < 1 or self.max_iterations < 1:
            problems.append("batch_size and max_iterations must be at least 1")
        if self.selection not in SELECTION_RULES:
            problems.append(f"selection must be one of {SELECTION_RULES}")
        if problems:
            raise ValueError("; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "AdaptConfig":
        return cls(**data)
