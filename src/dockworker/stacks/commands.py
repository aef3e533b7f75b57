"""Running the build's external commands (debootstrap, chroot, mount): output is captured,
streamed line by line to the caller, and its tail is kept for the error message. Inside
:func:`build_log`, every command and all of its output also go to a log file."""

from __future__ import annotations

import collections
import contextlib
import contextvars
import shlex
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

from ..errors import InfrastructureError

STANDARD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TAIL_LINES = 25

# A clean environment: nothing from the caller's (virtualenv, locale, proxies) leaks into
# debootstrap or the chroot.
BUILD_ENV: Mapping[str, str] = {
    "PATH": STANDARD_PATH,
    "LC_ALL": "C",
    "DEBIAN_FRONTEND": "noninteractive",
    "DEBCONF_NONINTERACTIVE_SEEN": "true",
}

LineCallback = Callable[[str], None]

_log: contextvars.ContextVar[IO[str] | None] = contextvars.ContextVar("build_log", default=None)


@contextlib.contextmanager
def build_log(path: Path) -> Iterator[Path]:
    """Within the block, run_command writes each command line and its output to ``path``
    (replaced at each build)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", errors="replace") as log:
        token = _log.set(log)
        try:
            yield path
        finally:
            _log.reset(token)


def log_step(message: str) -> None:
    """A step of the build, as a marker line in the build log (if one is open)."""
    _logged(f"==> {message}")


def _logged(text: str) -> None:
    log = _log.get()
    if log is not None:
        log.write(text + "\n")


def run_command(
    argv: Sequence[str], *, on_line: LineCallback | None = None, env: Mapping[str, str] | None = None
) -> None:
    """Run argv to completion, with stdout and stderr merged; InfrastructureError if it fails.
    ``env`` replaces the clean build environment (pip on the host needs the caller's own)."""
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    _logged(f"$ {shlex.join(argv)}")
    try:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(BUILD_ENV if env is None else env),
            text=True,
            errors="replace",
        )
    except OSError as exc:
        raise InfrastructureError(f"cannot run {argv[0]}: {exc}") from exc
    with process:  # closes the pipe and waits for the process on the way out
        try:
            assert process.stdout is not None
            for raw_line in process.stdout:
                line = raw_line.rstrip("\n")
                tail.append(line)
                _logged(line)
                if on_line is not None:
                    on_line(line)
        except BaseException:
            process.kill()
            raise
    returncode = process.returncode
    if returncode != 0:
        _logged(f"(exit code {returncode})")
        output = "\n".join(tail)
        raise InfrastructureError(f"{' '.join(argv)} failed with exit code {returncode}:\n{output}")


def command_output(argv: Sequence[str]) -> list[str]:
    """Run argv and return its output lines."""
    lines: list[str] = []
    run_command(argv, on_line=lines.append)
    return lines
