"""When the next attempt of a failed delivery is due."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import datetime
from email.utils import parsedate_to_datetime


def next_delay_s(
    attempts_made: int, schedule_s: Sequence[float], jitter: float
) -> float | None:
    """Return the delay before the next attempt, or None when the schedule is spent.

    ``attempts_made`` counts the attempts of this round, the one just made
    included. The delay grows by a random fraction of up to ``jitter``, so it
    is never shorter than the scheduled delay and receivers are not hit by
    synchronized retries.
    """
    if attempts_made > len(schedule_s):
        return None
    delay = schedule_s[attempts_made - 1]
    return delay * (1 + random.uniform(0, jitter))


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Return the seconds a ``Retry-After`` header asks for, or None if malformed.

    The header holds either a number of seconds or an HTTP date.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        return None
    return max(0.0, (moment - now).total_seconds())
