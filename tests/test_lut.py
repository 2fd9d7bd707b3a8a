"""Look-up tables, the overhead-corrected sum and the calibration against whole networks."""
from __future__ import annotations

import numpy as np
import pytest

from adaptation.netadapt.lut import AffineCalibration, MemoryLatencyTable, missing_signatures
from adaptation.netadapt.resources import CALL_OVERHEAD_SIGNATURE, LatencyTableModel
from devices.measure.signature import LayerSignature
from devices.measure.stats import TimingStats


def conv(channels: int) -> LayerSignature:
    return LayerSignature("conv", channels, channels, (3, 3), (1, 1), (1, 1), (1, 1), 1, (8, 8), 1,
                          False, "bn+relu")


def stats(ms: float) -> TimingStats:
    return TimingStats.from_samples([ms, ms * 1.1, ms * 1.2])


def test_it_is_a_plain_ratio_until_three_points():
    calibration = AffineCalibration()
    assert calibration(2.0) == 2.0
    calibration.add(2.0, 1.0)
    calibration.add(4.0, 2.2)
    assert calibration.coefficients() == (pytest.approx(3.2 / 6.0), 0.0)


def test_it_fits_an_affine_map_from_three_points():
    calibration = AffineCalibration()
    for raw in (1.0, 2.0, 3.0):
        calibration.add(raw, 0.8 * raw + 0.1)
    a, b = calibration.coefficients()
    assert a == pytest.approx(0.8) and b == pytest.approx(0.1)
    assert calibration.quality()["mape"] == pytest.approx(0.0, abs=1e-12)


def test_one_slow_measurement_tilts_neither_the_line_nor_the_ratio():
    points = [(0.100, 0.0905), (0.099, 0.1117), (0.098, 0.0885), (0.097, 0.0875)]
    # Close raw sums, one measured 20% slow: least squares gives a slope of 3.2 where the
    # latency is ~0.9x the sum, and would extrapolate wildly; the plain ratio is 5% high.
    slope = np.polyfit([r for r, _ in points], [m for _, m in points], 1)[0]
    plain = sum(m for _, m in points) / sum(r for r, _ in points)
    assert slope > 2 * plain
    calibration = AffineCalibration(list(points))
    assert calibration.coefficients() == (pytest.approx(1.0), pytest.approx(-0.0095))
    for raw, measured in (points[0], *points[2:]):  # the three undisturbed points, exactly
        assert calibration(raw) == pytest.approx(measured)
    assert abs(plain * 0.100 - 0.0905) / 0.0905 > 0.05


def test_it_keeps_the_median_ratio_when_the_points_give_no_sensible_slope():
    points = [(0.100, 0.090), (0.0999, 0.120), (0.0998, 0.0898), (0.0997, 0.060)]
    # Pairwise slopes of hundreds: any line through these is noise.
    calibration = AffineCalibration(list(points))
    ratios = sorted(m / r for r, m in points)
    assert calibration.coefficients() == (pytest.approx((ratios[1] + ratios[2]) / 2), 0.0)


def test_a_run_with_one_loaded_measurement_stays_within_a_percent_of_the_others():
    """A run's points fall with its raw sums; one is measured 41% slow (seen in a tuning run)."""
    raws = [0.30, 0.28, 0.26, 0.24, 0.22, 0.20]
    measured = [0.85 * raw + 0.01 for raw in raws]
    measured[1] *= 1.41
    calibration = AffineCalibration()
    for raw, value in zip(raws, measured):
        calibration.add(raw, value)
    for raw in (0.18, 0.15):  # the next iterations' candidates
        assert calibration(raw) == pytest.approx(0.85 * raw + 0.01, rel=0.01)
    slope, intercept = np.polyfit(raws, measured, 1)  # what least squares made of it: 19% low
    assert (slope * 0.15 + intercept) / (0.85 * 0.15 + 0.01) < 0.85


def test_it_round_trips_through_a_dict():
    calibration = AffineCalibration()
    for raw in (1.0, 2.0, 3.5):
        calibration.add(raw, 0.5 * raw)
    again = AffineCalibration.from_dict(calibration.to_dict())
    assert again.points == calibration.points
    assert again.coefficients() == calibration.coefficients()


def test_it_refuses_non_positive_points():
    with pytest.raises(ValueError, match="positive"):
        AffineCalibration().add(0.0, 1.0)


def test_the_table_saves_loads_and_reports_missing_entries(tmp_path):
    table = MemoryLatencyTable({"runtime": "onnxruntime", "threads": 1})
    table.add({conv(8): stats(0.05), conv(16): stats(0.09)})
    path = tmp_path / "lut.json"
    table.save(path)
    loaded = MemoryLatencyTable.load(path)
    assert loaded.meta == table.meta and loaded.entries == table.entries
    assert missing_signatures(loaded, [conv(8), conv(24), conv(24), conv(16)]) == [conv(24)]


def test_the_sum_counts_the_call_overhead_once():
    table = MemoryLatencyTable()
    table.add({CALL_OVERHEAD_SIGNATURE: stats(0.010), conv(8): stats(0.030),
               conv(16): stats(0.050), conv(4): stats(0.008)})
    model = LatencyTableModel(table, estimator="min")
    # 0.010 once, plus each layer's time above the overhead (never negative).
    assert model.raw_ms([conv(8), conv(16), conv(4)]) == pytest.approx(0.010 + 0.020 + 0.040 + 0.0)
    assert model.missing([conv(8), conv(32)]) == [conv(32)]


def test_the_estimate_is_the_calibrated_sum():
    table = MemoryLatencyTable()
    table.add({CALL_OVERHEAD_SIGNATURE: stats(0.010), conv(8): stats(0.030)})
    model = LatencyTableModel(table, AffineCalibration([(0.030, 0.015)]))
    estimate = model.estimate([conv(8)])
    assert estimate.raw == pytest.approx(0.030) and estimate.value == pytest.approx(0.015)
    with pytest.raises(KeyError, match="not in the look-up table"):
        model.estimate([conv(64)])
