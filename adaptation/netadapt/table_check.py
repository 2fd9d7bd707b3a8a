"""Whether the calibrated look-up table still predicts the networks the loop chooses.

Each iteration's chosen network is measured whole (``AdaptConfig.measure_iterations``), after
the loop chose it on the table's calibrated prediction. A measurement slowed by the machine's
load misses once; a table that misses the same way several iterations in a row is wrong about
the cuts being made. Seen on the benchmark (bench/README.md, the finer schedule): single
8-channel cuts from multiples of 16 took the table's prediction down to 44-47% of the
original's latency while the networks measured 90-94%, since the layout reorders such counts
cost are in no layer's own entry. Sums of layer entries cannot see that; whole networks can.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

#: A prediction misses when the measurement is off it by more than this fraction of it. On the
#: benchmark's committed runs (bench/results/tradeoff*.json, ``predicted_ms``) the faithful ones
#: stayed within 12% for three iterations in a row, even after one measurement slowed by load
#: (+41%) had skewed the calibration; the misled ones missed by 15-52%, more every iteration.
PART_TOLERANCE = 0.15
#: The table has parted from the measurements when this many iterations in a row missed on the
#: same side (a run shorter than this is what a loaded machine does).
PART_RUN = 3


@dataclass(frozen=True)
class Prediction:
    """One iteration's chosen network: its latency as the table predicted it, and as measured."""

    iteration: int
    predicted_ms: float
    measured_ms: float

    @property
    def error(self) -> float:
        """Measured over predicted, minus 1: positive when the network is slower than predicted."""
        return self.measured_ms / self.predicted_ms - 1.0


def predictions(records: Sequence[dict]) -> list[Prediction]:
    """The predictions of ``IterationRecord.to_dict()`` records whose chosen network was measured
    whole and estimated from the table (records of networks estimated whole are left out)."""
    found = []
    for record in records:
        measured = (record.get("measured") or {}).get("min_ms")
        if not measured or record.get("latency_estimate", "table") != "table":
            continue
        chosen = next((p for p in record["proposals"] if p["group"] == record["chosen_group"]), None)
        if chosen is None or not chosen.get("resource"):
            continue
        found.append(Prediction(record["iteration"], float(chosen["resource"]), float(measured)))
    return found


def parted(found: Sequence[Prediction], tolerance: float = PART_TOLERANCE,
           run: int = PART_RUN) -> list[Prediction] | None:
    """The last ``run`` predictions when each missed by more than ``tolerance`` on the same side
    (the table has parted from the measurements), else None."""
    last = list(found[-run:])
    if run < 1 or len(last) < run:
        return None
    if all(p.error > tolerance for p in last) or all(p.error < -tolerance for p in last):
        return last
    return None


def parted_message(run: Sequence[Prediction], switching: bool) -> str:
    """What a job's log says when the table has parted (``switching``: the loop now measures
    the candidates it proposes whole)."""
    side = "slower" if run[0].error > 0 else "faster"
    seen = "; ".join(f"iteration {p.iteration}: predicted {p.predicted_ms:.4g} ms, measured "
                     f"{p.measured_ms:.4g} ms" for p in run)
    then = ("from the next iteration on, the candidate networks the plan proposes are measured "
            "whole instead"
            if switching else "the run goes on with the table, as asked")
    return (f"The look-up table no longer predicts this network: the last {len(run)} chosen "
            f"networks each measured more than {PART_TOLERANCE:.0%} {side} than the table "
            f"predicted ({seen}); {then}.")
