"""Store reads behind the metrics and readiness probe, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from store import Store
from store.records import AttemptOutcome, AttemptRecord, DeliveryStatus, NewDelivery
from webhooks import ids
from webhooks.timefmt import utc_now


async def _insert_deliveries(store: Store, count: int) -> None:
    async with store.transaction() as transaction:
        for _ in range(count):
            await transaction.insert_delivery(
                NewDelivery(
                    id=ids.delivery_id(),
                    message_id=ids.message_id(),
                    client_id=None,
                    correlation_id=ids.correlation_id(),
                    event_type="score.requested",
                    url="http://127.0.0.1:9/backend",
                    host="127.0.0.1:9",
                    payload=b"{}",
                    next_attempt_at=utc_now() - timedelta(seconds=1),
                )
            )


async def _claim(store: Store, owner: str, lease_s: float, limit: int) -> list[Any]:
    now = utc_now()
    return await store.claim_due_deliveries(
        owner=owner,
        now=now,
        lease_until=now + timedelta(seconds=lease_s),
        limit=limit,
        per_host_limit=limit,
        host_limits={},
    )


async def test_counts_deliveries_by_state(store: Store) -> None:
    await _insert_deliveries(store, 4)
    claimed = await _claim(store, "node-a", lease_s=60, limit=2)
    failed = claimed[0]
    await store.record_outcomes(
        "node-a",
        [
            AttemptOutcome(
                attempt=AttemptRecord(
                    delivery_id=failed.id,
                    number=1,
                    started_at=utc_now(),
                    duration_ms=1.0,
                    status_code=500,
                    error=None,
                    response_excerpt="",
                ),
                status=DeliveryStatus.FAILED,
            )
        ],
    )

    counts = await store.count_deliveries_by_state(utc_now())

    assert counts == {"pending": 2, "in_flight": 1, "held": 0, "failed": 1}


async def test_expired_lease_counts_as_pending(store: Store) -> None:
    await _insert_deliveries(store, 1)
    await _claim(store, "node-a", lease_s=0.01, limit=1)

    counts = await store.count_deliveries_by_state(utc_now() + timedelta(seconds=1))

    assert counts == {"pending": 1, "in_flight": 0, "held": 0, "failed": 0}


async def test_claim_marks_expired_lease_takeover(store: Store) -> None:
    await _insert_deliveries(store, 2)
    first = await _claim(store, "node-a", lease_s=-1, limit=1)
    assert [d.took_over_expired_lease for d in first] == [False]

    second = await _claim(store, "node-b", lease_s=60, limit=2)

    taken_over = {d.id: d.took_over_expired_lease for d in second}
    assert taken_over[first[0].id] is True
    assert list(taken_over.values()).count(False) == 1


async def test_schema_version_after_open(store: Store) -> None:
    version = await store.schema_version()

    assert version.applied >= 1
    assert version.applied == version.latest
