"""Log lines an operator can grep and ship: ``key=value`` text by default, or one JSON object
per line (``DOCKWORKER_LOG_FORMAT=json``). Whatever a call puts in ``extra=`` (a task id, a
container id, an error) is printed with its line. Repeated failures are rate-limited."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

from .errors import ClientError

FORMAT_ENV = "DOCKWORKER_LOG_FORMAT"
LEVEL_ENV = "DOCKWORKER_LOG_LEVEL"
FORMATS = ("text", "json")

# The attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's copy of the message with terminal colours
}


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in vars(record).items() if key not in _STANDARD}


def _quoted(value: Any) -> str:
    text = str(value)
    if text and not any(c in text for c in ' "=\n\t'):
        return text
    return json.dumps(text, ensure_ascii=False)


class KeyValueFormatter(logging.Formatter):
    """``2024-01-01 12:00:00,000 WARNING dockworker.runner: runner.lease_lost task_id=...``"""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = " ".join(f"{key}={_quoted(value)}" for key, value in record_fields(record).items())
        if not fields:
            return line
        # The traceback, if any, stays below the line.
        head, newline, rest = line.partition("\n")
        return f"{head} {fields}{newline}{rest}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record_fields(record).items():
            entry[key] = value if isinstance(value, int | float | bool | type(None)) else str(value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def log_format(env: dict[str, str] | None = None) -> str:
    chosen = (os.environ if env is None else env).get(FORMAT_ENV, "text").strip().lower() or "text"
    if chosen not in FORMATS:
        raise ClientError(f"{FORMAT_ENV}: {chosen!r} is not one of {', '.join(FORMATS)}")
    return chosen


def configure_logging(fmt: str | None = None, level: int | str | None = None) -> None:
    """Replace the root logger's handlers with one on stderr in the chosen format."""
    chosen = fmt or log_format()
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if chosen == "json" else KeyValueFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level or os.environ.get(LEVEL_ENV, "INFO").upper())
    logging.getLogger("alembic").setLevel(logging.WARNING)


class Throttled:
    """Logs one event at most once per ``interval_s`` (a store or a disk that keeps failing must
    not write a traceback per attempt): the first occurrence with its traceback, later ones as
    one line that says how many were held back."""

    def __init__(self, logger: logging.Logger, interval_s: float = 30.0) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def __call__(
        self,
        level: int,
        event: str,
        extra: dict[str, Any] | None = None,
        *,
        exc_info: bool = False,
        key: str = "",
    ) -> bool:
        """Log ``event`` unless it was logged less than ``interval_s`` ago (per ``key``, by
        default the event itself); returns whether it was logged."""
        slot = f"{event}|{key}"
        now = time.monotonic()
        with self._lock:
            last = self._last.get(slot)
            if last is not None and now - last < self._interval_s:
                self._held[slot] = self._held.get(slot, 0) + 1
                return False
            held = self._held.pop(slot, 0)
            self._last[slot] = now
            first = last is None
        fields = dict(extra or {})
        if held:
            fields["repeated"] = held
        self._logger.log(level, event, exc_info=exc_info and first, extra=fields)
        return True

    def reset(self, event: str, key: str = "") -> None:
        """The condition is over: its next occurrence is logged in full again."""
        with self._lock:
            self._last.pop(f"{event}|{key}", None)
            self._held.pop(f"{event}|{key}", None)
