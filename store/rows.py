"""Conversion of database rows to records, shared by the store implementations."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from store.records import (
    AttemptRecord,
    Audience,
    CallbackOrigin,
    ClientRecord,
    ComputationRecord,
    DeliveryRecord,
    DeliveryStatus,
    ErasureRecord,
    ReceiverHealth,
    RequestStatus,
    ScoreRecord,
    ScoreRequestRecord,
    TimelineEntry,
)

# sqlite3.Row and asyncpg.Record both index by column name.
Row = Any


def time(value: float | datetime | None) -> datetime | None:
    """Return a UTC time from Unix seconds (SQLite) or a timestamptz (PostgreSQL)."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromtimestamp(value, UTC)


def _required(value: float | datetime) -> datetime:
    moment = time(value)
    assert moment is not None
    return moment


def client(row: Row) -> ClientRecord:
    return ClientRecord(
        id=row["id"],
        name=row["name"],
        api_key_hash=row["api_key_hash"],
        signing_secrets=bytes(row["signing_secrets"]),
        created_at=_required(row["created_at"]),
    )


def computation(row: Row) -> ComputationRecord:
    return ComputationRecord(
        id=row["id"],
        client_id=row["client_id"],
        customer_id=row["customer_id"],
        status=RequestStatus(row["status"]),
        created_at=_required(row["created_at"]),
        completed_at=time(row["completed_at"]),
        result_fingerprint=row["result_fingerprint"],
        failure_reason=row["failure_reason"],
    )


def score(row: Row, prefix: str = "") -> ScoreRecord:
    return ScoreRecord(
        id=row[f"{prefix}id"],
        client_id=row[f"{prefix}client_id"],
        customer_id=row[f"{prefix}customer_id"],
        computation_id=row[f"{prefix}computation_id"],
        value=row[f"{prefix}value"],
        computed_at=_required(row[f"{prefix}computed_at"]),
        valid_until=_required(row[f"{prefix}valid_until"]),
    )


def score_request(row: Row) -> ScoreRequestRecord:
    score_record = score(row, "score_") if row["score_id"] is not None else None
    return ScoreRequestRecord(
        correlation_id=row["correlation_id"],
        client_id=row["client_id"],
        customer_id=row["customer_id"],
        callback_url=row["callback_url"],
        metadata=row["metadata"],
        status=RequestStatus(row["status"]),
        created_at=_required(row["created_at"]),
        completed_at=time(row["completed_at"]),
        computation_id=row["computation_id"],
        score=score_record,
        failure_reason=row["failure_reason"],
        delivered_at=time(row["delivered_at"]),
        fetched_at=time(row["fetched_at"]),
    )


def delivery(row: Row) -> DeliveryRecord:
    return DeliveryRecord(
        id=row["id"],
        message_id=row["message_id"],
        client_id=row["client_id"],
        correlation_id=row["correlation_id"],
        event_type=row["event_type"],
        url=row["url"],
        host=row["host"],
        payload=bytes(row["payload"]),
        status=DeliveryStatus(row["status"]),
        attempt_count=row["attempt_count"],
        attempts_in_round=row["attempts_in_round"],
        next_attempt_at=_required(row["next_attempt_at"]),
        lease_owner=row["lease_owner"],
        lease_expires_at=time(row["lease_expires_at"]),
        last_error=row["last_error"],
        last_status_code=row["last_status_code"],
        created_at=_required(row["created_at"]),
        updated_at=_required(row["updated_at"]),
        held_until=time(row["held_until"]),
    )


def attempt(row: Row) -> AttemptRecord:
    return AttemptRecord(
        delivery_id=row["delivery_id"],
        number=row["number"],
        started_at=_required(row["started_at"]),
        duration_ms=row["duration_ms"],
        status_code=row["status_code"],
        error=row["error"],
        response_excerpt=row["response_excerpt"],
    )



def timeline_entry(row: Row) -> TimelineEntry:
    return TimelineEntry(
        correlation_id=row["correlation_id"],
        at=_required(row["at"]),
        step=row["step"],
        audience=Audience(row["audience"]),
        detail=json.loads(row["detail"]) if row["detail"] else None,
    )


def receiver_health(row: Row) -> ReceiverHealth:
    return ReceiverHealth(
        client_id=row["client_id"],
        host=row["host"],
        failing_since=time(row["failing_since"]),
        last_error=row["last_error"],
        last_error_at=time(row["last_error_at"]),
        last_success_at=time(row["last_success_at"]),
    )


def callback_origin(row: Row) -> CallbackOrigin:
    return CallbackOrigin(
        client_id=row["client_id"],
        origin=row["origin"],
        allowed=bool(row["allowed"]),
        reason=row["reason"],
        checked_at=_required(row["checked_at"]),
    )


def erasure(row: Row) -> ErasureRecord:
    return ErasureRecord(
        id=row["id"],
        client_id=row["client_id"],
        customer_hash=row["customer_hash"],
        requested_by=row["requested_by"],
        erased_at=_required(row["erased_at"]),
        rows_changed=row["rows_changed"],
        detail=json.loads(row["detail"]) if row["detail"] else {},
    )


def choose_per_host(
    candidates: Sequence[Row],
    limit: int,
    per_host_limit: int,
    host_limits: Mapping[str, int],
) -> list[str]:
    remaining: dict[str, int] = {}
    chosen = []
    for row in candidates:
        host = row["host"]
        left = remaining.get(host, host_limits.get(host, per_host_limit))
        if left <= 0:
            continue
        remaining[host] = left - 1
        chosen.append(row["id"])
        if len(chosen) == limit:
            break
    return chosen


def delivery_counts(found: Sequence[Row]) -> dict[str, int]:
    """Return the counts by state from rows of (status, leased, count)."""
    counts = {"pending": 0, "in_flight": 0, "held": 0, "failed": 0}
    for row in found:
        if row["status"] in ("failed", "held"):
            counts[row["status"]] += row["count"]
        elif row["leased"]:
            counts["in_flight"] += row["count"]
        else:
            counts["pending"] += row["count"]
    return counts
