"""The store for several nodes: PostgreSQL through an asyncpg connection pool.

PostgreSQL is the queue and the lock. Claims lock due rows with
``FOR UPDATE SKIP LOCKED`` so two processes never lease one delivery, and a
commit that makes work due sends ``NOTIFY`` so every process wakes at once.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import asyncpg

from store import postgres_retention, rows
from store.base import MigrationError, StoreError, UniqueViolation
from store.records import (
    AttemptOutcome,
    AttemptRecord,
    Audience,
    CallbackOrigin,
    ClientRecord,
    ComputationRecord,
    DeliveryFilter,
    DeliveryPage,
    DeliveryRecord,
    DeliveryStatus,
    ErasureRecord,
    IdempotencyRecord,
    NewDelivery,
    ReceiverHealth,
    RequestStatus,
    SchemaVersion,
    ScoreRecord,
    ScoreRequestRecord,
    TimelineEntry,
)

log = logging.getLogger("store.postgres")

NEW_WORK_CHANNEL = "webhooks_new_work"
# Any constant shared by every process of this service; pg_advisory_lock
# takes a 64-bit key.
_MIGRATION_LOCK_KEY = 0x5C0E_3EB0_0C5F_0001
_CLAIM_LOOKAHEAD = 4
_LISTEN_RETRY_S = 2.0
# A claim and an outcome batch can run at once.
_DISPATCH_POOL_SIZE = 2
_DELIVERY_COPY_COLUMNS = [
    "id",
    "message_id",
    "client_id",
    "correlation_id",
    "event_type",
    "url",
    "host",
    "payload",
    "status",
    "next_attempt_at",
    "created_at",
    "updated_at",
]

_SCORE_REQUEST_SELECT = """
    SELECT r.*, s.id AS score_id, s.client_id AS score_client_id,
           s.customer_id AS score_customer_id,
           s.computation_id AS score_computation_id, s.value AS score_value,
           s.computed_at AS score_computed_at, s.valid_until AS score_valid_until
    FROM score_requests AS r LEFT JOIN scores AS s ON s.id = r.score_id
"""


def _migrations() -> list[tuple[int, str, str]]:
    folder = resources.files("store").joinpath("migrations", "postgresql")
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.name, entry.read_text()))
    return sorted(found)


class _Reads:
    _db: asyncpg.Connection | asyncpg.Pool

    async def get_score_request(
        self, correlation_id: str, client_id: str | None = None
    ) -> ScoreRequestRecord | None:
        if client_id is None:
            row = await self._db.fetchrow(
                _SCORE_REQUEST_SELECT + " WHERE r.correlation_id = $1", correlation_id
            )
        else:
            row = await self._db.fetchrow(
                _SCORE_REQUEST_SELECT + " WHERE r.correlation_id = $1 AND r.client_id = $2",
                correlation_id,
                client_id,
            )
        return None if row is None else rows.score_request(row)

    async def find_valid_score(
        self, client_id: str, customer_id: str, now: datetime
    ) -> ScoreRecord | None:
        row = await self._db.fetchrow(
            """SELECT * FROM scores
               WHERE client_id = $1 AND customer_id = $2 AND valid_until > $3
               ORDER BY computed_at DESC LIMIT 1""",
            client_id,
            customer_id,
            now,
        )
        return None if row is None else rows.score(row)


class _PostgresTransaction(_Reads):
    def __init__(self, connection: asyncpg.Connection) -> None:
        self._db = connection
        self.new_work = False

    async def get_idempotency_key(
        self, client_id: str, key: str, not_before: datetime
    ) -> IdempotencyRecord | None:
        await self._db.execute(
            """DELETE FROM idempotency_keys
               WHERE client_id = $1 AND key = $2 AND created_at < $3""",
            client_id,
            key,
            not_before,
        )
        row = await self._db.fetchrow(
            "SELECT * FROM idempotency_keys WHERE client_id = $1 AND key = $2",
            client_id,
            key,
        )
        if row is None:
            return None
        return IdempotencyRecord(
            client_id=row["client_id"],
            key=row["key"],
            request_fingerprint=row["request_fingerprint"],
            correlation_id=row["correlation_id"],
            status_code=row["status_code"],
            created_at=row["created_at"],
        )

    async def insert_idempotency_key(self, record: IdempotencyRecord) -> None:
        try:
            await self._db.execute(
                """INSERT INTO idempotency_keys
                   (client_id, key, request_fingerprint, correlation_id, status_code,
                    created_at)
                   VALUES ($1, $2, $3, $4, $5, $6)""",
                record.client_id,
                record.key,
                record.request_fingerprint,
                record.correlation_id,
                record.status_code,
                record.created_at,
            )
        except asyncpg.UniqueViolationError as exc:
            raise UniqueViolation(str(exc)) from exc

    async def find_pending_computation(
        self, client_id: str, customer_id: str
    ) -> ComputationRecord | None:
        # The share lock makes a result that completes this computation wait
        # until a request joining it has committed, so the result sees it.
        row = await self._db.fetchrow(
            """SELECT * FROM computations
               WHERE client_id = $1 AND customer_id = $2 AND status = 'pending'
               FOR SHARE""",
            client_id,
            customer_id,
        )
        return None if row is None else rows.computation(row)

    async def insert_computation(self, computation: ComputationRecord) -> None:
        try:
            await self._db.execute(
                """INSERT INTO computations
                   (id, client_id, customer_id, status, created_at)
                   VALUES ($1, $2, $3, $4, $5)""",
                computation.id,
                computation.client_id,
                computation.customer_id,
                computation.status.value,
                computation.created_at,
            )
        except asyncpg.UniqueViolationError as exc:
            raise UniqueViolation(str(exc)) from exc

    async def get_computation(self, computation_id: str) -> ComputationRecord | None:
        # Locked, so concurrent results for one computation run one at a time.
        row = await self._db.fetchrow(
            "SELECT * FROM computations WHERE id = $1 FOR UPDATE", computation_id
        )
        return None if row is None else rows.computation(row)

    async def complete_computation(self, computation: ComputationRecord) -> None:
        await self._db.execute(
            """UPDATE computations
               SET status = $1, completed_at = $2, result_fingerprint = $3,
                   failure_reason = $4
               WHERE id = $5""",
            computation.status.value,
            computation.completed_at,
            computation.result_fingerprint,
            computation.failure_reason,
            computation.id,
        )

    async def insert_score(self, score: ScoreRecord) -> None:
        await self._db.execute(
            """INSERT INTO scores
               (id, client_id, customer_id, computation_id, value, computed_at,
                valid_until)
               VALUES ($1, $2, $3, $4, $5, $6, $7)""",
            score.id,
            score.client_id,
            score.customer_id,
            score.computation_id,
            score.value,
            score.computed_at,
            score.valid_until,
        )

    async def insert_score_request(self, request: ScoreRequestRecord) -> None:
        await self._db.execute(
            """INSERT INTO score_requests
               (correlation_id, client_id, customer_id, callback_url, metadata,
                status, created_at, completed_at, computation_id, score_id,
                failure_reason)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)""",
            request.correlation_id,
            request.client_id,
            request.customer_id,
            request.callback_url,
            request.metadata,
            request.status.value,
            request.created_at,
            request.completed_at,
            request.computation_id,
            request.score.id if request.score else None,
            request.failure_reason,
        )

    async def complete_pending_requests(
        self,
        computation_id: str,
        status: RequestStatus,
        completed_at: datetime,
        score_id: str | None,
        failure_reason: str | None,
    ) -> list[ScoreRequestRecord]:
        found = await self._db.fetch(
            """UPDATE score_requests
               SET status = $1, completed_at = $2, score_id = $3, failure_reason = $4
               WHERE computation_id = $5 AND status = 'pending'
               RETURNING correlation_id""",
            status.value,
            completed_at,
            score_id,
            failure_reason,
            computation_id,
        )
        completed = []
        for row in found:
            request = await self.get_score_request(row["correlation_id"])
            assert request is not None
            completed.append(request)
        return sorted(completed, key=lambda request: request.correlation_id)

    async def insert_delivery(self, delivery: NewDelivery) -> None:
        now = datetime.now(UTC)
        await self._db.execute(
            """INSERT INTO deliveries
               (id, message_id, client_id, correlation_id, event_type, url, host,
                payload, status, next_attempt_at, created_at, updated_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9, $10, $10)""",
            delivery.id,
            delivery.message_id,
            delivery.client_id,
            delivery.correlation_id,
            delivery.event_type,
            delivery.url,
            delivery.host,
            delivery.payload,
            delivery.next_attempt_at,
            now,
        )
        self.new_work = True

    async def insert_deliveries(self, deliveries: Sequence[NewDelivery]) -> None:
        # COPY moves the rows in one round trip, several times faster than
        # an INSERT per row; it runs inside the open transaction.
        now = datetime.now(UTC)
        await self._db.copy_records_to_table(
            "deliveries",
            columns=_DELIVERY_COPY_COLUMNS,
            records=[
                (
                    delivery.id,
                    delivery.message_id,
                    delivery.client_id,
                    delivery.correlation_id,
                    delivery.event_type,
                    delivery.url,
                    delivery.host,
                    delivery.payload,
                    "pending",
                    delivery.next_attempt_at,
                    now,
                    now,
                )
                for delivery in deliveries
            ],
        )
        self.new_work = self.new_work or bool(deliveries)

    async def cancel_pending_deliveries(
        self, correlation_ids: Sequence[str], event_type: str, now: datetime
    ) -> int:
        if not correlation_ids:
            return 0
        status = await self._db.execute(
            """UPDATE deliveries
               SET status = 'cancelled', updated_at = $1, lease_owner = NULL,
                   lease_expires_at = NULL
               WHERE status = 'pending' AND event_type = $2
                 AND correlation_id = ANY($3::text[])""",
            now,
            event_type,
            list(correlation_ids),
        )
        return int(status.split()[-1])


    async def add_timeline_entries(self, entries: Sequence[TimelineEntry]) -> None:
        await self._db.executemany(
            """INSERT INTO timeline_entries (correlation_id, at, step, audience, detail)
               VALUES ($1, $2, $3, $4, $5)""",
            [_timeline_params(entry) for entry in entries],
        )

    async def mark_fetched(self, correlation_ids: Sequence[str], at: datetime) -> None:
        await self._db.execute(
            """UPDATE score_requests SET fetched_at = $1
               WHERE correlation_id = ANY($2::text[]) AND fetched_at IS NULL
                 AND status != 'pending'""",
            at,
            list(correlation_ids),
        )

    async def requests_with_score(self, client_id: str, score_id: str) -> list[str]:
        found = await self._db.fetch(
            """SELECT correlation_id FROM score_requests
               WHERE client_id = $1 AND score_id = $2 ORDER BY correlation_id""",
            client_id,
            score_id,
        )
        return [row["correlation_id"] for row in found]


def _timeline_params(entry: TimelineEntry) -> tuple[Any, ...]:
    detail = json.dumps(entry.detail, separators=(",", ":")) if entry.detail else None
    return (entry.correlation_id, entry.at, entry.step, entry.audience.value, detail)


def _delivery_conditions(
    filter: DeliveryFilter, params: list[Any]
) -> list[str]:
    """Return the conditions that select ``filter``'s deliveries, adding to ``params``."""
    conditions: list[str] = []

    def condition(template: str, value: Any) -> None:
        params.append(value)
        conditions.append(template.format(f"${len(params)}"))

    if filter.status is not None:
        condition("status = {}", filter.status.value)
    if filter.client_id is not None:
        condition("client_id = {}", filter.client_id)
    if filter.event_type is not None:
        condition("event_type = {}", filter.event_type)
    if filter.host is not None:
        condition("host = {}", filter.host)
    if filter.since is not None:
        condition("created_at >= {}", filter.since)
    if filter.until is not None:
        condition("created_at < {}", filter.until)
    if filter.delivery_ids:
        condition("id = ANY({}::text[])", list(filter.delivery_ids))
    return conditions


async def _record_receiver_outcome(
    connection: asyncpg.Connection,
    outcome: AttemptOutcome,
    release_interval_s: float,
    release_batch: int,
) -> bool:
    """Update a receiver's health; on success mark the request and release held ones.

    Returns whether held deliveries were released.
    """
    at = outcome.attempt.started_at
    if outcome.status is not DeliveryStatus.DELIVERED:
        await connection.execute(
            """INSERT INTO receiver_health
               (client_id, host, failing_since, last_error, last_error_at)
               VALUES ($1, $2, $3, $4, $3)
               ON CONFLICT (client_id, host) DO UPDATE
               SET failing_since = COALESCE(receiver_health.failing_since,
                                            excluded.failing_since),
                   last_error = excluded.last_error,
                   last_error_at = excluded.last_error_at""",
            outcome.client_id,
            outcome.host,
            at,
            outcome.attempt.error or f"HTTP {outcome.attempt.status_code}",
        )
        return False

    await connection.execute(
        """INSERT INTO receiver_health (client_id, host, last_success_at)
           VALUES ($1, $2, $3)
           ON CONFLICT (client_id, host) DO UPDATE
           SET failing_since = NULL, last_success_at = excluded.last_success_at""",
        outcome.client_id,
        outcome.host,
        at,
    )
    if outcome.correlation_id is not None:
        await connection.execute(
            """UPDATE score_requests SET delivered_at = $1
               WHERE correlation_id = $2 AND delivered_at IS NULL""",
            at,
            outcome.correlation_id,
        )
    assert outcome.client_id is not None and outcome.host is not None
    released = await _release_held(
        connection, outcome.client_id, outcome.host, at, release_interval_s, release_batch
    )
    return released > 0


async def _release_held(
    connection: asyncpg.Connection,
    client_id: str,
    host: str,
    now: datetime,
    interval_s: float,
    limit: int,
) -> int:
    """Make held deliveries due again, oldest first, ``interval_s`` apart."""
    held = await connection.fetch(
        """SELECT id FROM deliveries
           WHERE status = 'held' AND client_id = $1 AND host = $2
           ORDER BY created_at, id LIMIT $3
           FOR UPDATE SKIP LOCKED""",
        client_id,
        host,
        limit,
    )
    found = await connection.fetch(
        """UPDATE deliveries
           SET status = 'pending', attempts_in_round = 0, held_until = NULL,
               next_attempt_at = $1::timestamptz
                   + (ordered.position - 1) * make_interval(secs => $2::float8),
               updated_at = $1
           FROM unnest($3::text[]) WITH ORDINALITY AS ordered (id, position)
           WHERE deliveries.id = ordered.id
           RETURNING deliveries.id""",
        now,
        interval_s,
        [row["id"] for row in held],
    )
    return len(found)


_DUE_SQL = """
    SELECT id, host, lease_expires_at, next_attempt_at FROM deliveries
    WHERE status = 'pending' AND next_attempt_at <= $1
      AND (lease_expires_at IS NULL OR lease_expires_at <= $1)
    ORDER BY next_attempt_at LIMIT $2
    FOR UPDATE SKIP LOCKED
"""

# Walks the distinct hosts with pending rows, one index seek each, and takes
# the oldest due rows of each host that is not skipped.
_DUE_BY_HOST_SQL = """
    WITH RECURSIVE hosts(host) AS (
        (SELECT host FROM deliveries WHERE status = 'pending' ORDER BY host LIMIT 1)
        UNION ALL
        SELECT (SELECT d.host FROM deliveries AS d
                WHERE d.status = 'pending' AND d.host > hosts.host
                ORDER BY d.host LIMIT 1)
        FROM hosts WHERE hosts.host IS NOT NULL
    ),
    allowed AS MATERIALIZED (
        SELECT host FROM hosts
        WHERE host IS NOT NULL AND NOT (host = ANY($2::text[]))
    )
    SELECT due.id, due.host, due.lease_expires_at, due.next_attempt_at
    FROM allowed CROSS JOIN LATERAL (
        SELECT id, host, lease_expires_at, next_attempt_at FROM deliveries
        WHERE status = 'pending' AND host = allowed.host AND next_attempt_at <= $1
          AND (lease_expires_at IS NULL OR lease_expires_at <= $1)
        ORDER BY next_attempt_at LIMIT $3
        FOR UPDATE SKIP LOCKED
    ) AS due
    ORDER BY due.next_attempt_at LIMIT $4
"""


async def _due_candidates(
    connection: asyncpg.Connection,
    now: datetime,
    limit: int,
    per_host_limit: int,
    host_limits: Mapping[str, int],
) -> list[asyncpg.Record]:
    """Return due, unleased rows for a claim to choose from, oldest first.

    The oldest due rows usually fill the claim. When they do not because
    their hosts are skipped or at their limit, and more due rows may lie
    behind them, the hosts are walked one by one instead. That keeps a claim
    cheap however many due rows a skipped host has.
    """
    window = limit * _CLAIM_LOOKAHEAD
    found = await connection.fetch(_DUE_SQL, now, window)
    if len(found) < window:
        return found
    if len(rows.choose_per_host(found, limit, per_host_limit, host_limits)) == limit:
        return found
    skipped = [host for host, remaining in host_limits.items() if remaining <= 0]
    per_host = min(limit, max([per_host_limit, *host_limits.values()]))
    return await connection.fetch(_DUE_BY_HOST_SQL, now, skipped, per_host, window)


def _encode_cursor(created_at: datetime, delivery_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), delivery_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, delivery_id = json.loads(raw)
        return datetime.fromisoformat(created_at), str(delivery_id)
    except (ValueError, TypeError) as exc:
        raise ValueError("invalid cursor") from exc


class PostgresStore(_Reads):
    kind = "postgresql"

    def __init__(
        self, pool: asyncpg.Pool, dsn: str, dispatch_pool: asyncpg.Pool | None = None
    ) -> None:
        self._db = pool
        self._pool = pool
        # Claims and outcome batches get connections of their own, so that
        # API requests holding every connection of the main pool cannot make
        # the dispatcher wait behind them.
        self._dispatch_pool = dispatch_pool or pool
        self._dsn = dsn
        self._listeners: list[Callable[[], None]] = []
        self._listen_task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, url: str, *, pool_size: int = 10) -> PostgresStore:
        """Connect, apply pending migrations once across processes, and listen."""
        try:
            pool = await asyncpg.create_pool(url, min_size=1, max_size=pool_size)
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {exc}") from exc
        try:
            async with pool.acquire() as connection:
                await _migrate(connection)
            dispatch_pool = await asyncpg.create_pool(
                url, min_size=1, max_size=_DISPATCH_POOL_SIZE
            )
        except BaseException:
            await pool.close()
            raise
        return cls(pool, url, dispatch_pool)

    async def close(self) -> None:
        if self._listen_task is not None:
            self._listen_task.cancel()
            await asyncio.gather(self._listen_task, return_exceptions=True)
        if self._dispatch_pool is not self._pool:
            await self._dispatch_pool.close()
        await self._pool.close()

    def add_new_work_listener(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)
        if self._listen_task is None:
            self._listen_task = asyncio.create_task(self._listen())

    def _notify_new_work(self) -> None:
        for listener in self._listeners:
            listener()

    async def _listen(self) -> None:
        """Hold a connection that LISTENs for new work from every process.

        Polling by the dispatcher covers the gaps while it reconnects.
        """
        while True:
            connection: asyncpg.Connection | None = None
            try:
                connection = await asyncpg.connect(self._dsn)
                lost = asyncio.Event()
                connection.add_termination_listener(lambda _: lost.set())
                await connection.add_listener(
                    NEW_WORK_CHANNEL, lambda *_: self._notify_new_work()
                )
                # Work committed while no one listened is found by this wake.
                self._notify_new_work()
                await lost.wait()
            except asyncio.CancelledError:
                raise
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning(
                    "listening for new work failed (%s); retrying in %.0f s",
                    exc,
                    _LISTEN_RETRY_S,
                    extra={"event": "listen_failed"},
                )
            finally:
                if connection is not None and not connection.is_closed():
                    await connection.close()
            await asyncio.sleep(_LISTEN_RETRY_S)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_PostgresTransaction]:
        async with self._pool.acquire() as connection:
            transaction = _PostgresTransaction(connection)
            async with connection.transaction():
                yield transaction
                if transaction.new_work:
                    await connection.execute("SELECT pg_notify($1, '')", NEW_WORK_CHANNEL)
        if transaction.new_work:
            self._notify_new_work()

    # Clients

    async def insert_client(self, client: ClientRecord) -> None:
        await self._pool.execute(
            """INSERT INTO clients (id, name, api_key_hash, signing_secrets, created_at)
               VALUES ($1, $2, $3, $4, $5)""",
            client.id,
            client.name,
            client.api_key_hash,
            client.signing_secrets,
            client.created_at,
        )

    async def get_client(self, client_id: str) -> ClientRecord | None:
        row = await self._pool.fetchrow("SELECT * FROM clients WHERE id = $1", client_id)
        return None if row is None else rows.client(row)

    async def find_client_by_key_hash(self, api_key_hash: str) -> ClientRecord | None:
        row = await self._pool.fetchrow(
            "SELECT * FROM clients WHERE api_key_hash = $1", api_key_hash
        )
        return None if row is None else rows.client(row)

    async def get_signing_secrets(self, client_ids: Sequence[str]) -> dict[str, bytes]:
        found = await self._pool.fetch(
            "SELECT id, signing_secrets FROM clients WHERE id = ANY($1::text[])",
            list(client_ids),
        )
        return {row["id"]: bytes(row["signing_secrets"]) for row in found}

    async def update_signing_secrets(self, client_id: str, signing_secrets: bytes) -> None:
        await self._pool.execute(
            "UPDATE clients SET signing_secrets = $1 WHERE id = $2",
            signing_secrets,
            client_id,
        )

    async def swap_signing_secrets(
        self, client_id: str, expected: bytes, replacement: bytes
    ) -> bool:
        status = await self._pool.execute(
            """UPDATE clients SET signing_secrets = $1
               WHERE id = $2 AND signing_secrets = $3""",
            replacement,
            client_id,
            expected,
        )
        return status == "UPDATE 1"

    # Service settings

    async def get_setting(self, name: str) -> bytes | None:
        value = await self._pool.fetchval(
            "SELECT value FROM service_settings WHERE name = $1", name
        )
        return None if value is None else bytes(value)

    async def put_setting(self, name: str, value: bytes, *, expected: bytes | None) -> bool:
        if expected is None:
            status = await self._pool.execute(
                """INSERT INTO service_settings (name, value, updated_at)
                   VALUES ($1, $2, now()) ON CONFLICT (name) DO NOTHING""",
                name,
                value,
            )
            return status == "INSERT 0 1"
        status = await self._pool.execute(
            """UPDATE service_settings SET value = $1, updated_at = now()
               WHERE name = $2 AND value = $3""",
            value,
            name,
            expected,
        )
        return status == "UPDATE 1"

    # Reads of requests and scores

    async def latest_valid_score(
        self, client_id: str, customer_id: str, now: datetime
    ) -> ScoreRecord | None:
        return await self.find_valid_score(client_id, customer_id, now)

    async def has_requested_customer(self, client_id: str, customer_id: str) -> bool:
        row = await self._pool.fetchrow(
            """SELECT 1 FROM score_requests
               WHERE client_id = $1 AND customer_id = $2 LIMIT 1""",
            client_id,
            customer_id,
        )
        return row is not None

    # Dispatch

    async def claim_due_deliveries(
        self,
        *,
        owner: str,
        now: datetime,
        lease_until: datetime,
        limit: int,
        per_host_limit: int,
        host_limits: Mapping[str, int],
    ) -> list[DeliveryRecord]:
        if limit <= 0:
            return []
        # SKIP LOCKED passes over rows that another process is claiming right
        # now; the candidates this claim does not take are unlocked at commit.
        pool = self._dispatch_pool
        async with pool.acquire() as connection, connection.transaction():
            candidates = await _due_candidates(
                connection, now, limit, per_host_limit, host_limits
            )
            chosen = rows.choose_per_host(candidates, limit, per_host_limit, host_limits)
            if not chosen:
                return []
            found = await connection.fetch(
                """UPDATE deliveries SET lease_owner = $1, lease_expires_at = $2
                   WHERE id = ANY($3::text[])
                   RETURNING *""",
                owner,
                lease_until,
                chosen,
            )
        # Every lease ends with its outcome or release, so one still set here
        # had expired.
        expired = {row["id"] for row in candidates if row["lease_expires_at"] is not None}
        deliveries = [
            replace(delivery, took_over_expired_lease=delivery.id in expired)
            for delivery in map(rows.delivery, found)
        ]
        return sorted(deliveries, key=lambda delivery: delivery.next_attempt_at)

    async def record_outcomes(
        self,
        owner: str,
        outcomes: Sequence[AttemptOutcome],
        *,
        release_interval_s: float = 0.1,
        release_batch: int = 100,
    ) -> None:
        now = datetime.now(UTC)
        attempts = [
            (
                o.attempt.delivery_id,
                o.attempt.number,
                o.attempt.started_at,
                o.attempt.duration_ms,
                o.attempt.status_code,
                o.attempt.error,
                o.attempt.response_excerpt,
            )
            for o in outcomes
        ]
        updates = [
            (
                o.status.value,
                o.next_attempt_at,
                o.attempt.error,
                o.attempt.status_code,
                now,
                o.attempt.delivery_id,
                owner,
                o.held_until,
            )
            for o in outcomes
        ]
        released = False
        pool = self._dispatch_pool
        async with pool.acquire() as connection, connection.transaction():
            await connection.executemany(
                """INSERT INTO attempts
                   (delivery_id, number, started_at, duration_ms, status_code, error,
                    response_excerpt)
                   VALUES ($1, $2, $3, $4, $5, $6, $7)
                   ON CONFLICT (delivery_id, number) DO NOTHING""",
                attempts,
            )
            await connection.executemany(
                """UPDATE deliveries
                   SET status = $1, next_attempt_at = COALESCE($2, next_attempt_at),
                       attempt_count = attempt_count + 1,
                       attempts_in_round = attempts_in_round + 1,
                       last_error = $3, last_status_code = $4, updated_at = $5,
                       held_until = $8, lease_owner = NULL, lease_expires_at = NULL
                   WHERE id = $6 AND lease_owner = $7 AND status = 'pending'""",
                updates,
            )
            entries = [o.timeline for o in outcomes if o.timeline is not None]
            if entries:
                await connection.executemany(
                    """INSERT INTO timeline_entries
                       (correlation_id, at, step, audience, detail)
                       VALUES ($1, $2, $3, $4, $5)""",
                    [_timeline_params(entry) for entry in entries],
                )
            for outcome in outcomes:
                if outcome.client_id is not None and outcome.host is not None:
                    released |= await _record_receiver_outcome(
                        connection, outcome, release_interval_s, release_batch
                    )
            if released:
                await connection.execute("SELECT pg_notify($1, '')", NEW_WORK_CHANNEL)
        if released:
            self._notify_new_work()

    async def postpone_delivery(
        self, delivery_id: str, owner: str, next_attempt_at: datetime, reason: str
    ) -> None:
        await self._pool.execute(
            """UPDATE deliveries
               SET next_attempt_at = $1, last_error = $2, updated_at = $3,
                   lease_owner = NULL, lease_expires_at = NULL
               WHERE id = $4 AND lease_owner = $5""",
            next_attempt_at,
            reason,
            datetime.now(UTC),
            delivery_id,
            owner,
        )

    async def release_leases(self, owner: str) -> int:
        status = await self._pool.execute(
            """UPDATE deliveries SET lease_owner = NULL, lease_expires_at = NULL
               WHERE lease_owner = $1""",
            owner,
        )
        return int(status.split()[-1])

    async def release_all_leases(self) -> int:
        status = await self._pool.execute(
            """UPDATE deliveries SET lease_owner = NULL, lease_expires_at = NULL
               WHERE lease_owner IS NOT NULL"""
        )
        return int(status.split()[-1])

    async def next_due_at(self) -> datetime | None:
        return await self._pool.fetchval(
            "SELECT MIN(next_attempt_at) FROM deliveries WHERE status = 'pending'"
        )

    # Monitoring

    async def count_deliveries_by_state(self, now: datetime) -> dict[str, int]:
        found = await self._pool.fetch(
            """SELECT status, COALESCE(lease_expires_at > $1, false) AS leased,
                      COUNT(*) AS count
               FROM deliveries WHERE status IN ('pending', 'failed', 'held')
               GROUP BY 1, 2""",
            now,
        )
        return rows.delivery_counts(found)

    async def schema_version(self) -> SchemaVersion:
        applied = await self._pool.fetchval("SELECT MAX(version) FROM schema_migrations")
        return SchemaVersion(applied=applied or 0, latest=_migrations()[-1][0])

    # Operators

    async def list_deliveries(
        self, filter: DeliveryFilter, limit: int, cursor: str | None
    ) -> DeliveryPage:
        params: list[Any] = []
        conditions = _delivery_conditions(filter, params)
        if cursor is not None:
            created_at, delivery_id = _decode_cursor(cursor)
            params.extend([created_at, delivery_id])
            conditions.append(f"(created_at, id) < (${len(params) - 1}, ${len(params)})")
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        params.append(limit + 1)
        found = await self._pool.fetch(
            f"""SELECT * FROM deliveries {where}
                ORDER BY created_at DESC, id DESC LIMIT ${len(params)}""",
            *params,
        )
        deliveries = [rows.delivery(row) for row in found[:limit]]
        next_cursor = None
        if len(found) > limit:
            last = found[limit - 1]
            next_cursor = _encode_cursor(last["created_at"], last["id"])
        return DeliveryPage(deliveries=deliveries, next_cursor=next_cursor)

    async def get_delivery(self, delivery_id: str) -> DeliveryRecord | None:
        row = await self._pool.fetchrow("SELECT * FROM deliveries WHERE id = $1", delivery_id)
        return None if row is None else rows.delivery(row)

    async def list_attempts(self, delivery_id: str) -> list[AttemptRecord]:
        found = await self._pool.fetch(
            "SELECT * FROM attempts WHERE delivery_id = $1 ORDER BY number", delivery_id
        )
        return [rows.attempt(row) for row in found]

    async def replay_deliveries(
        self,
        delivery_ids: Sequence[str],
        now: datetime,
        statuses: Sequence[DeliveryStatus] = (
            DeliveryStatus.FAILED,
            DeliveryStatus.DELIVERED,
            DeliveryStatus.HELD,
        ),
    ) -> list[str]:
        if not delivery_ids or not statuses:
            return []
        async with self.transaction() as transaction:
            found = await transaction._db.fetch(
                """UPDATE deliveries
                   SET status = 'pending', attempts_in_round = 0, held_until = NULL,
                       next_attempt_at = $1, updated_at = $1,
                       lease_owner = NULL, lease_expires_at = NULL
                   WHERE id = ANY($2::text[]) AND status = ANY($3::text[])
                   RETURNING id""",
                now,
                list(delivery_ids),
                [status.value for status in statuses],
            )
            if found:
                transaction.new_work = True
        return [row["id"] for row in found]

    async def count_deliveries(self, filter: DeliveryFilter) -> int:
        params: list[Any] = []
        conditions = _delivery_conditions(filter, params)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        return await self._pool.fetchval(f"SELECT COUNT(*) FROM deliveries {where}", *params)

    # Held deliveries and receiver health

    async def hold_delivery(
        self, delivery_id: str, owner: str, held_until: datetime, reason: str
    ) -> None:
        await self._pool.execute(
            """UPDATE deliveries
               SET status = 'held', held_until = $1, last_error = $2, updated_at = $3,
                   lease_owner = NULL, lease_expires_at = NULL
               WHERE id = $4 AND lease_owner = $5 AND status = 'pending'""",
            held_until,
            reason,
            datetime.now(UTC),
            delivery_id,
            owner,
        )

    async def release_held_deliveries(
        self, client_id: str, host: str, now: datetime, interval_s: float, limit: int
    ) -> int:
        async with self.transaction() as transaction:
            released = await _release_held(
                transaction._db, client_id, host, now, interval_s, limit
            )
            transaction.new_work = released > 0
        return released

    async def fail_expired_held(self, now: datetime, limit: int) -> int:
        status = await self._pool.execute(
            """UPDATE deliveries
               SET status = 'failed', updated_at = $1, held_until = NULL
               WHERE id IN (
                   SELECT id FROM deliveries
                   WHERE status = 'held' AND held_until <= $1 LIMIT $2
                   FOR UPDATE SKIP LOCKED)""",
            now,
            limit,
        )
        return int(status.split()[-1])

    async def get_receiver_health(self, client_id: str, host: str) -> ReceiverHealth | None:
        row = await self._pool.fetchrow(
            "SELECT * FROM receiver_health WHERE client_id = $1 AND host = $2",
            client_id,
            host,
        )
        return None if row is None else rows.receiver_health(row)

    async def list_receiver_health(self, client_id: str) -> list[ReceiverHealth]:
        found = await self._pool.fetch(
            "SELECT * FROM receiver_health WHERE client_id = $1 ORDER BY host", client_id
        )
        return [rows.receiver_health(row) for row in found]

    # Timelines and fetch tracking

    async def list_timeline(
        self, correlation_id: str, audience: Audience | None
    ) -> list[TimelineEntry]:
        if audience is None:
            found = await self._pool.fetch(
                "SELECT * FROM timeline_entries WHERE correlation_id = $1 ORDER BY at, id",
                correlation_id,
            )
        else:
            found = await self._pool.fetch(
                """SELECT * FROM timeline_entries
                   WHERE correlation_id = $1 AND audience = $2 ORDER BY at, id""",
                correlation_id,
                audience.value,
            )
        return [rows.timeline_entry(row) for row in found]

    async def list_unfetched_requests(
        self, delivered_before: datetime, limit: int, cursor: str | None
    ) -> tuple[list[ScoreRequestRecord], str | None]:
        sql = (
            _SCORE_REQUEST_SELECT
            + " WHERE r.fetched_at IS NULL AND r.delivered_at IS NOT NULL"
            " AND r.delivered_at < $1"
        )
        params: list[Any] = [delivered_before]
        if cursor is not None:
            delivered_at, correlation_id = _decode_cursor(cursor)
            sql += " AND (r.delivered_at, r.correlation_id) > ($2, $3)"
            params.extend([delivered_at, correlation_id])
        params.append(limit + 1)
        found = await self._pool.fetch(
            sql + f" ORDER BY r.delivered_at, r.correlation_id LIMIT ${len(params)}",
            *params,
        )
        requests = [rows.score_request(row) for row in found[:limit]]
        next_cursor = None
        if len(found) > limit:
            last = found[limit - 1]
            next_cursor = _encode_cursor(last["delivered_at"], last["correlation_id"])
        return requests, next_cursor

    async def count_unfetched_requests(self, delivered_before: datetime) -> int:
        return await self._pool.fetchval(
            """SELECT COUNT(*) FROM score_requests
               WHERE fetched_at IS NULL AND delivered_at IS NOT NULL
                 AND delivered_at < $1""",
            delivered_before,
        )

    # Callback handshakes

    async def get_callback_origin(self, client_id: str, origin: str) -> CallbackOrigin | None:
        row = await self._pool.fetchrow(
            "SELECT * FROM callback_origins WHERE client_id = $1 AND origin = $2",
            client_id,
            origin,
        )
        return None if row is None else rows.callback_origin(row)

    async def save_callback_origin(self, record: CallbackOrigin) -> None:
        await self._pool.execute(
            """INSERT INTO callback_origins (client_id, origin, allowed, reason, checked_at)
               VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (client_id, origin) DO UPDATE
               SET allowed = excluded.allowed, reason = excluded.reason,
                   checked_at = excluded.checked_at""",
            record.client_id,
            record.origin,
            record.allowed,
            record.reason,
            record.checked_at,
        )

    # Retention and erasure

    async def delete_expired(
        self,
        *,
        scores_before: datetime,
        requests_before: datetime,
        idempotency_before: datetime,
        limit: int,
    ) -> dict[str, int]:
        async with self._pool.acquire() as connection, connection.transaction():
            return await postgres_retention.delete_expired(
                connection,
                scores_before=scores_before,
                requests_before=requests_before,
                idempotency_before=idempotency_before,
                limit=limit,
            )

    async def erase_customer(
        self, client_id: str, customer_id: str, erasure: ErasureRecord
    ) -> dict[str, int]:
        async with self._pool.acquire() as connection, connection.transaction():
            return await postgres_retention.erase_customer(
                connection, client_id, customer_id, erasure
            )

    async def list_erasures(self, client_id: str) -> list[ErasureRecord]:
        found = await self._pool.fetch(
            "SELECT * FROM erasures WHERE client_id = $1 ORDER BY erased_at, id",
            client_id,
        )
        return [rows.erasure(row) for row in found]


async def _migrate(connection: asyncpg.Connection) -> None:
    """Apply pending migrations; an advisory lock makes concurrent starts wait."""
    await connection.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK_KEY)
    try:
        await connection.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version INTEGER PRIMARY KEY, name TEXT NOT NULL,
                   applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"""
        )
        current = await connection.fetchval("SELECT MAX(version) FROM schema_migrations") or 0
        known = _migrations()
        if known and current > known[-1][0]:
            raise MigrationError(
                f"the database schema is at version {current}, newer than this code "
                f"knows ({known[-1][0]}); upgrade the service"
            )
        for version, name, script in known:
            if version <= current:
                continue
            log.info("applying migration %s", name, extra={"event": "migration_applied"})
            try:
                async with connection.transaction():
                    await connection.execute(script)
                    await connection.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                        version,
                        name,
                    )
            except asyncpg.PostgresError as exc:
                raise MigrationError(f"migration {name} failed: {exc}") from exc
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK_KEY)
