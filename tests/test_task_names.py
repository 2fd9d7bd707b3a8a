"""Every Celery task of the project carries an explicit ``name=``, and the names stay put.

A message in a broker queue, the beat schedule and the task routes find a task by its name. A
name derived from the module path would change when a module moves, and messages already queued
(or sent by a worker of the previous release) would reach no task. The names below are the ones
in use: changing one is a migration of queued work, not a refactoring.
"""
from __future__ import annotations

import ast
from pathlib import Path

from django.conf import settings

from webapp.celery import app

ROOT = Path(__file__).resolve().parent.parent
PROJECT_PACKAGES = ("adaptation", "devices", "webapp")
NAMES_IN_USE = {
    "adaptation.tasks.run_job",
    "adaptation.tasks.check_model_upload",
    "adaptation.tasks.check_dataset_upload",
    "adaptation.tasks.evaluate_proposal_task",
    "adaptation.tasks.proposals_evaluated",
    "adaptation.tasks.sweep_stale_jobs",
    "devices.tasks.measure_request",
}


def _is_task_decorator(node: ast.expr) -> bool:
    target = node.func if isinstance(node, ast.Call) else node
    name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
    return name in ("shared_task", "task")


def declared_tasks() -> dict[str, str | None]:
    """``module.function`` -> the ``name=`` its task decorator gives (None: no explicit name),
    for every task decorator in the project's source."""
    found: dict[str, str | None] = {}
    for package in PROJECT_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for decorator in node.decorator_list:
                    if _is_task_decorator(decorator):
                        keywords = decorator.keywords if isinstance(decorator, ast.Call) else []
                        names = [k.value.value for k in keywords
                                 if k.arg == "name" and isinstance(k.value, ast.Constant)]
                        found[f"{module}.{node.name}"] = names[0] if names else None
    return found


def registered_tasks() -> dict[str, str]:
    """``module.function`` -> registered name, for the project's tasks in the Celery app (as a
    worker loads them: the app's autodiscovery, no worker process needed)."""
    app.loader.import_default_modules()
    tasks = {}
    for name, task in app.tasks.items():
        module = getattr(task, "__module__", "")
        if module.split(".")[0] in PROJECT_PACKAGES:
            tasks[f"{module}.{task.run.__name__}"] = name
    return tasks


def test_it_gives_every_project_task_an_explicit_name():
    declared = declared_tasks()
    assert declared, "no task decorators found: the scan is broken"
    assert [where for where, name in declared.items() if name is None] == []


def test_it_registers_each_task_under_its_explicit_name():
    declared, registered = declared_tasks(), registered_tasks()
    assert registered == declared


def test_it_keeps_the_names_queued_messages_use():
    assert set(registered_tasks().values()) == NAMES_IN_USE


def test_it_schedules_and_routes_registered_tasks_only():
    app.loader.import_default_modules()
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert scheduled and scheduled <= set(app.tasks)
    assert settings.CELERY_TASK_ROUTES and set(settings.CELERY_TASK_ROUTES) <= set(app.tasks)


def test_the_names_the_senders_use_are_registered_ones():
    """``adaptation.enqueue`` and ``devices.requests`` send tasks by name, not by import."""
    from adaptation import enqueue
    from devices import requests

    assert {*enqueue.TASK_NAMES, requests.MEASURE_REQUEST} <= set(registered_tasks().values())
