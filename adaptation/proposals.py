"""An iteration's proposals fine-tuned in parallel: one Celery task per proposal, then the job.

The runner parks the job on ``NeedsEvaluation`` and calls ``dispatch_evaluations``: the plan goes
to ``proposals/iteration_NNN/plan.json`` in the job's folder and a chord of
``adaptation.tasks.evaluate_proposal_task`` (one per missing proposal, on whatever workers are
up; a single worker takes them in turn) ends in ``proposals_evaluated``, which re-enqueues the
job once every proposal has its file (a chord of an earlier send, whose members found their
files written, ends too and must not wake the job early). Each task writes ``<k>.pt`` (the
result and the fine-tuned weights, or an error) atomically; the resumed runner reads them with
``load_evaluations``. Tasks beat on the waiting job, so the sweep re-runs a job whose tasks were
lost (``leases.jobs_to_resume``): it resends only the proposals without a file. A task's
fine-tune looks at the job every ``training.HOOK_EVERY`` steps and stops, writing nothing, once
the job is cancelled or has ended (the job's log says after how many steps); the same hook pauses
it while a measurement of this host runs (``devices.host``; the log says when it paused).
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch

from adaptation import enqueue
from adaptation.events import publish
from adaptation.job_files import JobFiles, write_atomically
from adaptation.job_inputs import describe_error, load_job_data, load_job_model, parse_settings
from adaptation.leases import LeaseKeeper, beat_waiting
from adaptation.models import Job
from adaptation.netadapt.distillation import fine_tune_loss
from adaptation.netadapt.graph import rebuild_pruned
from adaptation.netadapt.steps import Proposal, evaluate_proposal
from adaptation.netadapt.training import Cancelled
from devices.host import HostTurns

logger = logging.getLogger(__name__)


def iteration_folder(job_id: int, iteration: int) -> Path:
    return JobFiles(job_id).folder / "proposals" / f"iteration_{iteration:03d}"


def _plan_path(job_id: int, iteration: int) -> Path:
    return iteration_folder(job_id, iteration) / "plan.json"


def _result_path(job_id: int, iteration: int, index: int) -> Path:
    return iteration_folder(job_id, iteration) / f"{index}.pt"


def load_evaluations(job_id: int, iteration: int, plan: list[dict]) -> list[dict | None]:
    """What each proposal's task wrote ({"result", "model_state", "worker"} or {"error"}), or None.

    Files of another plan (the iteration was planned differently before a resume) are discarded.
    """
    plan_path = _plan_path(job_id, iteration)
    if not plan_path.exists() or json.loads(plan_path.read_text()) != plan:
        discard_evaluations(job_id, iteration)
        return [None] * len(plan)
    found: list[dict | None] = []
    for index in range(len(plan)):
        path = _result_path(job_id, iteration, index)
        found.append(torch.load(path, weights_only=True) if path.exists() else None)
    return found


def discard_evaluations(job_id: int, iteration: int) -> None:
    """Remove an iteration's proposal files once the iteration is recorded (they hold weights)."""
    shutil.rmtree(iteration_folder(job_id, iteration), ignore_errors=True)


def all_evaluated(job_id: int, iteration: int) -> bool:
    """Whether every proposal of the iteration's current plan has its file."""
    plan_path = _plan_path(job_id, iteration)
    if not plan_path.exists():
        return False
    count = len(json.loads(plan_path.read_text()))
    return all(_result_path(job_id, iteration, k).exists() for k in range(count))


def _dispatches(job_id: int, iteration: int) -> dict:
    path = iteration_folder(job_id, iteration) / "dispatches.json"
    return json.loads(path.read_text()) if path.exists() else {"count": 0, "done": 0}


def dispatch_count(job_id: int, iteration: int) -> int:
    """How many sends of this iteration's proposals in a row brought no new result (the last one
    may still be under way)."""
    return _dispatches(job_id, iteration)["count"]


def fruitless_sends(job_id: int, iteration: int, done: int) -> int:
    """Sends in a row that ended with no new result, now that ``done`` proposals have theirs:
    their tasks were lost (killed workers), not merely slow."""
    previous = _dispatches(job_id, iteration)
    return previous["count"] if done <= previous["done"] else 0


def dispatch_evaluations(job_id: int, iteration: int, plan: list[dict], indices: list[int]) -> None:
    """Write the plan and send a chord of one task per proposal in ``indices``."""
    previous, done = _dispatches(job_id, iteration), len(plan) - len(indices)
    record = {"count": 1 if done > previous["done"] else previous["count"] + 1, "done": done}
    write_atomically(_plan_path(job_id, iteration), lambda path: path.write_text(json.dumps(plan)))
    write_atomically(iteration_folder(job_id, iteration) / "dispatches.json",
                     lambda path: path.write_text(json.dumps(record)))
    enqueue.send_chord(job_id, iteration, indices)


def evaluate_for_job(job_id: int, iteration: int, index: int, worker: str) -> str:
    """Fine-tune and score proposal ``index`` of the job's iteration; write its file.

    Returns what happened: "done", "error" (written for the job to report), or "stale" (the job
    moved on, was cancelled, or the file exists already: nothing to do).
    """
    path = _result_path(job_id, iteration, index)
    job = Job.objects.select_related("model", "dataset").filter(pk=job_id).first()
    # Only an ended job makes the work useless: the job may be between a resume and its next
    # park (queued, running) while this task waits in the queue.
    if job is None or not job.is_active or job.cancel_requested or path.exists():
        return "stale"
    files = JobFiles(job_id)
    with LeaseKeeper(job_id, worker, renew=lambda: beat_waiting(job_id)) as keeper, HostTurns() as turns:
        beat_waiting(job_id)

        def still_wanted(done: int, total: int) -> None:
            """The fine-tune's training hook: stop once the job is cancelled or has ended; let a
            measurement of this host run first (``devices.host``); let go of the host at the end."""
            if done < total and (keeper.lost.is_set() or not Job.objects.filter(
                    pk=job_id, status__in=Job.ACTIVE_STATUSES, cancel_requested=False).exists()):
                turns.close()
                raise Cancelled(f"job {job_id} was cancelled or has ended")
            turns(done, total)
        try:
            state = files.load_checkpoint()
            plan = json.loads(_plan_path(job_id, iteration).read_text())
            if state is None or state.iteration != iteration or state.pending:
                return "stale"
            config, options = parse_settings(job.settings)
            spec, original = load_job_model(job)
            data = load_job_data(job, spec, config, options)
            loss_fn = fine_tune_loss(config, original)  # before the original is shrunk in place
            model = rebuild_pruned(original, spec.example_input(), state.channels)
            model.load_state_dict(state.model_state)
            result, candidate = evaluate_proposal(model.eval(), spec.example_input(),
                                                  Proposal.from_state(plan[index]), data, config, iteration,
                                                  hook=still_wanted, loss_fn=loss_fn)
            entry = {"result": result.to_state(), "model_state": candidate.state_dict(), "worker": worker,
                     "paused": {"count": turns.pauses, "seconds": round(turns.paused_s, 3)}}
            outcome = "done"
            if turns.pauses:
                publish(job_id, "job.log", {"level": "info", "message":
                        f"Proposal {index} of iteration {iteration}: its fine-tune {turns.describe()}."})
        except Cancelled as stop:
            if stop.where():
                paused = f" It {turns.describe()}." if turns.pauses else ""
                publish(job_id, "job.log", {"level": "info", "message":
                        f"Proposal {index} of iteration {iteration} stopped {stop.where()}: the job has ended.{paused}"})
            return "stale"
        except FileNotFoundError:
            return "stale"  # the job's folder went away (deleted job)
        except Exception as error:  # reported by the job, never a dead chord
            logger.exception("job %s: proposal %s of iteration %s failed", job_id, index, iteration)
            entry, outcome = {"error": f"proposal {index} of iteration {iteration}: {describe_error(error)}"}, "error"
        if keeper.lost.is_set():
            return "stale"  # the job ended meanwhile
        write_atomically(path, lambda target: torch.save(entry, target))
    return outcome
