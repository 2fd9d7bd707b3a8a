"""TimingStats: summary values from known samples, spread, dict round-trip."""

import math

import numpy as np
import pytest

from devices.measure import TimingStats

SAMPLES = [3.0, 1.0, 4.0, 1.5, 5.0, 9.0, 2.0, 6.0, 5.5, 3.5]


def test_from_samples_known_values() -> None:
    stats = TimingStats.from_samples(SAMPLES)
    assert stats.n == 10
    assert stats.min_ms == 1.0
    assert stats.median_ms == pytest.approx(3.75)
    assert stats.p10_ms == pytest.approx(np.percentile(SAMPLES, 10))
    assert stats.p90_ms == pytest.approx(np.percentile(SAMPLES, 90))
    assert stats.p10_ms == pytest.approx(1.45)  # linear interpolation between 1.0 and 1.5
    assert stats.p90_ms == pytest.approx(6.3)   # between 6.0 and 9.0
    assert stats.mean_ms == pytest.approx(4.05)
    assert stats.std_ms == pytest.approx(np.std(SAMPLES))


def test_single_sample_has_zero_std_and_spread() -> None:
    stats = TimingStats.from_samples([2.5])
    assert (stats.n, stats.min_ms, stats.median_ms, stats.std_ms) == (1, 2.5, 2.5, 0.0)
    assert stats.spread == 0.0


def test_spread_is_relative_width() -> None:
    stats = TimingStats.from_samples(SAMPLES)
    assert stats.spread == pytest.approx((6.3 - 1.45) / 3.75)


def test_spread_with_zero_median() -> None:
    assert TimingStats.from_samples([0.0, 0.0, 0.0]).spread == 0.0
    assert math.isinf(TimingStats.from_samples([0.0] * 9 + [1.0, 1.0]).spread)


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [float("inf")]])
def test_from_samples_rejects_empty_and_non_finite(bad: list[float]) -> None:
    with pytest.raises(ValueError):
        TimingStats.from_samples(bad)


def test_dict_round_trip() -> None:
    stats = TimingStats.from_samples(SAMPLES)
    d = stats.to_dict()
    assert set(d) == {"n", "min_ms", "p10_ms", "median_ms", "p90_ms", "mean_ms", "std_ms"}
    assert TimingStats.from_dict(d) == stats


def test_from_dict_rejects_missing_and_unknown_keys() -> None:
    d = TimingStats.from_samples(SAMPLES).to_dict()
    with pytest.raises(ValueError, match="missing"):
        TimingStats.from_dict({k: v for k, v in d.items() if k != "median_ms"})
    with pytest.raises(ValueError, match="unknown"):
        TimingStats.from_dict({**d, "extra": 1})


def test_the_measurement_core_imports_without_torch():
    """``import devices.measure`` (signatures, statistics, the timing protocol) loads no torch:
    the agent and the engine's pure parts share it."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    probe = ("import json, sys; import devices.measure as m; "
             "m.TimingStats.from_samples([1.0, 2.0]); m.MeasureProtocol(); "
             "print(json.dumps(sorted({n.split('.')[0] for n in sys.modules} & {'torch', 'onnx', 'django'})))")
    env = {**{k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}, "PYTHONPATH": str(repo)}
    result = subprocess.run([sys.executable, "-c", probe], cwd=repo, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
