"""Every worker's part of a job played in the test's own process, in the order workers would.

``InProcessWorkers`` (the ``workers`` fixture of conftest.py) keeps what the job runner sends
instead of letting it reach a broker: ``run_job`` messages, measurement requests of local
devices, chords of proposals. ``drive(job)`` then runs the job and, while it waits, serves its
requests (``devices.tasks.measure_request``) and its proposals (``evaluate_proposal_task`` and the
chord's end), and runs it again, until nothing is left to do.
"""
from __future__ import annotations

from adaptation import enqueue, tasks
from adaptation.models import Job
from devices import requests
from devices.tasks import measure_request


class InProcessWorkers:
    def __init__(self, monkeypatch, runs: list[int]) -> None:
        self.runs = runs
        self.requests: list[int] = []
        self.chords: list[tuple[int, int, list[int]]] = []
        self.evaluated_by: list[str] = []
        monkeypatch.setattr(requests, "dispatch", self._dispatch)
        monkeypatch.setattr(enqueue, "send_chord",
                            lambda job_id, iteration, indices: self.chords.append((job_id, iteration, list(indices))))

    def _dispatch(self, request_id: int, device_id: int, kind: str) -> None:
        if kind == "local":
            self.requests.append(request_id)

    def step(self) -> bool:
        """Do the oldest piece of pending work; False when there is none."""
        if self.requests:
            measure_request(self.requests.pop(0))
        elif self.chords:
            job_id, iteration, indices = self.chords.pop(0)
            for index in indices:
                self.evaluated_by.append(tasks.evaluate_proposal_task(job_id, iteration, index))
            tasks.proposals_evaluated(job_id, iteration)
        elif self.runs:
            tasks.run_job(self.runs.pop(0))
        else:
            return False
        return True

    def drive(self, job: Job, max_steps: int = 1000) -> Job:
        """Run ``job`` to its end (or until it waits for something no one here does)."""
        tasks.run_job(job.pk)
        for _ in range(max_steps):
            if not self.step():
                break
        else:
            raise AssertionError(f"job {job.pk} still had work after {max_steps} steps")
        job.refresh_from_db()
        return job
