"""Claims, outcome batches and group commits under concurrency, on both stores."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from store import Store, StoreError, open_store
from store.records import (
    AttemptOutcome,
    AttemptRecord,
    DeliveryRecord,
    DeliveryStatus,
    NewDelivery,
)
from store.sqlite import SqliteStore
from webhooks import ids
from webhooks.timefmt import utc_now


def _delivery(host: str = "127.0.0.1:9", client_id: str | None = None) -> NewDelivery:
    return NewDelivery(
        id=ids.delivery_id(),
        message_id=ids.message_id(),
        client_id=client_id,
        correlation_id=ids.correlation_id(),
        event_type="score.requested",
        url=f"http://{host}/hooks",
        host=host,
        payload=b"{}",
        next_attempt_at=utc_now() - timedelta(seconds=1),
    )


async def _claim(
    store: Store,
    owner: str,
    limit: int,
    *,
    lease_s: float = 60,
    host_limits: dict[str, int] | None = None,
) -> list[DeliveryRecord]:
    now = utc_now()
    return await store.claim_due_deliveries(
        owner=owner,
        now=now,
        lease_until=now + timedelta(seconds=lease_s),
        limit=limit,
        per_host_limit=limit,
        host_limits=host_limits or {},
    )


def _delivered(delivery_id: str) -> AttemptOutcome:
    return AttemptOutcome(
        attempt=AttemptRecord(
            delivery_id=delivery_id,
            number=1,
            started_at=utc_now(),
            duration_ms=1.0,
            status_code=204,
            error=None,
            response_excerpt="",
        ),
        status=DeliveryStatus.DELIVERED,
    )


async def _claim_in_rounds(stores: list[Store], total: int) -> list[str]:
    """Claim with 8 concurrent claimers per store until a round finds nothing.

    Under PostgreSQL a claim locks more candidates than it takes, so rows
    locked by a concurrent claim are skipped in that round, not lost.
    """
    claimed: list[str] = []
    for _ in range(total):
        batches = await asyncio.gather(
            *(_claim(store, f"node-{n}", 10) for n in range(8) for store in stores)
        )
        found = [delivery.id for batch in batches for delivery in batch]
        if not found:
            break
        claimed.extend(found)
    return claimed


async def test_insert_deliveries_makes_all_due(store: Store) -> None:
    async with store.transaction() as transaction:
        await transaction.insert_deliveries([_delivery() for _ in range(500)])

    claimed = await _claim(store, "node-a", 1000)

    assert len(claimed) == 500
    assert {delivery.status for delivery in claimed} == {DeliveryStatus.PENDING}


async def test_concurrent_claims_never_share_a_delivery(store: Store) -> None:
    async with store.transaction() as transaction:
        await transaction.insert_deliveries([_delivery() for _ in range(60)])

    batches = await asyncio.gather(*(_claim(store, f"node-{n}", 10) for n in range(8)))
    claimed = await _claim_in_rounds([store], 60)

    first_round = [delivery.id for batch in batches for delivery in batch]
    assert len(set(first_round)) == len(first_round)
    for number, batch in enumerate(batches):
        assert {delivery.lease_owner for delivery in batch} <= {f"node-{number}"}
    assert len(first_round) + len(claimed) == 60
    assert len(set(first_round + claimed)) == 60


async def test_claims_of_two_postgres_stores_never_share(
    postgres_url: str,
) -> None:
    first = await open_store(postgres_url)
    second = await open_store(postgres_url)
    try:
        async with first.transaction() as transaction:
            await transaction.insert_deliveries([_delivery() for _ in range(200)])

        claimed = await _claim_in_rounds([first, second], 200)
    finally:
        await first.close()
        await second.close()

    assert len(claimed) == 200
    assert len(set(claimed)) == 200


async def test_claim_passes_skipped_host_backlog(store: Store) -> None:
    backlog = [_delivery("dead.test:443") for _ in range(2000)]
    async with store.transaction() as transaction:
        await transaction.insert_deliveries(backlog)
    await asyncio.sleep(0.01)
    live = [_delivery(f"live{n}.test:443") for n in range(3)]
    async with store.transaction() as transaction:
        await transaction.insert_deliveries(live)

    skipped = await _claim(store, "node-a", 10, host_limits={"dead.test:443": 0})
    probe = await _claim(store, "node-b", 10, host_limits={"dead.test:443": 1})

    assert {delivery.id for delivery in skipped} == {delivery.id for delivery in live}
    assert len(probe) == 1
    assert probe[0].host == "dead.test:443"


async def test_claim_walks_hosts_oldest_first(store: Store) -> None:
    busy = [_delivery("busy.test:443") for _ in range(100)]
    async with store.transaction() as transaction:
        await transaction.insert_deliveries(busy)
    await asyncio.sleep(0.01)
    others = [_delivery(f"other{n}.test:443") for n in range(12)]
    for delivery in others:
        async with store.transaction() as transaction:
            await transaction.insert_delivery(delivery)

    claimed = await _claim(store, "node-a", 5, host_limits={"busy.test:443": 1})

    assert len(claimed) == 5
    assert [delivery.host for delivery in claimed][0] == "busy.test:443"
    assert [delivery.id for delivery in claimed[1:]] == [d.id for d in others[:4]]


async def test_failed_outcome_batch_rolls_back_every_outcome(store: Store) -> None:
    async with store.transaction() as transaction:
        await transaction.insert_deliveries([_delivery() for _ in range(3)])
    claimed = await _claim(store, "node-a", 10, lease_s=0.5)
    # An attempt of an unknown delivery breaks the attempts table's foreign key.
    batch = [_delivered(delivery.id) for delivery in claimed] + [_delivered("dlv_gone")]

    with pytest.raises(Exception):  # noqa: B017 - each store raises its driver's error
        await store.record_outcomes("node-a", batch)

    for delivery in claimed:
        stored = await store.get_delivery(delivery.id)
        assert stored is not None
        assert stored.status is DeliveryStatus.PENDING
        assert stored.attempt_count == 0
        assert await store.list_attempts(delivery.id) == []
    await asyncio.sleep(0.6)
    again = await _claim(store, "node-b", 10)
    assert {delivery.id for delivery in again} == {delivery.id for delivery in claimed}


async def test_group_commit_failure_rolls_back_every_member(tmp_path: Path) -> None:
    store = await SqliteStore.open(f"sqlite:///{tmp_path / 'store.sqlite3'}")
    valid = _delivery()
    orphan = _delivery(client_id="cli_missing")

    async def insert_valid() -> None:
        async with store.transaction() as transaction:
            await transaction.insert_delivery(valid)

    async def insert_orphan() -> None:
        async with store.transaction() as transaction:
            # Checked at COMMIT, so the shared COMMIT of the group fails.
            await transaction._db.execute("PRAGMA defer_foreign_keys = ON")
            await transaction.insert_delivery(orphan)

    try:
        outcomes = await asyncio.gather(
            insert_valid(), insert_orphan(), return_exceptions=True
        )
        after = await _claim(store, "node-a", 10)
    finally:
        await store.close()

    assert isinstance(outcomes[0], StoreError)
    assert isinstance(outcomes[1], StoreError)
    assert after == []


async def test_failed_member_leaves_the_rest_of_its_group(tmp_path: Path) -> None:
    store = await SqliteStore.open(f"sqlite:///{tmp_path / 'store.sqlite3'}")
    kept = _delivery()
    dropped = _delivery()

    async def insert(delivery: NewDelivery, fail: bool) -> None:
        async with store.transaction() as transaction:
            await transaction.insert_delivery(delivery)
            if fail:
                raise LookupError("the body failed after its insert")

    try:
        outcomes = await asyncio.gather(
            insert(dropped, True), insert(kept, False), return_exceptions=True
        )
        after = await _claim(store, "node-a", 10)
    finally:
        await store.close()

    assert isinstance(outcomes[0], LookupError)
    assert outcomes[1] is None
    assert [delivery.id for delivery in after] == [kept.id]


async def test_transaction_exits_only_after_commit(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    store = await SqliteStore.open(f"sqlite:///{path}")
    deliveries = [_delivery() for _ in range(20)]
    seen_after_exit: list[bool] = []

    async def insert(delivery: NewDelivery) -> None:
        async with store.transaction() as transaction:
            await transaction.insert_delivery(delivery)
        other = sqlite3.connect(path)
        try:
            found = other.execute(
                "SELECT COUNT(*) FROM deliveries WHERE id = ?", (delivery.id,)
            ).fetchone()[0]
        finally:
            other.close()
        seen_after_exit.append(found == 1)

    try:
        await asyncio.gather(*(insert(delivery) for delivery in deliveries))
    finally:
        await store.close()

    assert seen_after_exit == [True] * 20


async def test_cancelled_transaction_leaves_store_usable(tmp_path) -> None:
    """A caller cancelled while its transaction starts does not wedge the writer."""
    store = await open_store(f"sqlite:///{tmp_path / 'cancel.sqlite3'}")
    try:
        for delay_s in (0, 0.0001, 0.001):
            async def write_forever() -> None:
                while True:
                    async with store.transaction() as transaction:
                        await transaction.add_timeline_entries([])

            task = asyncio.create_task(write_forever())
            await asyncio.sleep(delay_s)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        async with store.transaction() as transaction:
            await transaction.mark_fetched(["req_none"], utc_now())
        assert await store.next_due_at() is None
    finally:
        await store.close()
