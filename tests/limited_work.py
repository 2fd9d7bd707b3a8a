"""Module-level functions for ``run_limited`` tests (the child imports them by name)."""
from __future__ import annotations

import threading

from adaptation.checking.limits import peak_rss_bytes


def touch(megabytes: int) -> int:
    """Allocate and touch ``megabytes``; the child's peak RSS afterwards."""
    block = bytearray(megabytes << 20)
    block[::4096] = b"\x01" * len(block[::4096])
    return peak_rss_bytes() or 0


def torch_allocate(megabytes: int) -> int:
    """Import torch, then fill a uint8 tensor of ``megabytes``; the child's peak RSS afterwards."""
    import torch

    torch.ones(megabytes << 20, dtype=torch.uint8)
    return peak_rss_bytes() or 0


def wait_forever() -> None:
    threading.Event().wait()


def refuse(message: str) -> None:
    raise ValueError(message)


def fail_near_the_ceiling(left_megabytes: int) -> None:
    """Fill private memory up to ``left_megabytes`` under this process's RLIMIT_DATA, then raise
    a SystemError carrying no MemoryError: what an allocation refused inside torch's import does."""
    import resource

    from adaptation.checking.limits import private_writable_bytes

    ceiling = resource.getrlimit(resource.RLIMIT_DATA)[0]
    block = bytearray(max(0, ceiling - (private_writable_bytes() or 0) - (left_megabytes << 20)))
    block[::4096] = b"\x01" * len(block[::4096])
    raise SystemError("initialization of _C raised unreported exception")
