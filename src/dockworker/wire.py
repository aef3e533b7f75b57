"""The runner routes' JSON: tasks, code revisions and outcomes as the API hands them to remote
runners and takes them back. Every field of the value objects travels, unlike the public API's
shapes (``api/schemas.py``), which hide secrets and speak IronWorker's names: a runner needs a
package's secret environment to run its tasks."""

from __future__ import annotations

import dataclasses
from typing import Any

from .models import CodeRevision, CodeSpec, Task, TaskOutcome
from .states import TaskStatus


def task_to_wire(task: Task) -> dict[str, Any]:
    data = {f.name: getattr(task, f.name) for f in dataclasses.fields(Task)}
    data["status"] = task.status.value
    return data


def task_from_wire(data: dict[str, Any]) -> Task:
    names = {f.name for f in dataclasses.fields(Task)}
    values = {k: v for k, v in data.items() if k in names}
    values["status"] = TaskStatus(values["status"])
    return Task(**values)


def revision_to_wire(revision: CodeRevision) -> dict[str, Any]:
    data = {f.name: getattr(revision, f.name) for f in dataclasses.fields(CodeRevision)}
    data["spec"] = {f.name: getattr(revision.spec, f.name) for f in dataclasses.fields(CodeSpec)}
    return data


def revision_from_wire(data: dict[str, Any]) -> CodeRevision:
    spec_names = {f.name for f in dataclasses.fields(CodeSpec)}
    spec = CodeSpec(**{k: v for k, v in data["spec"].items() if k in spec_names})
    names = {f.name for f in dataclasses.fields(CodeRevision)}
    return CodeRevision(**{**{k: v for k, v in data.items() if k in names}, "spec": spec})


def outcome_to_wire(outcome: TaskOutcome) -> dict[str, Any]:
    data = {f.name: getattr(outcome, f.name) for f in dataclasses.fields(TaskOutcome)}
    data["status"] = outcome.status.value
    return data


def outcome_from_wire(data: dict[str, Any]) -> TaskOutcome:
    """ValueError for anything but a terminal state with the outcome's fields."""
    names = {f.name for f in dataclasses.fields(TaskOutcome)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown outcome fields: {sorted(unknown)}")
    return TaskOutcome(**{**data, "status": TaskStatus(data["status"])})
