"""Helpers for tests that check what an upload left on disk."""
from __future__ import annotations

import io
from pathlib import Path

import torch


def files_under(root: Path) -> list[str]:
    """Every file below ``root`` (relative paths), empty folders not counted."""
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*") if p.is_file())


def torch_bytes(payload) -> bytes:
    """``payload`` as ``torch.save`` writes it."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()
