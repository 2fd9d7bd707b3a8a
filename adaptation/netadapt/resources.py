"""Resource models: how much of a metric a network described by its layer signatures uses.

All share one interface so the loop does not care whether it is driven by latency (the direct
metric NetAdapt is about) or by an indirect one (MACs, parameters) used for comparison.
"""
from __future__ import annotations

import statistics
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterable, Sequence

from devices.measure.signature import LayerSignature
from devices.measure.stats import TimingStats

from .lut import AffineCalibration, LatencyTable, entry_ms, missing_signatures

METRICS = ("latency", "macs", "params")


@dataclass(frozen=True)
class Estimate:
    """A network's resource: ``value`` drives decisions, ``raw`` is before calibration."""

    value: float
    raw: float


class ResourceModel(ABC):
    """Estimates a metric from layer signatures; declares everything the loop asks of it."""

    metric: str
    unit: str
    measures_networks = False  # True: estimates come from measuring whole candidate networks
    #: The look-up table of per-layer measurements the estimates read (a caller puts the layers
    #: it measures there), or None when the model has none.
    table: LatencyTable | None = None
    #: The calibration of table estimates onto whole-network measurements, or None when the
    #: estimates need none (exact counts, networks measured whole).
    calibration: AffineCalibration | None = None

    def missing(self, signatures: Iterable[LayerSignature]) -> list[LayerSignature]:
        """Signatures that must be measured before ``estimate`` can answer (none for exact metrics)."""
        return []

    def has(self, signatures: Sequence[LayerSignature]) -> bool:
        """Whether ``estimate`` can answer for this network without measuring it whole."""
        return not self.missing(signatures)

    def record(self, signatures: Sequence[LayerSignature], stats: TimingStats) -> None:
        """Keep a whole-network measurement of this network (a model that measures networks
        estimates from these; the others do not need them)."""

    def measured(self, signatures: Sequence[LayerSignature]) -> TimingStats | None:
        """The recorded whole-network measurement of this network, if the model keeps one."""
        return None

    @abstractmethod
    def estimate(self, signatures: Sequence[LayerSignature]) -> Estimate:
        """The resource of the network made of these layers."""


class MacsModel(ResourceModel):
    """Multiply-accumulates of conv and linear layers, counted exactly."""

    metric, unit = "macs", "MACs"

    def estimate(self, signatures: Sequence[LayerSignature]) -> Estimate:
        total = float(sum(sig.macs() for sig in signatures))
        return Estimate(total, total)


class ParamsModel(ResourceModel):
    """Parameters of conv, linear and batch-norm layers, counted exactly."""

    metric, unit = "params", "parameters"

    def estimate(self, signatures: Sequence[LayerSignature]) -> Estimate:
        total = float(sum(sig.params() for sig in signatures))
        return Estimate(total, total)


# A 1x1 convolution of one channel on a 1x1 image: timing it alone measures what the runtime
# spends on a call that does no work, which every isolated-layer entry contains once.
CALL_OVERHEAD_SIGNATURE = LayerSignature("conv", 1, 1, (1, 1), (1, 1), (0, 0), (1, 1), 1, (1, 1),
                                         1, False, "")


class LatencyTableModel(ResourceModel):
    """Latency as the calibrated sum of per-layer look-up-table entries.

    Each entry was timed as a network of its own, so it includes one call's overhead (session
    run, input copy): 8-13 µs with ONNX Runtime, as much as a whole small network. The raw sum
    therefore counts that overhead once, not once per layer: ``overhead + Σ max(entry −
    overhead, 0)``, with the overhead measured as the entry of ``CALL_OVERHEAD_SIGNATURE``.
    Without this, a plain ratio calibration scales the constant overhead along with the layers
    and no single pruning step of a small network can reach its target.
    """

    metric, unit = "latency", "ms"

    def __init__(self, table: LatencyTable, calibration: AffineCalibration | None = None,
                 estimator: str = "min") -> None:
        self.table = table
        self.calibration = calibration if calibration is not None else AffineCalibration()
        self.estimator = estimator

    def missing(self, signatures: Iterable[LayerSignature]) -> list[LayerSignature]:
        return missing_signatures(self.table, [CALL_OVERHEAD_SIGNATURE, *signatures])

    def raw_ms(self, signatures: Sequence[LayerSignature]) -> float:
        entries = self.table.lookup([CALL_OVERHEAD_SIGNATURE, *signatures])
        absent = [sig for sig in [CALL_OVERHEAD_SIGNATURE, *signatures] if sig not in entries]
        if absent:
            raise KeyError(f"{len(absent)} layer signatures are not in the look-up table, "
                           f"e.g. {absent[0].key()}")
        overhead = entry_ms(entries[CALL_OVERHEAD_SIGNATURE], self.estimator)
        return overhead + sum(max(entry_ms(entries[sig], self.estimator) - overhead, 0.0)
                              for sig in signatures)

    def estimate(self, signatures: Sequence[LayerSignature]) -> Estimate:
        raw = self.raw_ms(signatures)
        return Estimate(self.calibration(raw), raw)


class WholeNetworkLatencyModel(ResourceModel):
    """Latency of every candidate network measured whole, for networks where per-layer sums fail.

    At small input sizes a layer's isolated timing is mostly call overhead and the look-up
    table's sum stops tracking the network (DESIGN §4); measuring each candidate whole (well under
    a second each with ONNX Runtime) is then the honest estimate. The loop asks the caller to
    measure the candidates it lacks, keyed by the networks' layer signatures.
    """

    metric, unit = "latency", "ms"
    measures_networks = True

    def __init__(self, estimator: str = "min") -> None:
        self.estimator = estimator
        self._measured: dict[tuple[LayerSignature, ...], TimingStats] = {}

    def has(self, signatures: Sequence[LayerSignature]) -> bool:
        return tuple(signatures) in self._measured

    def record(self, signatures: Sequence[LayerSignature], stats: TimingStats) -> None:
        self._measured[tuple(signatures)] = stats

    def measured(self, signatures: Sequence[LayerSignature]) -> TimingStats | None:
        return self._measured.get(tuple(signatures))

    def estimate(self, signatures: Sequence[LayerSignature]) -> Estimate:
        try:
            stats = self._measured[tuple(signatures)]
        except KeyError:
            raise KeyError("this network has not been measured whole yet") from None
        value = entry_ms(stats, self.estimator)
        return Estimate(value, value)


class TableGuidedWholeModel(WholeNetworkLatencyModel):
    """Networks measured whole where it matters, the look-up table guiding which ones.

    What a run switches to once its table stopped predicting its chosen networks
    (``table_check``). Measuring every candidate whole costs hundreds of networks an iteration
    (every count of every group), so only the networks the plan
    proposes are measured; the others are estimated from the table's predicted saving over the
    current network, scaled by how the savings measured so far compare with the table's (the
    median ratio of the networks measured since the current one: a table that promises 25% and
    delivers 8% is read at a third). The loop re-plans until every proposal stands on a
    measurement (``NetAdapt.GUIDED_ROUNDS`` at most).
    """

    def __init__(self, table_model: ResourceModel) -> None:
        super().__init__(getattr(table_model, "estimator", "min"))
        self.table_model = table_model
        self.table = table_model.table
        self._current: tuple[LayerSignature, ...] | None = None
        self._since: list[tuple[LayerSignature, ...]] = []
        self._scale: float | None = None

    def missing(self, signatures: Iterable[LayerSignature]) -> list[LayerSignature]:
        return self.table_model.missing(signatures)

    def record(self, signatures: Sequence[LayerSignature], stats: TimingStats) -> None:
        super().record(signatures, stats)
        if self._current is not None and tuple(signatures) != self._current:
            self._since.append(tuple(signatures))
        self._scale = None

    def set_current(self, signatures: Sequence[LayerSignature]) -> None:
        """The network the next savings are measured from (measured whole already)."""
        if tuple(signatures) != self._current:
            self._current, self._since, self._scale = tuple(signatures), [], None

    def saving_scale(self) -> float:
        """Measured saving / table saving, median over the networks measured since the current
        one (1 before any): how far the table's savings are to be believed this iteration."""
        if self._scale is None:
            self._scale = self._saving_scale()
        return self._scale

    def _saving_scale(self) -> float:
        if self._current is None or not self.has(self._current):
            return 1.0
        whole_now, table_now = self._whole(self._current), self._table(self._current)
        ratios = [(whole_now - self._whole(s)) / (table_now - self._table(s))
                  for s in self._since if table_now - self._table(s) > 0]
        return max(statistics.median(ratios), 0.0) if ratios else 1.0

    def _whole(self, signatures: Sequence[LayerSignature]) -> float:
        return WholeNetworkLatencyModel.estimate(self, signatures).value

    def _table(self, signatures: Sequence[LayerSignature]) -> float:
        return self.table_model.estimate(signatures).value

    def estimate(self, signatures: Sequence[LayerSignature]) -> Estimate:
        if self.has(signatures):
            return super().estimate(signatures)
        table = self.table_model.estimate(signatures)
        if self._current is None or not self.has(self._current):
            return table
        saving = self._table(self._current) - table.value
        return Estimate(self._whole(self._current) - self.saving_scale() * saving, table.raw)


def exact_model(metric: str) -> ResourceModel:
    """The model of an indirect metric; latency needs a table, see ``LatencyTableModel``."""
    if metric == "macs":
        return MacsModel()
    if metric == "params":
        return ParamsModel()
    raise ValueError(f"'{metric}' is not an exact metric; choose macs or params")
