"""JSON representations of stored records in API responses."""

from __future__ import annotations

import json
from typing import Any

from store.records import (
    AttemptRecord,
    DeliveryPage,
    DeliveryRecord,
    ScoreRecord,
    ScoreRequestRecord,
)
from webhooks.resource_schemas import (
    DeliveryDetailResource,
    DeliveryPageResource,
    DeliveryResource,
    ScoreRequestResource,
    ScoreResource,
)

# Dumping keeps only the fields these schemas declare, and the OpenAPI
# document is generated from them.
_SCORE = ScoreResource()
_SCORE_REQUEST = ScoreRequestResource()
_DELIVERY = DeliveryResource()
_DELIVERY_DETAIL = DeliveryDetailResource()
_DELIVERY_PAGE = DeliveryPageResource()


def score_resource(score: ScoreRecord) -> dict[str, Any]:
    return _SCORE.dump(score)


def request_resource(request: ScoreRequestRecord) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "correlation_id": request.correlation_id,
        "customer_id": request.customer_id,
        "status": request.status,
        "created_at": request.created_at,
        "completed_at": request.completed_at,
        "callback_url": request.callback_url,
        "metadata": json.loads(request.metadata) if request.metadata else None,
        "delivered_at": request.delivered_at,
        "fetched_at": request.fetched_at,
    }
    if request.score is not None:
        resource["score"] = request.score
    if request.failure_reason is not None:
        resource["error"] = {"reason": request.failure_reason}
    return _SCORE_REQUEST.dump(resource)


def _delivery_fields(delivery: DeliveryRecord) -> dict[str, Any]:
    leased = delivery.lease_owner is not None
    return {
        "id": delivery.id,
        "message_id": delivery.message_id,
        "client_id": delivery.client_id,
        "correlation_id": delivery.correlation_id,
        "event_type": delivery.event_type,
        "url": delivery.url,
        "status": delivery.status,
        "in_flight": leased,
        "attempt_count": delivery.attempt_count,
        "next_attempt_at": (
            delivery.next_attempt_at if delivery.status.value == "pending" else None
        ),
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "created_at": delivery.created_at,
        "updated_at": delivery.updated_at,
    }


def delivery_resource(delivery: DeliveryRecord) -> dict[str, Any]:
    return _DELIVERY.dump(_delivery_fields(delivery))


def delivery_page_resource(page: DeliveryPage) -> dict[str, Any]:
    resource = {
        "deliveries": [_delivery_fields(delivery) for delivery in page.deliveries],
        "next_cursor": page.next_cursor,
    }
    return _DELIVERY_PAGE.dump(resource)


def delivery_detail_resource(
    delivery: DeliveryRecord, attempts: list[AttemptRecord]
) -> dict[str, Any]:
    resource = _delivery_fields(delivery)
    resource["attempts"] = [_attempt_fields(attempt) for attempt in attempts]
    return _DELIVERY_DETAIL.dump(resource)


def _attempt_fields(attempt: AttemptRecord) -> dict[str, Any]:
    return {
        "number": attempt.number,
        "started_at": attempt.started_at,
        "duration_ms": round(attempt.duration_ms, 1),
        "status_code": attempt.status_code,
        "error": attempt.error,
        "response_excerpt": attempt.response_excerpt,
    }
