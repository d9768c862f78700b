"""Records that cross the store interface: frozen, keyword-only, UTC times."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any


class RequestStatus(StrEnum):
    PENDING = "pending"
    READY = "ready"
    FAILED = "failed"


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"
    HELD = "held"  # the schedule ran out while the receiver was down throughout


class Audience(StrEnum):
    CLIENT = "client"  # shown to the client that owns the request
    OPERATOR = "operator"  # shown to operators only, such as the backend's side


@dataclass(frozen=True, kw_only=True)
class ClientRecord:
    id: str
    name: str
    api_key_hash: str  # SHA-256 hex of the API key
    signing_secrets: bytes  # encrypted by the service, opaque here
    created_at: datetime


@dataclass(frozen=True, kw_only=True)
class ComputationRecord:
    id: str
    client_id: str
    customer_id: str
    status: RequestStatus
    created_at: datetime
    completed_at: datetime | None = None
    result_fingerprint: str | None = None  # canonical text of the first result
    failure_reason: str | None = None


@dataclass(frozen=True, kw_only=True)
class ScoreRecord:
    id: str
    client_id: str
    customer_id: str
    computation_id: str
    value: int
    computed_at: datetime
    valid_until: datetime


@dataclass(frozen=True, kw_only=True)
class ScoreRequestRecord:
    correlation_id: str
    client_id: str
    customer_id: str
    callback_url: str
    metadata: str | None  # JSON text, as submitted
    status: RequestStatus
    created_at: datetime
    completed_at: datetime | None = None
    computation_id: str | None = None
    score: ScoreRecord | None = None
    failure_reason: str | None = None
    delivered_at: datetime | None = None  # first webhook the receiver accepted
    fetched_at: datetime | None = None  # first read of the result by the client


@dataclass(frozen=True, kw_only=True)
class IdempotencyRecord:
    client_id: str
    key: str
    request_fingerprint: str
    correlation_id: str
    status_code: int
    created_at: datetime


@dataclass(frozen=True, kw_only=True)
class NewDelivery:
    id: str
    message_id: str
    client_id: str | None  # None for events to the scoring backend
    correlation_id: str
    event_type: str
    url: str
    host: str  # the receiver's host and port, the unit of isolation
    payload: bytes  # the exact body sent on every attempt
    next_attempt_at: datetime


@dataclass(frozen=True, kw_only=True)
class DeliveryRecord:
    id: str
    message_id: str
    client_id: str | None
    correlation_id: str
    event_type: str
    url: str
    host: str
    payload: bytes
    status: DeliveryStatus
    attempt_count: int  # all attempts ever made
    attempts_in_round: int  # attempts since creation or the last replay
    next_attempt_at: datetime
    lease_owner: str | None
    lease_expires_at: datetime | None
    last_error: str | None
    last_status_code: int | None
    created_at: datetime
    updated_at: datetime
    # Set by claim_due_deliveries when the claim took over a lease that had
    # expired, because the process holding it died or stalled.
    took_over_expired_lease: bool = False
    held_until: datetime | None = None  # when a held delivery becomes failed


@dataclass(frozen=True, kw_only=True)
class AttemptRecord:
    delivery_id: str
    number: int  # 1 for the first attempt ever made
    started_at: datetime
    duration_ms: float
    status_code: int | None
    error: str | None
    response_excerpt: str | None


@dataclass(frozen=True, kw_only=True)
class TimelineEntry:
    correlation_id: str
    at: datetime
    step: str  # a stable snake_case name, such as "webhook_attempt"
    audience: Audience
    detail: dict[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class ReceiverHealth:
    client_id: str
    host: str
    failing_since: datetime | None  # first failure after the last success
    last_error: str | None
    last_error_at: datetime | None
    last_success_at: datetime | None


@dataclass(frozen=True, kw_only=True)
class CallbackOrigin:
    client_id: str
    origin: str  # scheme://host:port
    allowed: bool
    reason: str | None  # why the handshake failed
    checked_at: datetime


@dataclass(frozen=True, kw_only=True)
class ErasureRecord:
    id: str
    client_id: str
    customer_hash: str  # keyed hash; the customer ID itself is not kept
    requested_by: str
    erased_at: datetime
    rows_changed: int
    detail: dict[str, int]  # rows changed per table


@dataclass(frozen=True, kw_only=True)
class AttemptOutcome:
    """The result of one attempt and what becomes of the delivery after it."""

    attempt: AttemptRecord
    status: DeliveryStatus  # PENDING for a retry; DELIVERED, FAILED or HELD
    next_attempt_at: datetime | None = None  # when status is PENDING
    held_until: datetime | None = None  # when status is HELD
    timeline: TimelineEntry | None = None  # the attempt as a step of its request
    # For a client's delivery: the receiver's health is updated, and on
    # success the request counts as delivered and held deliveries to the
    # same host are released.
    client_id: str | None = None
    host: str | None = None
    correlation_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class DeliveryFilter:
    status: DeliveryStatus | None = None
    client_id: str | None = None
    event_type: str | None = None
    since: datetime | None = None  # created at or after
    until: datetime | None = None  # created before
    delivery_ids: tuple[str, ...] = ()
    host: str | None = None  # the receiver's host:port


@dataclass(frozen=True, kw_only=True)
class DeliveryPage:
    deliveries: list[DeliveryRecord]
    next_cursor: str | None  # opaque; None on the last page


@dataclass(frozen=True, kw_only=True)
class SchemaVersion:
    applied: int  # newest migration recorded in the database, 0 for none
    latest: int  # newest migration this code ships
