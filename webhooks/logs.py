"""Log output: text or one JSON object per line, with repeated failures rate-limited.

The code logs with ``extra={"event": ..., ids...}``. The JSON format writes
every such field as a key beside time, level, logger and message. Identical
failures beyond a few a minute are counted and reported in one summary
line instead of one line each, while the metrics still count every one.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from pythonjsonlogger.json import JsonFormatter

from webhooks.timefmt import format_time

log = logging.getLogger("webhooks.logs")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
HANDLER_NAME = "webhooks"
SUMMARY_EVENT = "log_repeats_suppressed"
# Maximum number of keys that the repeat filter tracks. Records of further
# keys pass unlimited, so the memory used stays bounded.
MAX_TRACKED_KEYS = 10_000


class JsonLineFormatter(JsonFormatter):
    """One JSON object per record: time, level, logger, message and each extra field."""

    def __init__(self) -> None:
        super().__init__("%(message)s", json_ensure_ascii=False)

    def add_fields(
        self,
        log_data: dict[str, Any],
        record: logging.LogRecord,
        message_dict: dict[str, Any],
    ) -> None:
        log_data["time"] = format_time(datetime.fromtimestamp(record.created, UTC))
        log_data["level"] = record.levelname
        log_data["logger"] = record.name
        super().add_fields(log_data, record, message_dict)


@dataclass
class _Window:
    started_at: float  # monotonic seconds
    passed: int = 0
    suppressed: int = 0


_RepeatKey = tuple[str, str | None, str | None, int | None, str | None]


class RepeatFilter(logging.Filter):
    """Pass the first ``limit`` records of each failure in a window and count the rest.

    A failure is a record at INFO or above with an ``event``, keyed by the
    event, ``host``, ``error``, ``status_code`` and exception type. When a
    window with suppressed records has ended, the next record through the
    filter, or ``flush``, logs one summary line per key.
    """

    def __init__(
        self,
        limit: int = 5,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._limit = limit
        self._window_s = window_s
        self._clock = clock
        self._windows: dict[_RepeatKey, _Window] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        event = getattr(record, "event", None)
        if record.levelno < logging.INFO or event is None or event == SUMMARY_EVENT:
            return True
        if record.exc_info:
            # A traceback of an unexpected error is never suppressed: two
            # errors of one exception type can have different causes.
            return True
        now = self._clock()
        self._log_summaries(self._take_ended(now))

        key = _repeat_key(record, event)
        with self._lock:
            window = self._windows.get(key)
            if window is None:
                if len(self._windows) >= MAX_TRACKED_KEYS:
                    return True
                window = self._windows[key] = _Window(started_at=now)
            if window.passed < self._limit:
                window.passed += 1
                return True
            window.suppressed += 1
            return False

    def flush(self) -> None:
        """Log the summaries of every key with suppressed records, ended or not."""
        self._log_summaries(self._take_ended(None))

    def _take_ended(self, now: float | None) -> list[tuple[_RepeatKey, _Window]]:
        """Remove the windows ended at ``now`` (all if None) and return them."""
        with self._lock:
            ended = [
                (key, window)
                for key, window in self._windows.items()
                if now is None or now - window.started_at >= self._window_s
            ]
            for key, _ in ended:
                del self._windows[key]
        return ended

    def _log_summaries(self, ended: list[tuple[_RepeatKey, _Window]]) -> None:
        # Logged outside the lock: the summary passes through this filter too.
        for (event, host, error, status_code, exception), window in ended:
            if window.suppressed == 0:
                continue
            log.warning(
                "suppressed %d more %s lines (host %s, %s) within %.0f s",
                window.suppressed,
                event,
                host or "-",
                error or exception or f"status {status_code}",
                self._window_s,
                extra={
                    "event": SUMMARY_EVENT,
                    "repeated_event": event,
                    "host": host,
                    "error": error,
                    "status_code": status_code,
                    "suppressed": window.suppressed,
                },
            )


def _repeat_key(record: logging.LogRecord, event: str) -> _RepeatKey:
    exception = (
        record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else None
    )
    return (
        event,
        getattr(record, "host", None),
        getattr(record, "error", None),
        getattr(record, "status_code", None),
        exception,
    )


def configure_logging(
    log_format: str, level: str, stream: IO[str] | None = None
) -> RepeatFilter:
    """Send every log record at ``level`` and above to ``stream`` (standard error).

    aiosqlite's records stay at INFO and above even at DEBUG, because at
    DEBUG it logs each SQL statement with its parameters, customer IDs
    included.

    Replaces the handler that an earlier call installed. Returns the repeat
    filter, whose ``flush`` the caller runs when the process stops, because
    a summary otherwise waits for the next record that passes the filter.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(HANDLER_NAME)
    if log_format == "json":
        handler.setFormatter(JsonLineFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    repeats = RepeatFilter()
    handler.addFilter(repeats)

    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("aiosqlite").setLevel(logging.INFO)
    return repeats
