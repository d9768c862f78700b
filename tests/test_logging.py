"""Log output in both formats, the fields of each line, and repeat limiting."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from conftest import Service, make_config, wait_for
from webhooks.logs import HANDLER_NAME, SUMMARY_EVENT, RepeatFilter, configure_logging


@pytest.fixture
def capture_logs() -> Iterator[Callable[[str, str], io.StringIO]]:
    """Install the service's log handler on a buffer; remove it afterwards."""
    root = logging.getLogger()
    level = root.level

    def install(log_format: str, level_name: str = "DEBUG") -> io.StringIO:
        buffer = io.StringIO()
        configure_logging(log_format, level_name, stream=buffer)
        return buffer

    yield install
    for handler in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(handler)
    root.setLevel(level)


def _json_lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


async def _run_failing_flow(
    make_service: Any, make_receiver: Any, backend: Any, tmp_path: Path
) -> tuple[Service, Any, str]:
    """Deliver one webhook to a receiver that returns 500 until it fails for good."""
    config = make_config(tmp_path)
    config = replace(config, backend=replace(config.backend, url=backend.url()))
    service = await make_service(config)
    client = await service.new_client()
    failing = await make_receiver(default_status=500)
    response = await service.submit(
        client, customer_id="c-1", callback_url=failing.url()
    )
    correlation_id = (await response.json())["correlation_id"]
    await service.post_result(correlation_id, outcome="ready", score=700)
    await wait_for(lambda: len(failing.received) == 4)
    await service.http.close()  # stops the app, so the stop line is written
    return service, client, correlation_id


async def test_json_lines_carry_ids(
    capture_logs: Any,
    make_service: Any,
    make_receiver: Any,
    backend: Any,
    tmp_path: Path,
) -> None:
    buffer = capture_logs("json")

    _, _, correlation_id = await _run_failing_flow(
        make_service, make_receiver, backend, tmp_path
    )

    lines = _json_lines(buffer)
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line), line
    failed = [line for line in lines if line.get("event") == "attempt_failed"]
    assert len(failed) == 3
    for line in failed:
        assert line["correlation_id"] == correlation_id
        assert line["delivery_id"].startswith("dlv_")
        assert line["status_code"] == 500
        assert line["next_attempt_at"].endswith("Z")
        assert line["host"].startswith("127.0.0.1:")
    final = [line for line in lines if line.get("event") == "delivery_failed"]
    assert len(final) == 1
    assert final[0]["level"] == "ERROR"
    assert final[0]["delivery_id"] == failed[0]["delivery_id"]


async def test_json_start_and_stop_lines(
    capture_logs: Any,
    make_service: Any,
    make_receiver: Any,
    backend: Any,
    tmp_path: Path,
) -> None:
    buffer = capture_logs("json")

    service, _, _ = await _run_failing_flow(
        make_service, make_receiver, backend, tmp_path
    )

    events = [line.get("event") for line in _json_lines(buffer)]
    assert events.count("service_starting") == 1
    assert events.count("service_stopped") == 1
    start = next(
        line for line in _json_lines(buffer) if line.get("event") == "service_starting"
    )
    assert start["store_kind"] == service.state.store.kind
    assert start["listen"] == "127.0.0.1:8080"
    assert start["safety_switches"] == ["allow_http", "allow_private_networks"]
    assert start["version"]


async def test_successes_logged_at_debug(
    capture_logs: Any, service: Service, make_receiver: Any
) -> None:
    buffer = capture_logs("json")
    client = await service.new_client()
    good = await make_receiver()
    response = await service.submit(client, customer_id="c-1", callback_url=good.url())
    correlation_id = (await response.json())["correlation_id"]
    await service.post_result(correlation_id, outcome="ready", score=700)
    await wait_for(lambda: len(good.received) == 1)
    await wait_for(
        lambda: any(
            line.get("event") == "attempt_succeeded"
            and line.get("correlation_id") == correlation_id
            for line in _json_lines(buffer)
        )
    )

    succeeded = [
        line
        for line in _json_lines(buffer)
        if line.get("event") == "attempt_succeeded"
        and line.get("correlation_id") == correlation_id
    ]
    assert succeeded[0]["level"] == "DEBUG"


async def test_no_secret_in_logs(
    capture_logs: Any,
    make_service: Any,
    make_receiver: Any,
    backend: Any,
    tmp_path: Path,
) -> None:
    buffer = capture_logs("json")

    service, client, _ = await _run_failing_flow(
        make_service, make_receiver, backend, tmp_path
    )

    output = buffer.getvalue()
    assert client.api_key not in output
    assert client.signing_secret not in output
    assert service.config.backend.token not in output
    assert service.config.backend.signing_secret not in output
    assert service.config.admin.token not in output
    assert service.config.security.master_key not in output


def test_text_format_line(capture_logs: Any) -> None:
    buffer = capture_logs("text", "INFO")

    logging.getLogger("webhooks.test").info(
        "attempt of %s failed", "dlv_1", extra={"event": "attempt_failed"}
    )
    logging.getLogger("webhooks.test").debug("hidden below INFO")

    lines = buffer.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith(" INFO webhooks.test: attempt of dlv_1 failed")


def test_json_formats_exception(capture_logs: Any) -> None:
    buffer = capture_logs("json")

    try:
        raise ValueError("broken")
    except ValueError:
        logging.getLogger("webhooks.test").exception(
            "failed", extra={"event": "claim_failed"}
        )

    (line,) = _json_lines(buffer)
    assert line["level"] == "ERROR"
    assert line["event"] == "claim_failed"
    assert "ValueError: broken" in line["exc_info"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _failure(host: str = "127.0.0.1:9", level: int = logging.INFO) -> logging.LogRecord:
    record = logging.LogRecord(
        "webhooks.dispatcher", level, __file__, 1, "failed", (), None
    )
    record.event = "attempt_failed"
    record.host = host
    record.error = "connection refused"
    record.status_code = None
    return record


@pytest.fixture
def summaries(
    caplog: pytest.LogCaptureFixture,
) -> Callable[[], list[logging.LogRecord]]:
    caplog.set_level(logging.WARNING, logger="webhooks.logs")

    def found() -> list[logging.LogRecord]:
        return [r for r in caplog.records if getattr(r, "event", None) == SUMMARY_EVENT]

    return found


def test_repeats_limited_per_window(summaries: Any) -> None:
    clock = FakeClock()
    repeats = RepeatFilter(limit=3, window_s=60, clock=clock)

    passed = [repeats.filter(_failure()) for _ in range(10)]

    assert passed == [True] * 3 + [False] * 7
    assert summaries() == []


def test_summary_after_window_ends(summaries: Any) -> None:
    clock = FakeClock()
    repeats = RepeatFilter(limit=3, window_s=60, clock=clock)
    for _ in range(10):
        repeats.filter(_failure())

    clock.now += 61
    passed = repeats.filter(_failure())

    assert passed is True
    (summary,) = summaries()
    assert summary.suppressed == 7
    assert summary.repeated_event == "attempt_failed"
    assert summary.host == "127.0.0.1:9"


def test_flush_reports_open_windows(summaries: Any) -> None:
    repeats = RepeatFilter(limit=1, window_s=60, clock=FakeClock())
    for _ in range(4):
        repeats.filter(_failure())

    repeats.flush()

    (summary,) = summaries()
    assert summary.suppressed == 3


def test_repeats_counted_per_host(summaries: Any) -> None:
    repeats = RepeatFilter(limit=1, window_s=60, clock=FakeClock())

    first = [repeats.filter(_failure("a.test:443")) for _ in range(2)]
    second = [repeats.filter(_failure("b.test:443")) for _ in range(2)]

    assert first == [True, False]
    assert second == [True, False]


def test_debug_and_plain_records_not_limited() -> None:
    repeats = RepeatFilter(limit=1, window_s=60, clock=FakeClock())
    plain = logging.LogRecord(
        "webhooks", logging.INFO, __file__, 1, "no event", (), None
    )

    debug = [repeats.filter(_failure(level=logging.DEBUG)) for _ in range(5)]
    unkeyed = [repeats.filter(plain) for _ in range(5)]

    assert all(debug)
    assert all(unkeyed)
