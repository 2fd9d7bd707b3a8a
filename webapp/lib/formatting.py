"""Numbers for people that every page names the same way: byte sizes and counts.

The upload limit, the archive checks and the model, dataset and device pages use these. This
module imports neither Django nor torch (the archive checks run it outside the web process).
"""
from __future__ import annotations


def human_size(size: int, *, trim_zero: bool = True) -> str:
    """``200 MB``, ``1.5 KB``, ``1000 bytes`` (``200.0 MB`` with ``trim_zero`` False)."""
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if size >= scale:
            number = f"{size / scale:.1f}"
            return f"{number.removesuffix('.0') if trim_zero else number} {unit}"
    return f"{size} bytes"


def format_count(number: int | None) -> str:
    """``1.23 M``, ``45.6 k``, ``812``: MACs and parameter counts for people ("" when unknown)."""
    if number is None:
        return ""
    for unit, scale in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if number >= scale:
            return f"{number / scale:.3g} {unit}"
    return str(number)
