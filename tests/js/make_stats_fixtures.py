"""Write the fixtures that check the browser's statistics (static/js/phone/stats.mjs) against the
server's: each case is a list of samples with what devices.measure.stats and the protocol's
kept_samples make of it.

    .venv/bin/python tests/js/make_stats_fixtures.py [FOLDER]     (default: tests/js/fixtures)

The inputs are drawn from a seeded generator, so the file only changes when the Python code's
answers change; tests/test_phone_js.py regenerates it and fails when the committed one is stale.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from devices.agent.protocol import kept_samples  # noqa: E402
from devices.measure.stats import TimingStats  # noqa: E402

FILE_NAME = "stats.json"
DEFAULT_FOLDER = Path(__file__).resolve().parent / "fixtures"
SEED = 20261204


def sample_cases() -> dict[str, list[float]]:
    """Named sample lists: edge cases first, then sizes around numpy's pairwise-sum blocks."""
    rng = np.random.default_rng(SEED)
    cases: dict[str, list[float]] = {
        "one sample": [0.094],
        "two samples": [0.2, 0.1],
        "all tied": [0.5] * 17,
        "ties at the percentiles": [1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 3.0, 3.0, 3.0],
        "zeros only (spread 0)": [0.0, 0.0, 0.0],
        "zero median, some width (spread inf)": [0.0, 0.0, 0.0, 0.0, 1.0],
        "outliers in a long right tail": [0.1] * 40 + [0.11] * 10 + [5.0, 12.5, 40.0],
        "one low outlier": [0.001] + [0.2] * 30,
        "coarse timer (multiples of 0.1 ms)": [round(0.1 * int(x), 1) for x in rng.integers(1, 6, 60)],
        "tiny values": list(rng.uniform(1e-9, 1e-6, 50)),
        "large values": list(rng.uniform(1e3, 1e5, 50)),
    }
    for n in (3, 7, 8, 9, 15, 16, 17, 127, 128, 129, 200, 255, 256, 257, 1000, 4097):
        cases[f"lognormal n={n}"] = list(rng.lognormal(-2.0, 0.5, n))
    cases["a batch per sample (batch ms / calls)"] = [float(b) / 37 for b in rng.uniform(3.5, 4.2, 25)]
    return {name: [float(x) for x in values] for name, values in cases.items()}


def kept_cases() -> list[dict]:
    rng = np.random.default_rng(SEED + 1)
    out = []
    for n, limit in ((5, 1000), (1000, 1000), (1001, 1000), (1500, 1000), (10, 3)):
        samples = [float(x) for x in rng.lognormal(-1.0, 0.3, n)]
        out.append({"samples_ms": samples, "limit": limit, "kept": kept_samples(samples, limit)})
    return out


def fixtures() -> dict:
    stats_cases = []
    for name, samples in sample_cases().items():
        stats = TimingStats.from_samples(samples)
        spread = stats.spread
        stats_cases.append({"name": name, "samples_ms": samples, "stats": stats.to_dict(),
                            "spread": "Infinity" if math.isinf(spread) else spread})
    return {"source": "devices.measure.stats.TimingStats and devices.agent.protocol.kept_samples",
            "stats": stats_cases, "kept_samples": kept_cases()}


def write(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FILE_NAME
    path.write_text(json.dumps(fixtures()) + "\n", encoding="utf-8")
    return path


if __name__ == "__main__":
    print(write(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_FOLDER))
