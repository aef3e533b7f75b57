"""Running the build's external commands (debootstrap, chroot, mount): output is captured,
streamed line by line to the caller, and its tail is kept for the error message."""

from __future__ import annotations

import collections
import subprocess
from collections.abc import Callable, Mapping, Sequence

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


def run_command(
    argv: Sequence[str], *, on_line: LineCallback | None = None, env: Mapping[str, str] | None = None
) -> None:
    """Run argv to completion, with stdout and stderr merged; InfrastructureError if it fails.
    ``env`` replaces the clean build environment (pip on the host needs the caller's own)."""
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
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
                if on_line is not None:
                    on_line(line)
        except BaseException:
            process.kill()
            raise
    returncode = process.returncode
    if returncode != 0:
        output = "\n".join(tail)
        raise InfrastructureError(f"{' '.join(argv)} failed with exit code {returncode}:\n{output}")


def command_output(argv: Sequence[str]) -> list[str]:
    """Run argv and return its output lines."""
    lines: list[str] = []
    run_command(argv, on_line=lines.append)
    return lines
