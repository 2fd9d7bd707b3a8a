"""The host lock with real processes: trainers looping step chunks, measurers taking the host.

Every process appends what it does to one shared log file (``O_APPEND``: each line lands whole) at
moments where the lock orders it: a trainer writes ``start`` once it holds the host and ``end``
before its checkpoint lets go of it; a measurer writes ``asked`` before it asks, ``got`` once it
holds the host exclusively and ``done`` before it releases it; ``asked`` is written once it has
taken the intent (from then on no chunk may start). The assertions read the order of
those lines, never durations.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path

import pytest

from devices.measure.host_lock import HostLock

CONTEXT = multiprocessing.get_context("fork")  # children run this file's functions only (no torch)
JOIN_S = 60  # a bound for a child that should end, not a timing assumption


def _log(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _trainer(folder: str, log: str, name: str, stop, started) -> None:
    """Loop chunks of busy work until ``stop`` is set, honouring the lock between chunks."""
    with HostLock(folder).trainer() as trainer:
        chunk = 0
        while not stop.is_set():
            trainer.checkpoint()
            _log(log, f"{name} start {chunk}")
            started.set()
            sum(i * i for i in range(20_000))  # a step chunk's worth of CPU
            _log(log, f"{name} end {chunk}")
            chunk += 1
        _log(log, f"{name} paused {trainer.pauses}")


def _measurer(folder: str, log: str, times: int, name: str = "m") -> None:
    lock = HostLock(folder)
    for n in range(times):
        with lock.measuring(wait_s=None, on_intent=lambda: _log(log, f"{name} asked {n}")) as hold:
            _log(log, f"{name} got {n} {int(hold.acquired)} {hold.trainers}")
            sum(i * i for i in range(5_000))  # the timing
            _log(log, f"{name} done {n}")


def _hold_as_trainer_forever(folder: str, holding) -> None:
    trainer = HostLock(folder).trainer()
    trainer.checkpoint()
    holding.set()
    signal.pause()


def _hold_as_measurer_forever(folder: str, holding) -> None:
    with HostLock(folder).measuring(wait_s=None):
        holding.set()
        signal.pause()


def _lines(log: Path) -> list[list[str]]:
    return [line.split() for line in log.read_text().splitlines()]


def _start(target, *args):
    process = CONTEXT.Process(target=target, args=args, daemon=True)
    process.start()
    return process


def _check_measurements(lines: list[list[str]], trainers: list[str]) -> int:
    """Assert that no chunk ran during a measurement, that no chunk started while one was pending,
    and that each measurement waited for at most one chunk of each trainer; returns how many
    measurements had to wait for a running chunk."""
    running: set[str] = set()
    measuring: str | None = None
    ended_since_asked: dict[str, dict[str, int]] = {}  # per waiting measurer: chunks ended since it asked
    waited = 0
    for who, what, *rest in lines:
        if who.startswith("m"):
            if what == "asked":
                assert not ended_since_asked, f"{who} and {set(ended_since_asked)} both hold the intent"
                ended_since_asked[who] = {name: 0 for name in trainers}
            elif what == "got":
                assert not running, f"a measurement started while {running} computed"
                assert measuring is None, f"{who} measured during {measuring}'s measurement"
                ended = ended_since_asked.pop(who)
                assert all(count <= 1 for count in ended.values()), (who, ended)
                waited += any(ended.values())
                measuring = who
            elif what == "done":
                measuring = None
        elif what == "start":
            assert measuring is None, f"{who} started a chunk during {measuring}'s measurement"
            assert not ended_since_asked, f"{who} started a chunk while {set(ended_since_asked)} was pending"
            running.add(who)
        elif what == "end":
            running.discard(who)
            for ended in ended_since_asked.values():
                ended[who] += 1
    return waited


def test_a_measurement_gets_the_host_within_one_chunk_of_each_trainer(tmp_path):
    log, stop = tmp_path / "log", CONTEXT.Event()
    started = [CONTEXT.Event(), CONTEXT.Event()]
    trainers = [_start(_trainer, str(tmp_path / "lock"), str(log), f"t{k}", stop, started[k]) for k in range(2)]
    for event in started:
        assert event.wait(JOIN_S)
    measurer = _start(_measurer, str(tmp_path / "lock"), str(log), 1)
    measurer.join(JOIN_S)
    stop.set()
    for process in trainers:
        process.join(JOIN_S)
    assert measurer.exitcode == 0 and all(p.exitcode == 0 for p in trainers)
    lines = _lines(log)
    _check_measurements(lines, ["t0", "t1"])
    got = next(line for line in lines if line[:2] == ["m", "got"])
    assert got[3:] == ["1", "2"]  # it held the host, and both fine-tunes were counted
    pauses = [int(line[2]) for line in lines if line[1] == "paused"]
    assert sum(pauses) >= 1  # a trainer reached its checkpoint while the measurement was pending


def test_repeated_measurements_never_starve_and_never_overlap_a_chunk(tmp_path):
    log, stop, started = tmp_path / "log", CONTEXT.Event(), CONTEXT.Event()
    trainer = _start(_trainer, str(tmp_path / "lock"), str(log), "t0", stop, started)
    assert started.wait(JOIN_S)
    measurers = [_start(_measurer, str(tmp_path / "lock"), str(log), 10, f"m{k}") for k in range(2)]
    for process in measurers:
        process.join(JOIN_S)
    stop.set()
    trainer.join(JOIN_S)
    assert trainer.exitcode == 0 and all(p.exitcode == 0 for p in measurers)
    lines = _lines(log)
    assert sum(1 for line in lines if line[0].startswith("m") and line[1] == "done") == 20
    _check_measurements(lines, ["t0"])


def test_a_killed_trainer_releases_the_host(tmp_path):
    folder, holding = str(tmp_path / "lock"), CONTEXT.Event()
    holder = _start(_hold_as_trainer_forever, folder, holding)
    assert holding.wait(JOIN_S)
    lock = HostLock(folder)
    assert lock.running_trainers() == 1
    with lock.measuring(wait_s=0) as hold:  # it holds the host and never reaches a checkpoint
        assert not hold.acquired and hold.trainers == 1
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(JOIN_S)
    with lock.measuring(wait_s=None) as hold:
        assert hold.acquired and hold.trainers == 0  # its registration went with it


def test_a_killed_measurer_lets_trainers_go_on(tmp_path):
    folder, holding = str(tmp_path / "lock"), CONTEXT.Event()
    holder = _start(_hold_as_measurer_forever, folder, holding)
    assert holding.wait(JOIN_S)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(JOIN_S)
    with HostLock(folder).trainer() as trainer:
        trainer.checkpoint()  # would block for ever if the dead measurer's lock outlived it
        assert trainer.holding


def test_a_trainer_that_left_holds_nothing(tmp_path):
    lock = HostLock(tmp_path)
    trainer = lock.trainer()
    assert trainer.checkpoint() == 0.0 and trainer.pauses == 0
    assert lock.running_trainers() == 1
    trainer.leave()
    assert not trainer.holding and lock.running_trainers() == 0
    with lock.measuring(wait_s=0) as hold:
        assert hold.acquired and hold.trainers == 0


@pytest.mark.parametrize("wait_s", [0, None])
def test_an_idle_host_is_had_at_once(tmp_path, wait_s):
    with HostLock(tmp_path / "new" / "folder").measuring(wait_s) as hold:
        assert hold.acquired and hold.trainers == 0


def test_a_fine_tune_holds_the_host_between_its_hooks_and_lets_go_at_its_end(tmp_path):
    import torch
    from torch import nn

    from adaptation.netadapt.data import TensorSplit
    from adaptation.netadapt.training import train_steps
    from devices.host import HostTurns

    lock = HostLock(tmp_path)
    turns = HostTurns(lock)
    seen: list[tuple[int, bool, int]] = []

    def hook(done: int, total: int) -> None:
        turns(done, total)
        with lock.measuring(wait_s=0) as hold:  # a measurement asking now finds the host taken
            seen.append((done, hold.acquired, hold.trainers))

    split = TensorSplit(torch.randn(64, 1, 4, 4), torch.randint(0, 3, (64,)))
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    train_steps(model, split, 30, lr=0.01, batch_size=16, seed=0, hook=hook)
    assert seen == [(0, False, 1), (25, False, 1), (30, True, 0)]  # held while it trains, free at the end
