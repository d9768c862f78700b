"""Marshmallow schemas of response bodies and webhook payloads.

A handler that dumps its response through one of these schemas cannot
serve an undeclared field, and the OpenAPI document is generated from the
same classes. Dumping does not validate, so ``required`` here
only states in the document that every response contains the field.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from marshmallow import Schema, fields

from store.records import DeliveryStatus, RequestStatus
from webhooks import events
from webhooks.timefmt import format_time


class Timestamp(fields.DateTime):
    """An RFC 3339 time in UTC with milliseconds and a ``Z`` suffix."""

    def _serialize(
        self, value: datetime | None, attr: Any, obj: Any, **kwargs: Any
    ) -> str | None:
        return None if value is None else format_time(value)


def _text(description: str, **kwargs: Any) -> fields.String:
    return fields.String(required=True, metadata={"description": description}, **kwargs)


class ScoreResource(Schema):
    value = fields.Integer(required=True, metadata={"description": "The credit score."})
    computed_at = Timestamp(required=True)
    valid_until = Timestamp(
        required=True,
        metadata={
            "description": "Until this time the score is reused for new requests."
        },
    )


class FailureResource(Schema):
    reason = _text("Why the backend could not compute the score.")


class ScoreRequestResource(Schema):
    correlation_id = _text(
        "Opaque, URL-safe ID of the request; sorts by creation time."
    )
    customer_id = _text("The client's reference of the customer.")
    status = fields.Enum(RequestStatus, by_value=True, required=True)
    created_at = Timestamp(required=True)
    completed_at = Timestamp(required=True, allow_none=True)
    callback_url = _text("URL the webhook goes to.")
    metadata = fields.Dict(
        keys=fields.String(),
        required=True,
        allow_none=True,
        metadata={"description": "The metadata object submitted, unchanged."},
    )
    score = fields.Nested(
        ScoreResource, metadata={"description": "Present when status is ready."}
    )
    error = fields.Nested(
        FailureResource, metadata={"description": "Present when status is failed."}
    )
    delivered_at = Timestamp(
        allow_none=True,
        metadata={"description": "When the receiver first accepted the webhook."},
    )
    fetched_at = Timestamp(
        allow_none=True,
        metadata={"description": "When the client first read the completed result."},
    )


class CustomerScoreResource(Schema):
    customer_id = _text("The client's reference of the customer.")
    score = fields.Nested(ScoreResource, required=True)


class ResultResource(Schema):
    correlation_id = _text("The request the result belongs to.")
    status = fields.Enum(RequestStatus, by_value=True, required=True)
    changed = fields.Boolean(
        required=True,
        metadata={"description": "False when the call repeated a stored result."},
    )


class CreatedClientResource(Schema):
    client_id = _text("ID of the new client.")
    name = _text("Readable name of the client.")
    api_key = _text("Bearer token of the client; shown only in this response.")
    signing_secret = _text(
        "Secret (whsec_ + base64) that signs the client's webhooks; "
        "shown only in this response."
    )


class AttemptResource(Schema):
    number = fields.Integer(
        required=True, metadata={"description": "1 for the first attempt ever made."}
    )
    started_at = Timestamp(required=True)
    duration_ms = fields.Float(required=True)
    status_code = fields.Integer(
        required=True,
        allow_none=True,
        metadata={
            "description": "HTTP status of the response; null when none arrived."
        },
    )
    error = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "Why the attempt failed; null on a 2xx response."},
    )
    response_excerpt = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "The first 4 KiB of the response body."},
    )


class DeliveryResource(Schema):
    id = _text("ID of the delivery.")
    message_id = _text("The webhook-id header, the same on every retry and replay.")
    client_id = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "Null for events to the scoring backend."},
    )
    correlation_id = _text("The score request the event is about.")
    event_type = fields.String(
        required=True, metadata={"enum": list(events.EVENT_TYPES)}
    )
    url = _text("The receiver's URL.")
    status = fields.Enum(DeliveryStatus, by_value=True, required=True)
    in_flight = fields.Boolean(
        required=True,
        metadata={"description": "True while a dispatcher holds a lease on it."},
    )
    attempt_count = fields.Integer(required=True)
    next_attempt_at = Timestamp(
        required=True,
        allow_none=True,
        metadata={"description": "Due time of the next attempt; null unless pending."},
    )
    last_status_code = fields.Integer(required=True, allow_none=True)
    last_error = fields.String(required=True, allow_none=True)
    created_at = Timestamp(required=True)
    updated_at = Timestamp(required=True)


class DeliveryDetailResource(DeliveryResource):
    attempts = fields.List(fields.Nested(AttemptResource), required=True)


class DeliveryPageResource(Schema):
    deliveries = fields.List(fields.Nested(DeliveryResource), required=True)
    next_cursor = fields.String(
        required=True,
        allow_none=True,
        metadata={
            "description": "Pass as cursor to get the next page; null on the last."
        },
    )


class SigningKeyResource(Schema):
    id = _text("ID of the key.")
    algorithm = fields.String(required=True, metadata={"enum": ["ed25519"]})
    public_key = _text("whpk_ + base64 of the 32-byte Ed25519 public key.")
    created_at = Timestamp(required=True)
    expires_at = Timestamp(
        required=True,
        allow_none=True,
        metadata={"description": "End of signing with this key; null while current."},
    )


class SigningKeysResource(Schema):
    keys = fields.List(fields.Nested(SigningKeyResource), required=True)


class RotatedSigningKeysResource(SigningKeysResource):
    key = fields.Nested(SigningKeyResource, required=True)


class RotatedSecretResource(Schema):
    signing_secret = _text("The new secret (whsec_ + base64); shown only here.")
    previous_secrets_expire_at = Timestamp(
        required=True,
        metadata={"description": "Until this time the previous secrets also sign."},
    )


class ProblemDocument(Schema):
    """An RFC 9457 problem document."""

    type = _text("URI reference of the problem type.")
    title = _text("Short summary of the problem type.")
    status = fields.Integer(required=True)
    detail = _text("What went wrong with this request, and how to fix it.")
    errors = fields.Dict(
        keys=fields.String(),
        metadata={"description": "Validation errors by field name (422 only)."},
    )


class HealthResource(Schema):
    status = fields.String(required=True, metadata={"enum": ["ok"]})


class ReadinessResource(Schema):
    status = fields.String(
        required=True, metadata={"enum": ["ok", "starting", "unavailable"]}
    )
    reason = fields.String(metadata={"description": "Why the service is not ready."})
    schema_version = fields.Integer(
        metadata={"description": "Newest migration applied to the store."}
    )
    migrations = fields.String(
        metadata={
            "enum": ["done", "pending"],
            "description": "State of the migrations.",
        }
    )


# Webhook payloads. events.py writes them, and tests check them against these.


class ScoreEventData(Schema):
    correlation_id = _text("The score request the event is about.")
    customer_id = _text("The client's reference of the customer.")
    status = fields.Enum(RequestStatus, by_value=True, required=True)
    score_url = _text(
        "URL to GET the request resource with the score, with the API key."
    )


class ScoreEvent(Schema):
    """score.ready or score.failed: a thin event without the score itself."""

    type = fields.String(
        required=True, metadata={"enum": [events.SCORE_READY, events.SCORE_FAILED]}
    )
    timestamp = Timestamp(required=True)
    data = fields.Nested(ScoreEventData, required=True)


class ScoreRequestedEventData(Schema):
    correlation_id = _text("Send it back in PUT .../{correlation_id}/result.")
    client_id = _text("The client whose customer it is.")
    customer_id = _text("The client's reference of the customer.")


class ScoreRequestedEvent(Schema):
    """score.requested: the event that requests a new computation from the backend."""

    type = fields.String(required=True, metadata={"enum": [events.SCORE_REQUESTED]})
    timestamp = Timestamp(required=True)
    data = fields.Nested(ScoreRequestedEventData, required=True)


class TimelineStepResource(Schema):
    at = Timestamp(required=True)
    step = _text(
        "What happened: submitted, idempotent_repeat, computation_started, "
        "computation_joined, stored_score_reused, backend_event_attempt "
        "(operators only), result_received, webhook_attempt or result_read."
    )
    detail = fields.Dict(
        keys=fields.String(),
        allow_none=True,
        metadata={"description": "IDs, status codes, errors and durations of the step."},
    )


class TimelineResource(Schema):
    correlation_id = _text("The request the steps belong to.")
    steps = fields.List(fields.Nested(TimelineStepResource), required=True)


class UnfetchedPageResource(Schema):
    requests = fields.List(fields.Nested(ScoreRequestResource), required=True)
    next_cursor = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "Pass as cursor for the next page; null on the last."},
    )


class ClientDeliveryResource(Schema):
    id = _text("The delivery's ID.")
    message_id = _text("The webhook-id header of every attempt and replay.")
    correlation_id = _text("The request the webhook is about.")
    event_type = fields.String(required=True)
    status = fields.Enum(DeliveryStatus, by_value=True, required=True)
    attempt_count = fields.Integer(required=True)
    last_status_code = fields.Integer(required=True, allow_none=True)
    last_error = fields.String(required=True, allow_none=True)
    held_until = Timestamp(
        allow_none=True,
        metadata={"description": "When a held delivery becomes failed."},
    )
    created_at = Timestamp(required=True)
    updated_at = Timestamp(required=True)


class ClientDeliveryPageResource(Schema):
    deliveries = fields.List(fields.Nested(ClientDeliveryResource), required=True)
    next_cursor = fields.String(required=True, allow_none=True)


class ReceiverHealthResource(Schema):
    host = _text("The receiver's host and port.")
    failing_since = Timestamp(
        required=True,
        allow_none=True,
        metadata={"description": "First failed attempt since the last success."},
    )
    last_error = fields.String(required=True, allow_none=True)
    last_error_at = Timestamp(required=True, allow_none=True)
    last_success_at = Timestamp(required=True, allow_none=True)


class ClientHealthResource(Schema):
    failing_since = Timestamp(
        required=True,
        allow_none=True,
        metadata={"description": "The earliest failing_since of the receivers."},
    )
    last_error = fields.String(required=True, allow_none=True)
    held_count = fields.Integer(required=True)
    failed_count = fields.Integer(required=True)
    receivers = fields.List(fields.Nested(ReceiverHealthResource), required=True)


class ErasureResource(Schema):
    erasure_id = _text("The ID of the audit record of this erasure.")
    client_id = _text("The client whose customer was erased.")
    customer_hash = _text(
        "The keyed hash that replaced the customer ID in every row kept: "
        "HMAC-SHA256 in hex, under a key derived from security.master_key."
    )
    requested_by = fields.String(
        required=True, metadata={"enum": ["cli", "admin-api"]}
    )
    erased_at = Timestamp(required=True)
    rows_changed = fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        required=True,
        metadata={"description": "Rows deleted or changed, per table."},
    )
    total_rows_changed = fields.Integer(required=True)
