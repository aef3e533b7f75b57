"""Moves a container's output to a sink (the store, or a terminal) while it runs, in chunks,
with a size cap."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from ..errors import InfrastructureError

# Where the output goes: called from the supervising thread with each chunk to keep, and how
# many bytes of the container's output have been consumed so far (kept or dropped).
LogSink = Callable[[bytes, int], None]

FLUSH_BYTES = 64 * 1024
FLUSH_INTERVAL_S = 0.25
TAIL_BYTES = 1024


class LogPump:
    """Reads the attach stream on its own thread; :meth:`flush` (called from the supervising
    thread) hands what has arrived to the sink. After ``cap`` bytes one marker line is written and the
    rest is read and dropped, so a flood can neither fill the store nor block the container."""

    def __init__(
        self,
        stream: Iterator[bytes],
        sink: LogSink,
        cap: int,
        *,
        name: str,
        skip: int = 0,
        already_kept: int = 0,
    ) -> None:
        """``skip`` bytes of the stream were consumed by an earlier runner (re-adoption), of
        which ``already_kept`` are in the log: the cap goes on counting from there."""
        self._stream = stream
        self._sink = sink
        self._cap = cap
        self._lock = threading.Lock()
        self._pending = bytearray()
        self._to_skip = skip
        self._consumed = skip
        self._kept = already_kept
        self._dropped = max(0, skip - already_kept)
        self._truncated = self._kept >= cap
        self._tail = b""
        self._last_flush = time.monotonic()
        self.error: InfrastructureError | None = None
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._read, name=f"log-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _read(self) -> None:
        try:
            for chunk in self._stream:
                self._accept(chunk)
        except InfrastructureError as exc:
            self.error = exc
        finally:
            self.done.set()

    def _accept(self, chunk: bytes) -> None:
        if self._to_skip:
            skipped = min(self._to_skip, len(chunk))
            self._to_skip -= skipped
            chunk = chunk[skipped:]
            if not chunk:
                return
        with self._lock:
            self._consumed += len(chunk)
            self._tail = (self._tail + chunk)[-TAIL_BYTES:]
            room = self._cap - self._kept
            if room > 0:
                kept = chunk[:room]
                self._pending += kept
                self._kept += len(kept)
                self._dropped += len(chunk) - len(kept)
            else:
                self._dropped += len(chunk)
            if self._dropped and not self._truncated:
                self._truncated = True
                self._pending += f"\n[dockworker: log truncated at {self._cap} bytes]\n".encode()

    def flush(self, force: bool = False) -> None:
        with self._lock:
            due = (
                force
                or len(self._pending) >= FLUSH_BYTES
                or time.monotonic() - self._last_flush >= FLUSH_INTERVAL_S
            )
            if not due or not self._pending:
                return
            data = bytes(self._pending)
            self._pending.clear()
            self._last_flush = time.monotonic()
            consumed = self._consumed
        self._sink(data, consumed)

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def last_line(self, limit: int = 200) -> str:
        """The last non-empty line the task printed (for the task's ``msg`` on error)."""
        with self._lock:
            lines = [line.strip() for line in self._tail.decode(errors="replace").splitlines()]
        found = next((line for line in reversed(lines) if line), "")
        return found if len(found) <= limit else found[: limit - 1] + "…"
