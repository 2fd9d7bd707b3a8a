"""Shared fixtures of the NetAdapt engine tests: tiny datasets, a light timing protocol."""
from __future__ import annotations

import pytest
import torch

from adaptation.netadapt.data import load_dataset
from devices.measure import MeasureProtocol


@pytest.fixture(scope="session")
def digits16():
    """scikit-learn digits upsampled to 16 px (1797 images, in memory)."""
    return load_dataset("digits", resolution=16, seed=0)


@pytest.fixture(scope="session")
def digits8():
    """scikit-learn digits at their native 8 px: the cheapest data for full NetAdapt runs."""
    return load_dataset("digits", resolution=8, seed=0)


@pytest.fixture(scope="session")
def light_protocol() -> MeasureProtocol:
    """A timing protocol short enough for tests (the numbers are never asserted)."""
    return MeasureProtocol(threads=1, warmup=2, rounds=2, runs_per_round=5)


@pytest.fixture(scope="module")
def single_torch_thread():
    """Run a module's torch work on one thread (restored afterwards).

    On a small shared machine, intra-op threads that contend with other processes make every
    tiny op wait on its siblings: one thread is both faster and steadier for these tiny nets.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
