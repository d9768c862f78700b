"""Event bodies: thin events that carry IDs and a link, never the score."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from store.records import RequestStatus, ScoreRequestRecord
from webhooks.timefmt import format_time

SCORE_REQUESTED = "score.requested"
SCORE_READY = "score.ready"
SCORE_FAILED = "score.failed"
EVENT_TYPES = (SCORE_REQUESTED, SCORE_READY, SCORE_FAILED)


def _encode(event_type: str, timestamp: datetime, data: dict[str, Any]) -> bytes:
    event = {"type": event_type, "timestamp": format_time(timestamp), "data": data}
    return json.dumps(event, separators=(",", ":")).encode()


def score_url(public_url: str, correlation_id: str) -> str:
    return f"{public_url.rstrip('/')}/v1/score-requests/{correlation_id}"


def completion_event(request: ScoreRequestRecord, public_url: str) -> tuple[str, bytes]:
    """Return the type and body of the webhook that tells a client its request ended."""
    assert request.completed_at is not None
    event_type = SCORE_READY if request.status is RequestStatus.READY else SCORE_FAILED
    data = {
        "correlation_id": request.correlation_id,
        "customer_id": request.customer_id,
        "status": request.status.value,
        "score_url": score_url(public_url, request.correlation_id),
    }
    return event_type, _encode(event_type, request.completed_at, data)


def score_requested_event(
    correlation_id: str, client_id: str, customer_id: str, timestamp: datetime
) -> bytes:
    """Return the body sent to the scoring backend for a new computation.

    ``client_id`` is included because customer IDs are references of each
    client and only unique together with it.
    """
    data = {
        "correlation_id": correlation_id,
        "client_id": client_id,
        "customer_id": customer_id,
    }
    return _encode(SCORE_REQUESTED, timestamp, data)
