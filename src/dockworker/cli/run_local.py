"""``dockworker run-local``: run a worker directory once, in the image and with the contract the
service uses (files, environment, arguments, limits), on the local Docker engine, without a
server or a store. The code is zipped and unpacked exactly as an upload would be, and the
container is made and supervised by the runner's own code."""

from __future__ import annotations

import contextlib
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import ClientError, TaskSetupError
from ..models import CodeSpec, TaskOutcome
from ..settings import Settings, load_settings
from ..states import TaskStatus
from . import output
from .bundle import zip_directory
from .common import CommandOpt, EnvOpt, FileNameOpt, ImageOpt, RuntimeOpt, StackOpt, parse_env, read_arg
from .follow import describe as describe_task

if TYPE_CHECKING:
    from ..runner.progress import Progress

RUNNER_ID = "run-local"
# Containers of run-local carry this installation label: no service's reaper touches them.
INSTALLATION_ID = "run-local"
EXIT_FAILED = 1
PROGRESS_NOTE_CHARS = 200


@dataclass(frozen=True, kw_only=True)
class LocalRun:
    """What to run: the worker's directory, the code spec an upload would have made, and the task."""

    directory: Path
    spec: CodeSpec
    payload: str
    timeout_s: int


def run_local(
    directory: Annotated[Path, typer.Argument(help="The worker's directory (run as an upload of it would)")],
    stack: StackOpt = None,
    image: ImageOpt = None,
    runtime: RuntimeOpt = None,
    file_name: FileNameOpt = None,
    command: CommandOpt = None,
    payload: Annotated[
        str | None, typer.Option(help="Payload string (usually JSON), @file, or - for standard input")
    ] = None,
    config: Annotated[
        str | None,
        typer.Option("--config", help="The worker's config string, @file, or @- for standard input"),
    ] = None,
    env: EnvOpt = None,
    memory_mb: Annotated[int | None, typer.Option(help="Memory limit, MB (default: the service's)")] = None,
    timeout: Annotated[int | None, typer.Option(min=1, help="Seconds (default: the service's)")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="The log to stderr, and the outcome as JSON on stdout")
    ] = False,
) -> None:
    """Run a worker directory once, locally, exactly as the service would.

    Prints its log, then its status. Exit status 0 if the task completes, 1 otherwise."""
    settings = load_settings()
    spec = CodeSpec(
        name=directory.resolve().name or "worker",
        image=image,
        stack=stack,
        command=command,
        runtime=runtime,
        file_name=file_name,
        config=read_arg(config, "--config"),
        env_vars=parse_env(env),
        memory_mb=memory_mb,
    )
    check_spec(spec, directory)
    run = LocalRun(
        directory=directory,
        spec=spec,
        payload=read_arg(payload, "--payload", dash_is_stdin=True) or "",
        timeout_s=timeout or settings.limits.timeout_s,
    )
    task_id, outcome = execute(run, settings, write_output_to_stderr if as_json else write_output)
    used = describe_usage(outcome)
    if used:
        output.note(used)
    output.note(describe(task_id, outcome))  # the last line, as `queue --wait` ends
    if as_json:
        output.print_json(
            {
                "id": task_id,
                "status": outcome.status.value,
                "msg": outcome.msg,
                "exit_code": outcome.exit_code,
                "cpu_time_ms": outcome.cpu_time_ms,
                "peak_memory_bytes": outcome.peak_memory_bytes,
            }
        )
    raise typer.Exit(0 if outcome.status is TaskStatus.COMPLETE else EXIT_FAILED)


def check_spec(spec: CodeSpec, directory: Path) -> None:
    """The checks an upload of the same directory and options would get."""
    from ..runner.contract import check_launch

    if not directory.is_dir():
        raise ClientError(f"{directory} is not a directory")
    check_launch(
        image=spec.image,
        stack=spec.stack,
        runtime=spec.runtime,
        command=spec.command,
        file_name=spec.file_name,
        option=lambda field: "--" + field.replace("_", "-"),
    )
    if spec.file_name and not (directory / spec.file_name).is_file():
        raise ClientError(f"--file-name {spec.file_name!r} is not a file in {directory}")


def execute(
    run: LocalRun, settings: Settings, sink: Callable[[bytes, int], None] | None = None
) -> tuple[str, TaskOutcome]:
    """Run the worker to its end: its output goes to stdout as it comes. Returns the task id
    and the outcome; a task that cannot start (image missing...) is an error outcome, as in
    the service."""
    from ..engine import DockerEngine
    from ..errors import ImageMissing
    from ..ids import new_id
    from ..names import PROGRESS_NAME
    from ..runner.container_run import RunHooks, run_container
    from ..runner.contract import (
        TaskFiles,
        container_spec,
        ensure_hosts_file,
        ensure_one_stream_shell,
        parse_user,
        with_build_hint,
        write_task_files,
    )
    from ..runner.progress import ProgressPipe, ProgressRelay, make_fifo

    task_id = new_id()
    engine = DockerEngine(settings.docker_host)
    stop = threading.Event()
    try:
        # ignore_cleanup_errors: as a user other than the task's uid, what the task made may stay.
        with tempfile.TemporaryDirectory(
            prefix="dockworker-run-local-", ignore_cleanup_errors=True
        ) as scratch:
            work = Path(scratch)
            code_dir = unpack_code(run.directory, work / "code", settings)
            uid, gid = parse_user(settings.task_user)
            write_task_files(work / "task", run.payload, run.spec.config, uid, gid)
            fifo = make_fifo(work / "task", PROGRESS_NAME, gid)
            files = TaskFiles(
                task_dir=work / "task",
                code_dir=code_dir,
                hosts_file=ensure_hosts_file(work),
                progress_fifo=fifo,
                one_stream_shell=ensure_one_stream_shell(work),
            )
            progress = ProgressRelay(ProgressPipe.open(fifo), TerminalProgress(), name=task_id)
            try:
                container = container_spec(
                    spec=run.spec,
                    task_id=task_id,
                    files=files,
                    settings=settings,
                    runner_id=RUNNER_ID,
                    installation_id=INSTALLATION_ID,
                )
                with stop_on_interrupt(stop):
                    result = run_container(
                        engine,
                        container,
                        sink=sink or write_output,
                        timeout_s=run.timeout_s,
                        stop=stop,
                        hooks=RunHooks(on_tick=progress.tick),
                        name=task_id,
                    )
                progress.finish()
            except ImageMissing as exc:
                return task_id, TaskOutcome(
                    status=TaskStatus.ERROR, msg=with_build_hint(run.spec, exc.message)
                )
            except TaskSetupError as exc:
                return task_id, TaskOutcome(status=TaskStatus.ERROR, msg=exc.message)
            finally:
                progress.close()
            return task_id, result.outcome
    finally:
        engine.close()


class TerminalProgress:
    """The worker's progress reports, as notes on stderr."""

    def report(self, progress: Progress) -> bool:
        percent = "" if progress.percent is None else f" {progress.percent}%"
        msg = "" if progress.msg is None else f" {output.flat(progress.msg)[:PROGRESS_NOTE_CHARS]}"
        output.note(f"[progress{percent}]{msg}")
        return True

    def refused(self, reason: str) -> None:
        output.note(f"[progress line refused: {reason}]")


def unpack_code(directory: Path, target: Path, settings: Settings) -> Path | None:
    """The directory as the runner would see it after an upload: zipped, checked, unpacked."""
    from ..runner.archive import ArchiveLimits, check_archive, extract_archive

    archive = zip_directory(directory)
    check_archive(
        archive,
        ArchiveLimits(
            max_bytes=settings.max_code_bytes,
            max_unpacked_bytes=settings.max_code_unpacked_bytes,
            max_entries=settings.max_code_entries,
        ),
    )
    extract_archive(archive, target)
    return target


@contextlib.contextmanager
def stop_on_interrupt(stop: threading.Event) -> Iterator[None]:
    """Ctrl-C stops the container (the task ends as cancelled) instead of abandoning it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signal_number: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGINT, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def write_output(data: bytes, _consumed: int) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def write_output_to_stderr(data: bytes, _consumed: int) -> None:
    sys.stderr.buffer.write(data)
    sys.stderr.buffer.flush()


def describe_usage(outcome: TaskOutcome) -> str:
    """What the container used, as far as the engine could say ("" when it could not)."""
    parts = []
    if outcome.cpu_time_ms is not None:
        parts.append(f"{output.show_milliseconds(outcome.cpu_time_ms)} of CPU")
    if outcome.peak_memory_bytes is not None:
        parts.append(f"{output.show_bytes(outcome.peak_memory_bytes)} of memory at its peak")
    return f"Used {' and '.join(parts)}" if parts else ""


def describe(task_id: str, outcome: TaskOutcome) -> str:
    """The status line, as `dockworker queue --wait` prints it."""
    return describe_task(task_id, outcome.status.value, outcome.msg, outcome.exit_code)
