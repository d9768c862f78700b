"""JSON representations of stored records in API responses."""

from __future__ import annotations

import json
from typing import Any

from store.records import AttemptRecord, DeliveryRecord, ScoreRecord, ScoreRequestRecord
from webhooks.timefmt import format_time


def score_resource(score: ScoreRecord) -> dict[str, Any]:
    return {
        "value": score.value,
        "computed_at": format_time(score.computed_at),
        "valid_until": format_time(score.valid_until),
    }


def request_resource(request: ScoreRequestRecord) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "correlation_id": request.correlation_id,
        "customer_id": request.customer_id,
        "status": request.status.value,
        "created_at": format_time(request.created_at),
        "completed_at": format_time(request.completed_at) if request.completed_at else None,
        "callback_url": request.callback_url,
        "metadata": json.loads(request.metadata) if request.metadata else None,
    }
    if request.score is not None:
        resource["score"] = score_resource(request.score)
    if request.failure_reason is not None:
        resource["error"] = {"reason": request.failure_reason}
    return resource


def delivery_resource(delivery: DeliveryRecord) -> dict[str, Any]:
    leased = delivery.lease_owner is not None
    return {
        "id": delivery.id,
        "message_id": delivery.message_id,
        "client_id": delivery.client_id,
        "correlation_id": delivery.correlation_id,
        "event_type": delivery.event_type,
        "url": delivery.url,
        "status": delivery.status.value,
        "in_flight": leased,
        "attempt_count": delivery.attempt_count,
        "next_attempt_at": (
            format_time(delivery.next_attempt_at)
            if delivery.status.value == "pending"
            else None
        ),
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "created_at": format_time(delivery.created_at),
        "updated_at": format_time(delivery.updated_at),
    }


def attempt_resource(attempt: AttemptRecord) -> dict[str, Any]:
    return {
        "number": attempt.number,
        "started_at": format_time(attempt.started_at),
        "duration_ms": round(attempt.duration_ms, 1),
        "status_code": attempt.status_code,
        "error": attempt.error,
        "response_excerpt": attempt.response_excerpt,
    }
