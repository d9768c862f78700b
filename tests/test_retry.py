"""The retry schedule, its jitter, and Retry-After parsing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from webhooks.retry import next_delay_s, parse_retry_after

SCHEDULE = (5, 300, 1800, 7200, 18000, 36000, 36000)


@pytest.mark.parametrize("attempts_made", range(1, 8))
def test_delay_follows_schedule_with_bounded_jitter(attempts_made: int) -> None:
    nominal = SCHEDULE[attempts_made - 1]
    for _ in range(200):
        delay = next_delay_s(attempts_made, SCHEDULE, jitter=0.1)
        assert delay is not None
        assert nominal <= delay <= nominal * 1.1


def test_schedule_spent_after_last_attempt() -> None:
    assert next_delay_s(len(SCHEDULE) + 1, SCHEDULE, jitter=0.1) is None


def test_jitter_spreads_delays() -> None:
    delays = {next_delay_s(1, SCHEDULE, jitter=0.1) for _ in range(20)}
    assert len(delays) > 1


NOW = datetime(2026, 12, 4, 10, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("2", 2.0),
        (" 120 ", 120.0),
        (format_datetime(NOW + timedelta(seconds=90), usegmt=True), 90.0),
        (format_datetime(NOW - timedelta(seconds=90), usegmt=True), 0.0),
        ("soon", None),
        ("-5", None),
        (None, None),
    ],
    ids=["seconds", "padded", "http-date", "past-date", "word", "negative", "absent"],
)
def test_retry_after_parsing(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, NOW) == expected
