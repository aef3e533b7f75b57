"""Following a task's log to its end (``queue --wait``, ``log -f``): the log as it comes, then
one closing line on stderr, and an exit status that says how it ended.

| how it ended | closing line | status |
|---|---|---|
| complete | ``Task ID complete (exit code 0)`` | 0 |
| error, timeout, cancelled, killed | ``Task ID error: exit code 3`` ... | 1 |
| Ctrl-C | what to do with the task, which keeps running | 130 |
| the server stopped or the connection was lost first | what is known of the task | 3 |"""

from __future__ import annotations

import sys
from typing import IO, Any

from ..errors import DockworkerError
from ..states import TaskStatus
from . import output
from .client import Client
from .http import StreamCut

EXIT_FAILED = 1
EXIT_UNFINISHED = 3
EXIT_INTERRUPTED = 130
FINAL_WAIT_S = 5.0


def describe(task_id: str, status: str, msg: str | None, exit_code: int | None) -> str:
    """The closing line of a task (its msg names any exit code)."""
    if msg:
        return f"Task {task_id} {status}: {msg}"
    code = f" (exit code {exit_code})" if exit_code is not None else ""
    return f"Task {task_id} {status}{code}"


def follow_to_end(
    client: Client, task_id: str, sink: IO[bytes] | None = None
) -> tuple[int, dict[str, Any] | None]:
    """Stream the log into ``sink`` (stdout's bytes by default) until the task ends, then print
    the closing line. Returns the exit status and the task as last seen (None if unknown)."""
    sink = sink if sink is not None else sys.stdout.buffer
    cut: str | None = None
    try:
        for chunk in client.follow_log(task_id):
            sink.write(chunk)
            sink.flush()
    except StreamCut as exc:
        cut = exc.message
    except KeyboardInterrupt:
        output.note(
            f"Stopped following task {task_id}; it goes on. Follow it again with 'dockworker log -f "
            f"{task_id}', stop it with 'dockworker cancel {task_id}'."
        )
        return EXIT_INTERRUPTED, None
    try:
        # The stream ends when the task does: its status is there already. Should the stream have
        # ended first (cut on the way), the server says when the task ends, up to a few seconds.
        task = client.task(task_id, wait_s=FINAL_WAIT_S)
    except DockworkerError:  # the server has gone (it was stopping)
        reason = cut or "the server stopped"
        output.note(f"Task {task_id}: {reason} before the task ended. {_again(task_id)}")
        return EXIT_UNFINISHED, None
    status = str(task["status"])
    if not TaskStatus(status).is_terminal:
        reason = cut or "the server is stopping"
        output.note(f"Task {task_id} is still {status}: {reason}. {_again(task_id)}")
        return EXIT_UNFINISHED, task
    output.note(describe(task_id, status, task.get("msg"), task.get("exit_code")))
    return (0 if status == TaskStatus.COMPLETE else EXIT_FAILED), task


def _again(task_id: str) -> str:
    return f"Follow it again with 'dockworker log -f {task_id}' once the service is back."
