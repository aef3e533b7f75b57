"""The API app served by a real uvicorn on a loopback port, in a thread of the test process, so
that real clients (the CLI as a subprocess, Chromium) can reach it."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from tests.acceptance.support import LOOPBACK, free_port, version_answers

START_TIMEOUT_S = 15.0


@contextlib.contextmanager
def serving(app: FastAPI) -> Iterator[int]:
    """The port the app answers on, until the block ends."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=LOOPBACK, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not version_answers(port):
            assert thread.is_alive(), "uvicorn exited on start"
            assert time.monotonic() < deadline, f"uvicorn did not answer in {START_TIMEOUT_S} s"
            time.sleep(0.05)
        yield port
    finally:
        server.should_exit = True
        thread.join(10)
