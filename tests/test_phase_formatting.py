"""How an iteration's phases are named and shown: the same phases as the engine's, in its order."""
from __future__ import annotations

from adaptation.formatting import PHASE_LABELS, phase_breakdown, seconds_text
from adaptation.netadapt.loop import PHASES


def test_every_phase_of_the_engine_has_a_label_in_its_order():
    assert tuple(PHASE_LABELS) == PHASES


def test_seconds_read_as_people_read_them():
    assert [seconds_text(s) for s in (0.4213, 12.34, 245.2)] == ["0.42 s", "12.3 s", "4 min 05 s"]


def test_the_breakdown_lists_nonzero_phases_with_their_share_of_the_wall_time():
    record = {"wall_s": 8.0, "phases_s": {**dict.fromkeys(PHASES, 0.0), "plan_s": 2.0, "overhead_s": 6.0}}
    assert phase_breakdown(record) == [
        {"key": "plan_s", "label": "planning", "seconds": "2.00 s", "share": 25.0, "percent": "25%"},
        {"key": "overhead_s", "label": "overhead", "seconds": "6.00 s", "share": 75.0, "percent": "75%"}]


def test_a_record_without_a_wall_time_has_no_breakdown():
    assert phase_breakdown({"phases_s": {"plan_s": 1.0}}) == []  # an older job's record
    assert phase_breakdown({}) == []  # the original network
