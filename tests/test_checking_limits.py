"""run_limited: a child process whose memory ceiling and time limit hold, torch included."""
from __future__ import annotations

import os

import pytest

from adaptation.checking.limits import ChildFailed, LimitExceeded, is_out_of_memory, run_limited
from tests import limited_work

MiB = 1 << 20


def test_it_returns_the_value_and_the_childs_peak_memory():
    run = run_limited(limited_work.touch, [64], memory_bytes=512 * MiB, seconds=60)
    assert run.value >= 64 * MiB  # the child touched 64 MiB
    assert 64 * MiB <= run.peak_rss_bytes < 256 * MiB


def test_it_runs_in_another_process():
    assert run_limited(os.getpid, memory_bytes=512 * MiB, seconds=60).value != os.getpid()


def test_it_reports_an_allocation_past_the_ceiling_as_memory():
    with pytest.raises(LimitExceeded) as caught:
        run_limited(limited_work.touch, [400], memory_bytes=200 * MiB, seconds=60)
    assert caught.value.kind == "memory"
    assert caught.value.peak_rss_bytes < 200 * MiB  # refused, not killed after the fact


def test_torch_imports_under_a_ceiling_and_its_allocation_past_it_is_memory():
    """torch maps ~3 GB of address space at import (an RLIMIT_AS of 2 GB breaks it); the
    ceiling counts private writable memory only, so 1.5 GiB holds torch and stops 2 GiB."""
    run = run_limited(limited_work.torch_allocate, [256], memory_bytes=1536 * MiB, seconds=120)
    assert run.value >= 256 * MiB
    with pytest.raises(LimitExceeded) as caught:
        run_limited(limited_work.torch_allocate, [2048], memory_bytes=1536 * MiB, seconds=120)
    assert caught.value.kind == "memory" and "can't allocate memory" in caught.value.detail
    assert caught.value.peak_rss_bytes < 1536 * MiB


def test_any_failure_at_the_ceiling_is_memory_and_one_well_under_it_is_not():
    """An allocation refused inside an extension's import can surface as a bare SystemError (seen
    importing torch under 768 MB): at the ceiling that is the ceiling's doing, far below it not."""
    with pytest.raises(LimitExceeded) as caught:
        run_limited(limited_work.fail_near_the_ceiling, [8], memory_bytes=256 * MiB, seconds=60)
    assert caught.value.kind == "memory" and caught.value.detail.startswith("SystemError")
    with pytest.raises(ChildFailed) as failed:
        run_limited(limited_work.fail_near_the_ceiling, [160], memory_bytes=256 * MiB, seconds=60)
    assert failed.value.error_type == "builtins.SystemError"


def test_a_memory_error_anywhere_in_the_cause_chain_is_memory():
    try:
        try:
            raise MemoryError("std::bad_alloc")
        except MemoryError as inner:
            raise SystemError("returned a result with an exception set") from inner
    except SystemError as outer:
        assert is_out_of_memory(outer)
    assert not is_out_of_memory(SystemError("unrelated"))


def test_a_child_past_its_time_is_killed_and_reported_as_time():
    with pytest.raises(LimitExceeded) as caught:
        run_limited(limited_work.wait_forever, memory_bytes=512 * MiB, seconds=1)
    assert caught.value.kind == "time" and caught.value.peak_rss_bytes > 0


def test_an_exception_in_the_child_names_its_type_and_message():
    with pytest.raises(ChildFailed) as caught:
        run_limited(limited_work.refuse, ["no thanks"], memory_bytes=512 * MiB, seconds=60)
    assert (caught.value.error_type, caught.value.message) == ("builtins.ValueError", "no thanks")


def test_a_crashed_child_is_reported_as_a_crash():
    with pytest.raises(ChildFailed) as caught:
        run_limited(os.abort, memory_bytes=512 * MiB, seconds=60)
    assert caught.value.error_type == "crash" and "SIGABRT" in caught.value.message


def test_only_module_level_functions_can_be_run():
    with pytest.raises(ValueError, match="module-level"):
        run_limited(lambda: 1, memory_bytes=512 * MiB, seconds=60)
