"""Running the CLI as a user's shell would: into a pipe whose reader has gone, in a terminal of
a given width (a pty), in a ``bash -o pipefail`` pipeline, with the environment and the
working directory of the test's choosing."""

from __future__ import annotations

import os
import pty
import re
import subprocess
from pathlib import Path
from typing import Any

from .support import CLI_TIMEOUT_S, Service, clean_env, dockworker_command

ANSI = re.compile(r"\x1b\[[0-9;]*m")
BOX_DRAWING = re.compile("[\u2500-\u257f]")


def cli_env(service: Service | None, **extra: str) -> dict[str, str]:
    config = {"DOCKWORKER_IRON_JSON": str(service.iron_json)} if service is not None else {}
    return clean_env(**config, **extra)


def cli(
    service: Service | None,
    *args: str,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = CLI_TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    """``dockworker ARGS`` with its output captured (not a terminal)."""
    return subprocess.run(
        [*dockworker_command(), *args],
        env=env if env is not None else cli_env(service),
        cwd=cwd or (service.data_dir.parent if service is not None else None),
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def with_reader_gone(
    service: Service, *args: str, stderr_too: bool = False
) -> subprocess.CompletedProcess[str]:
    """``dockworker ARGS`` writing into a pipe whose reading end is already closed: its first
    write fails, as it does when ``head -1`` or ``grep -q`` has exited (with ``stderr_too``,
    stderr goes into that pipe as well, as with ``2>&1 | head -1``)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [*dockworker_command(), *args],
            env=cli_env(service),
            cwd=service.data_dir.parent,
            stdin=subprocess.DEVNULL,
            stdout=write_end,
            stderr=write_end if stderr_too else subprocess.PIPE,
            text=True,
            timeout=CLI_TIMEOUT_S,
            check=False,
        )
    finally:
        os.close(write_end)


def in_terminal(service: Service, *args: str, columns: int = 80) -> tuple[int, str]:
    """``dockworker ARGS`` in a pseudo-terminal ``columns`` wide: its exit status and what the
    terminal showed (colours removed)."""
    controller, terminal = pty.openpty()
    env = cli_env(service, COLUMNS=str(columns), LINES="50", TERM="xterm")
    with subprocess.Popen(
        [*dockworker_command(), *args],
        env=env,
        cwd=service.data_dir.parent,
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
    ) as process:
        os.close(terminal)
        shown = bytearray()
        while True:
            try:
                data = os.read(controller, 65536)
            except OSError:  # EIO: the terminal's other end closed
                break
            if not data:
                break
            shown += data
        code = process.wait(CLI_TIMEOUT_S)
    os.close(controller)
    return code, ANSI.sub("", shown.decode().replace("\r\n", "\n"))


def shell(service: Service, script: str, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """A bash script with ``set -euo pipefail``, ``dockworker`` on its PATH."""
    bin_dir = str(Path(dockworker_command()[0]).parent)
    env = cli_env(service, PATH=f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    return subprocess.run(
        ["bash", "-c", f"set -euo pipefail\n{script}"],
        env=env,
        cwd=service.data_dir.parent,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_quiet(stderr: str) -> None:
    """No traceback, no interpreter noise."""
    for noise in ("Traceback", "Exception ignored", "BrokenPipeError"):
        assert noise not in stderr, stderr


def ok(service: Service | None, *args: str, **kwargs: Any) -> str:
    """``dockworker ARGS`` that must succeed quietly; its stdout."""
    result = cli(service, *args, **kwargs)
    assert result.returncode == 0, result.stderr
    assert_quiet(result.stderr)
    return result.stdout
