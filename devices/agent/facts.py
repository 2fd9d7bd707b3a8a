"""Facts about the device the agent runs on, stored on the server next to its measurements.

Best effort on Linux (Raspberry Pi OS, Jetson's L4T, Debian in a phone's proot), macOS and
others: a fact the system does not give is None rather than an error.
"""
from __future__ import annotations

import os
import platform
import subprocess

import numpy as np
import onnxruntime as ort

from devices.agent import AGENT_VERSION


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return file.read()
    except OSError:
        return None


def _sysctl(name: str) -> str | None:
    """A macOS/BSD sysctl value, or None."""
    try:
        result = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def cpu_model() -> str:
    """The CPU's model name: /proc/cpuinfo on Linux, sysctl on macOS, else what platform knows."""
    cpuinfo = _read("/proc/cpuinfo") or ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware", "cpu model") and value.strip():
            return value.strip()
    if platform.system() == "Darwin":
        brand = _sysctl("machdep.cpu.brand_string")
        if brand:
            return brand
    return platform.processor() or platform.machine() or "unknown"


def board() -> str | None:
    """The board's name where the firmware gives one (Raspberry Pi, Jetson: the device tree)."""
    model = (_read("/proc/device-tree/model") or "").strip("\x00 \n")
    return model or None


def memory_bytes() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        pass
    size = _sysctl("hw.memsize")
    return int(size) if size and size.isdigit() else None


def usable_cores() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def device_facts() -> dict:
    """What the server shows on the device's page (and keeps with the device)."""
    return {
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "board": board(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "memory_bytes": memory_bytes(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "agent": AGENT_VERSION,
    }
