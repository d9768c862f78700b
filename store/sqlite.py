"""The embedded store: one SQLite file in WAL mode, through aiosqlite.

A single dispatcher process uses one file. Writes go through one connection
under a lock, reads through a second one that sees the last commit.
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import json
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite

from store import rows, sqlite_retention
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

log = logging.getLogger("store.sqlite")

# How many due rows a claim looks at per row it may lease, so that rows of
# hosts at their limit do not crowd out the rest.
_CLAIM_LOOKAHEAD = 4


def _to_db(moment: datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()


def path_from_url(url: str) -> Path:
    """Return the file of ``sqlite:///relative/path`` or ``sqlite:////absolute/path``."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ValueError(f"expected sqlite:///PATH, got {url!r}")
    return Path(url[len(prefix) :])


def _migrations() -> list[tuple[int, str, str]]:
    folder = resources.files("store").joinpath("migrations", "sqlite")
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text()))
    return sorted(found)


_SCORE_REQUEST_SELECT = """
    SELECT r.*, s.id AS score_id, s.client_id AS score_client_id,
           s.customer_id AS score_customer_id,
           s.computation_id AS score_computation_id, s.value AS score_value,
           s.computed_at AS score_computed_at, s.valid_until AS score_valid_until
    FROM score_requests AS r LEFT JOIN scores AS s ON s.id = r.score_id
"""


class _Reads:
    """Queries that both a transaction and the read connection run."""

    _db: aiosqlite.Connection

    # Each query runs to completion in one call on the connection's thread. A
    # statement left open between two awaits would keep a read snapshot
    # that other queries on the connection share, so they would miss
    # commits made meanwhile.

    async def _one(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> Any:
        found = await self._db.execute_fetchall(sql, params)
        return next(iter(found), None)

    async def _all(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[Any]:
        return list(await self._db.execute_fetchall(sql, params))

    async def get_score_request(
        self, correlation_id: str, client_id: str | None = None
    ) -> ScoreRequestRecord | None:
        sql = _SCORE_REQUEST_SELECT + " WHERE r.correlation_id = ?"
        params: list[Any] = [correlation_id]
        if client_id is not None:
            sql += " AND r.client_id = ?"
            params.append(client_id)
        row = await self._one(sql, params)
        return None if row is None else rows.score_request(row)

    async def find_valid_score(
        self, client_id: str, customer_id: str, now: datetime
    ) -> ScoreRecord | None:
        row = await self._one(
            """SELECT * FROM scores
               WHERE client_id = ? AND customer_id = ? AND valid_until > ?
               ORDER BY computed_at DESC LIMIT 1""",
            (client_id, customer_id, _to_db(now)),
        )
        return None if row is None else rows.score(row)


class _SqliteTransaction(_Reads):
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self.new_work = False

    async def get_idempotency_key(
        self, client_id: str, key: str, not_before: datetime
    ) -> IdempotencyRecord | None:
        # An expired key gives way, so the client may use its name again.
        await self._db.execute(
            """DELETE FROM idempotency_keys
               WHERE client_id = ? AND key = ? AND created_at < ?""",
            (client_id, key, _to_db(not_before)),
        )
        row = await self._one(
            "SELECT * FROM idempotency_keys WHERE client_id = ? AND key = ?",
            (client_id, key),
        )
        if row is None:
            return None
        return IdempotencyRecord(
            client_id=row["client_id"],
            key=row["key"],
            request_fingerprint=row["request_fingerprint"],
            correlation_id=row["correlation_id"],
            status_code=row["status_code"],
            created_at=rows.time(row["created_at"]),
        )

    async def insert_idempotency_key(self, record: IdempotencyRecord) -> None:
        await self._db.execute(
            """INSERT INTO idempotency_keys
               (client_id, key, request_fingerprint, correlation_id, status_code,
                created_at)
               VALUES (?, ?, ?, ?, ?, ?)""",
            (
                record.client_id,
                record.key,
                record.request_fingerprint,
                record.correlation_id,
                record.status_code,
                _to_db(record.created_at),
            ),
        )

    async def find_pending_computation(
        self, client_id: str, customer_id: str
    ) -> ComputationRecord | None:
        row = await self._one(
            """SELECT * FROM computations
               WHERE client_id = ? AND customer_id = ? AND status = 'pending'""",
            (client_id, customer_id),
        )
        return None if row is None else rows.computation(row)

    async def insert_computation(self, computation: ComputationRecord) -> None:
        try:
            await self._db.execute(
                """INSERT INTO computations
                   (id, client_id, customer_id, status, created_at)
                   VALUES (?, ?, ?, ?, ?)""",
                (
                    computation.id,
                    computation.client_id,
                    computation.customer_id,
                    computation.status.value,
                    _to_db(computation.created_at),
                ),
            )
        except sqlite3.IntegrityError as exc:
            raise UniqueViolation(str(exc)) from exc

    async def get_computation(self, computation_id: str) -> ComputationRecord | None:
        row = await self._one("SELECT * FROM computations WHERE id = ?", (computation_id,))
        return None if row is None else rows.computation(row)

    async def complete_computation(self, computation: ComputationRecord) -> None:
        await self._db.execute(
            """UPDATE computations
               SET status = ?, completed_at = ?, result_fingerprint = ?,
                   failure_reason = ?
               WHERE id = ?""",
            (
                computation.status.value,
                _to_db(computation.completed_at),
                computation.result_fingerprint,
                computation.failure_reason,
                computation.id,
            ),
        )

    async def insert_score(self, score: ScoreRecord) -> None:
        await self._db.execute(
            """INSERT INTO scores
               (id, client_id, customer_id, computation_id, value, computed_at,
                valid_until)
               VALUES (?, ?, ?, ?, ?, ?, ?)""",
            (
                score.id,
                score.client_id,
                score.customer_id,
                score.computation_id,
                score.value,
                _to_db(score.computed_at),
                _to_db(score.valid_until),
            ),
        )

    async def insert_score_request(self, request: ScoreRequestRecord) -> None:
        await self._db.execute(
            """INSERT INTO score_requests
               (correlation_id, client_id, customer_id, callback_url, metadata,
                status, created_at, completed_at, computation_id, score_id,
                failure_reason)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                request.correlation_id,
                request.client_id,
                request.customer_id,
                request.callback_url,
                request.metadata,
                request.status.value,
                _to_db(request.created_at),
                _to_db(request.completed_at),
                request.computation_id,
                request.score.id if request.score else None,
                request.failure_reason,
            ),
        )

    async def complete_pending_requests(
        self,
        computation_id: str,
        status: RequestStatus,
        completed_at: datetime,
        score_id: str | None,
        failure_reason: str | None,
    ) -> list[ScoreRequestRecord]:
        found = await self._all(
            """UPDATE score_requests
               SET status = ?, completed_at = ?, score_id = ?, failure_reason = ?
               WHERE computation_id = ? AND status = 'pending'
               RETURNING correlation_id""",
            (status.value, _to_db(completed_at), score_id, failure_reason, computation_id),
        )
        completed = []
        for row in found:
            request = await self.get_score_request(row["correlation_id"])
            assert request is not None
            completed.append(request)
        return sorted(completed, key=lambda request: request.correlation_id)

    async def insert_delivery(self, delivery: NewDelivery) -> None:
        now = _to_db(datetime.now(UTC))
        await self._db.execute(
            """INSERT INTO deliveries
               (id, message_id, client_id, correlation_id, event_type, url, host,
                payload, status, next_attempt_at, created_at, updated_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)""",
            (
                delivery.id,
                delivery.message_id,
                delivery.client_id,
                delivery.correlation_id,
                delivery.event_type,
                delivery.url,
                delivery.host,
                delivery.payload,
                _to_db(delivery.next_attempt_at),
                now,
                now,
            ),
        )
        self.new_work = True

    async def insert_deliveries(self, deliveries: Sequence[NewDelivery]) -> None:
        now = _to_db(datetime.now(UTC))
        await self._db.executemany(
            """INSERT INTO deliveries
               (id, message_id, client_id, correlation_id, event_type, url, host,
                payload, status, next_attempt_at, created_at, updated_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)""",
            [
                (
                    delivery.id,
                    delivery.message_id,
                    delivery.client_id,
                    delivery.correlation_id,
                    delivery.event_type,
                    delivery.url,
                    delivery.host,
                    delivery.payload,
                    _to_db(delivery.next_attempt_at),
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
        marks = ",".join("?" * len(correlation_ids))
        cursor = await self._db.execute(
            f"""UPDATE deliveries
                SET status = 'cancelled', updated_at = ?, lease_owner = NULL,
                    lease_expires_at = NULL
                WHERE status = 'pending' AND event_type = ?
                  AND correlation_id IN ({marks})""",
            (_to_db(now), event_type, *correlation_ids),
        )
        return cursor.rowcount


    async def add_timeline_entries(self, entries: Sequence[TimelineEntry]) -> None:
        await self._db.executemany(
            """INSERT INTO timeline_entries (correlation_id, at, step, audience, detail)
               VALUES (?, ?, ?, ?, ?)""",
            [_timeline_params(entry) for entry in entries],
        )

    async def mark_fetched(self, correlation_ids: Sequence[str], at: datetime) -> None:
        marks = ",".join("?" * len(correlation_ids))
        await self._db.execute(
            f"""UPDATE score_requests SET fetched_at = ?
                WHERE correlation_id IN ({marks}) AND fetched_at IS NULL
                  AND status != 'pending'""",
            (_to_db(at), *correlation_ids),
        )

    async def requests_with_score(self, client_id: str, score_id: str) -> list[str]:
        found = await self._all(
            """SELECT correlation_id FROM score_requests
               WHERE client_id = ? AND score_id = ? ORDER BY correlation_id""",
            (client_id, score_id),
        )
        return [row["correlation_id"] for row in found]


def _delivery_conditions(filter: DeliveryFilter) -> tuple[str, list[Any]]:
    """Return the WHERE clause and its parameters that select ``filter``'s deliveries."""
    conditions: list[str] = []
    params: list[Any] = []
    if filter.status is not None:
        conditions.append("status = ?")
        params.append(filter.status.value)
    if filter.client_id is not None:
        conditions.append("client_id = ?")
        params.append(filter.client_id)
    if filter.event_type is not None:
        conditions.append("event_type = ?")
        params.append(filter.event_type)
    if filter.host is not None:
        conditions.append("host = ?")
        params.append(filter.host)
    if filter.since is not None:
        conditions.append("created_at >= ?")
        params.append(_to_db(filter.since))
    if filter.until is not None:
        conditions.append("created_at < ?")
        params.append(_to_db(filter.until))
    if filter.delivery_ids:
        conditions.append(f"id IN ({','.join('?' * len(filter.delivery_ids))})")
        params.extend(filter.delivery_ids)
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    return where, params


async def _record_receiver_outcome(
    transaction: _SqliteTransaction,
    outcome: AttemptOutcome,
    release_interval_s: float,
    release_batch: int,
) -> None:
    """Update a receiver's health; on success mark the request and release held ones."""
    db = transaction._db
    at = _to_db(outcome.attempt.started_at)
    if outcome.status is DeliveryStatus.DELIVERED:
        await db.execute(
            """INSERT INTO receiver_health (client_id, host, last_success_at)
               VALUES (?, ?, ?)
               ON CONFLICT (client_id, host) DO UPDATE
               SET failing_since = NULL, last_success_at = excluded.last_success_at""",
            (outcome.client_id, outcome.host, at),
        )
        if outcome.correlation_id is not None:
            await db.execute(
                """UPDATE score_requests SET delivered_at = ?
                   WHERE correlation_id = ? AND delivered_at IS NULL""",
                (at, outcome.correlation_id),
            )
        assert outcome.client_id is not None and outcome.host is not None
        await _release_held(
            transaction, outcome.client_id, outcome.host, at, release_interval_s, release_batch
        )
    else:
        await db.execute(
            """INSERT INTO receiver_health
               (client_id, host, failing_since, last_error, last_error_at)
               VALUES (?, ?, ?, ?, ?)
               ON CONFLICT (client_id, host) DO UPDATE
               SET failing_since = COALESCE(receiver_health.failing_since,
                                            excluded.failing_since),
                   last_error = excluded.last_error,
                   last_error_at = excluded.last_error_at""",
            (
                outcome.client_id,
                outcome.host,
                at,
                outcome.attempt.error or f"HTTP {outcome.attempt.status_code}",
                at,
            ),
        )


async def _release_held(
    transaction: _SqliteTransaction,
    client_id: str,
    host: str,
    now: float,
    interval_s: float,
    limit: int,
) -> int:
    """Make held deliveries due again, oldest first, ``interval_s`` apart."""
    held = await transaction._all(
        """SELECT id FROM deliveries
           WHERE status = 'held' AND client_id = ? AND host = ?
           ORDER BY created_at, id LIMIT ?""",
        (client_id, host, limit),
    )
    if not held:
        return 0
    await transaction._db.executemany(
        """UPDATE deliveries
           SET status = 'pending', attempts_in_round = 0, held_until = NULL,
               next_attempt_at = ?, updated_at = ?
           WHERE id = ?""",
        [(now + position * interval_s, now, row["id"]) for position, row in enumerate(held)],
    )
    transaction.new_work = True
    return len(held)


def _timeline_params(entry: TimelineEntry) -> tuple[Any, ...]:
    detail = json.dumps(entry.detail, separators=(",", ":")) if entry.detail else None
    return (entry.correlation_id, _to_db(entry.at), entry.step, entry.audience.value, detail)


class _CommitGroup:
    """Write transactions that share one SQLite transaction and one COMMIT."""

    def __init__(self) -> None:
        self.committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.committer: asyncio.Task[None] | None = None


async def _roll_back(db: aiosqlite.Connection) -> None:
    try:
        await db.execute("ROLLBACK")
    except sqlite3.Error:
        log.exception("rolling back a failed commit failed", extra={"event": "rollback_failed"})


_DUE_SQL = """
    SELECT id, host, lease_expires_at, next_attempt_at FROM deliveries
    WHERE status = 'pending' AND next_attempt_at <= ?
      AND (lease_expires_at IS NULL OR lease_expires_at <= ?)
    ORDER BY next_attempt_at LIMIT ?
"""

# Walks the distinct hosts with pending rows, one index seek each, and takes
# the oldest due rows of each host that is not skipped.
_DUE_BY_HOST_SQL = """
    WITH RECURSIVE hosts(host) AS (
        SELECT (SELECT host FROM deliveries WHERE status = 'pending'
                ORDER BY host LIMIT 1)
        UNION ALL
        SELECT (SELECT host FROM deliveries
                WHERE status = 'pending' AND host > hosts.host
                ORDER BY host LIMIT 1)
        FROM hosts WHERE hosts.host IS NOT NULL
    ),
    allowed(host) AS MATERIALIZED (
        SELECT host FROM hosts
        WHERE host IS NOT NULL AND host NOT IN (SELECT value FROM json_each(?))
    )
    SELECT due.id, due.host, due.lease_expires_at, due.next_attempt_at
    FROM allowed JOIN deliveries AS due ON due.id IN (
        SELECT id FROM deliveries
        WHERE status = 'pending' AND host = allowed.host AND next_attempt_at <= ?
          AND (lease_expires_at IS NULL OR lease_expires_at <= ?)
        ORDER BY next_attempt_at LIMIT ?
    )
    ORDER BY due.next_attempt_at LIMIT ?
"""


async def _due_candidates(
    transaction: _SqliteTransaction,
    now: float | None,
    limit: int,
    per_host_limit: int,
    host_limits: Mapping[str, int],
) -> list[Any]:
    """Return due, unleased rows for a claim to choose from, oldest first.

    The oldest due rows usually fill the claim. When they do not because
    their hosts are skipped or at their limit, and more due rows may lie
    behind them, the hosts are walked one by one instead. That keeps a claim
    cheap however many due rows a skipped host has.
    """
    window = limit * _CLAIM_LOOKAHEAD
    found = await transaction._all(_DUE_SQL, (now, now, window))
    if len(found) < window:
        return found
    if len(rows.choose_per_host(found, limit, per_host_limit, host_limits)) == limit:
        return found
    skipped = [host for host, remaining in host_limits.items() if remaining <= 0]
    per_host = min(limit, max([per_host_limit, *host_limits.values()]))
    return await transaction._all(
        _DUE_BY_HOST_SQL, (json.dumps(skipped), now, now, per_host, window)
    )


def _encode_cursor(created_at: float, delivery_id: str) -> str:
    raw = json.dumps([created_at, delivery_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """Return the position a cursor names; raise ValueError if it is malformed."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, delivery_id = json.loads(raw)
        return float(created_at), str(delivery_id)
    except (ValueError, TypeError) as exc:
        raise ValueError("invalid cursor") from exc


class SqliteStore(_Reads):
    kind = "sqlite"

    def __init__(
        self, path: Path, writer: aiosqlite.Connection, reader: aiosqlite.Connection
    ) -> None:
        self.path = path
        self._writer = writer
        self._db = reader
        self._write_lock = asyncio.Lock()
        self._group: _CommitGroup | None = None  # the open write transaction
        self._listeners: list[Callable[[], None]] = []
        self._dispatch_lock: int | None = None  # file descriptor holding the flock

    @classmethod
    async def open(cls, url: str, *, synchronous: str = "full") -> SqliteStore:
        """Open the file, creating it and its folder, and apply pending migrations."""
        path = path_from_url(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            # Readable by the owner only, like the secrets beside it; SQLite
            # gives the -wal and -shm files the same mode.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        writer = await cls._connect(path, synchronous)
        try:
            await _migrate(writer)
            reader = await cls._connect(path, synchronous)
        except BaseException:
            await writer.close()
            raise
        return cls(path, writer, reader)

    @staticmethod
    async def _connect(path: Path, synchronous: str) -> aiosqlite.Connection:
        db = await aiosqlite.connect(path, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            await db.execute("PRAGMA busy_timeout = 10000")
            await db.execute("PRAGMA foreign_keys = ON")
            # Deleted rows are overwritten, so an erased customer leaves no
            # trace in free pages of the file.
            await db.execute("PRAGMA secure_delete = ON")
        except BaseException:
            # aiosqlite's worker thread would keep the process alive.
            await db.close()
            raise
        return db

    async def close(self) -> None:
        if self._dispatch_lock is not None:
            os.close(self._dispatch_lock)
            self._dispatch_lock = None
        if self._group is not None:
            await asyncio.gather(self._group.committed, return_exceptions=True)
        await self._db.close()
        await self._writer.close()

    def add_new_work_listener(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def _notify_new_work(self) -> None:
        for listener in self._listeners:
            listener()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_SqliteTransaction]:
        """Run the body as one member of a group commit.

        Bodies that queue for the write lock while a group is open run one
        after another inside the same SQLite transaction, each within its own
        savepoint, and one COMMIT (one fsync) ends them all. A body that
        raises rolls back to its savepoint, so only its own writes are lost.
        The context exits only after the group's COMMIT, so a caller that
        got through has its writes on disk. If the COMMIT fails, the whole
        group is rolled back and every member raises StoreError.
        """
        async with self._write_lock:
            group = self._group
            if group is None:
                group = self._group = _CommitGroup()
                # The lock is FIFO: the commit runs after the bodies queued
                # now, and bodies that queue later start the next group.
                group.committer = asyncio.create_task(self._commit(group))
                # The group exists before BEGIN is awaited: a caller cancelled
                # here does not stop the BEGIN, which aiosqlite's thread runs
                # anyway, and the group's COMMIT then ends that transaction.
                await self._writer.execute("BEGIN IMMEDIATE")
            transaction = _SqliteTransaction(self._writer)
            await self._writer.execute("SAVEPOINT member")
            try:
                yield transaction
            except BaseException:
                await self._writer.execute("ROLLBACK TO member")
                await self._writer.execute("RELEASE member")
                raise
            await self._writer.execute("RELEASE member")
        try:
            await asyncio.shield(group.committed)
        except Exception as exc:
            raise StoreError(f"committing the transaction failed: {exc}") from exc
        if transaction.new_work:
            self._notify_new_work()

    async def _commit(self, group: _CommitGroup) -> None:
        async with self._write_lock:
            self._group = None
            try:
                await self._writer.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                if "no transaction is active" not in str(exc):
                    await _roll_back(self._writer)
                    group.committed.set_exception(exc)
                    return
                # BEGIN failed, and its caller got that error; nothing to end.
                group.committed.set_result(None)
            except BaseException as exc:
                await _roll_back(self._writer)
                group.committed.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
            else:
                group.committed.set_result(None)

    async def _write(self, sql: str, params: Sequence[Any] = ()) -> int:
        async with self.transaction() as transaction:
            cursor = await transaction._db.execute(sql, params)
            return cursor.rowcount

    # Clients

    async def insert_client(self, client: ClientRecord) -> None:
        await self._write(
            """INSERT INTO clients (id, name, api_key_hash, signing_secrets, created_at)
               VALUES (?, ?, ?, ?, ?)""",
            (
                client.id,
                client.name,
                client.api_key_hash,
                client.signing_secrets,
                _to_db(client.created_at),
            ),
        )

    async def get_client(self, client_id: str) -> ClientRecord | None:
        row = await self._one("SELECT * FROM clients WHERE id = ?", (client_id,))
        return None if row is None else rows.client(row)

    async def find_client_by_key_hash(self, api_key_hash: str) -> ClientRecord | None:
        row = await self._one(
            "SELECT * FROM clients WHERE api_key_hash = ?", (api_key_hash,)
        )
        return None if row is None else rows.client(row)

    async def get_signing_secrets(self, client_ids: Sequence[str]) -> dict[str, bytes]:
        if not client_ids:
            return {}
        marks = ",".join("?" * len(client_ids))
        found = await self._all(
            f"SELECT id, signing_secrets FROM clients WHERE id IN ({marks})",
            list(client_ids),
        )
        return {row["id"]: bytes(row["signing_secrets"]) for row in found}

    async def update_signing_secrets(self, client_id: str, signing_secrets: bytes) -> None:
        await self._write(
            "UPDATE clients SET signing_secrets = ? WHERE id = ?",
            (signing_secrets, client_id),
        )

    async def swap_signing_secrets(
        self, client_id: str, expected: bytes, replacement: bytes
    ) -> bool:
        changed = await self._write(
            """UPDATE clients SET signing_secrets = ?
               WHERE id = ? AND signing_secrets = ?""",
            (replacement, client_id, expected),
        )
        return changed == 1

    # Service settings

    async def get_setting(self, name: str) -> bytes | None:
        row = await self._one("SELECT value FROM service_settings WHERE name = ?", (name,))
        return None if row is None else bytes(row["value"])

    async def put_setting(self, name: str, value: bytes, *, expected: bytes | None) -> bool:
        now = _to_db(datetime.now(UTC))
        if expected is None:
            changed = await self._write(
                """INSERT INTO service_settings (name, value, updated_at)
                   VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING""",
                (name, value, now),
            )
        else:
            changed = await self._write(
                """UPDATE service_settings SET value = ?, updated_at = ?
                   WHERE name = ? AND value = ?""",
                (value, now, name, expected),
            )
        return changed == 1

    # Reads of requests and scores

    async def latest_valid_score(
        self, client_id: str, customer_id: str, now: datetime
    ) -> ScoreRecord | None:
        return await self.find_valid_score(client_id, customer_id, now)

    async def has_requested_customer(self, client_id: str, customer_id: str) -> bool:
        row = await self._one(
            "SELECT 1 FROM score_requests WHERE client_id = ? AND customer_id = ? LIMIT 1",
            (client_id, customer_id),
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
        async with self.transaction() as transaction:
            candidates = await _due_candidates(
                transaction, _to_db(now), limit, per_host_limit, host_limits
            )
            chosen = rows.choose_per_host(candidates, limit, per_host_limit, host_limits)
            if not chosen:
                return []
            marks = ",".join("?" * len(chosen))
            found = await transaction._all(
                f"""UPDATE deliveries
                    SET lease_owner = ?, lease_expires_at = ?
                    WHERE id IN ({marks})
                    RETURNING *""",
                (owner, _to_db(lease_until), *chosen),
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
        now = _to_db(datetime.now(UTC))
        async with self.transaction() as transaction:
            db = transaction._db
            await db.executemany(
                """INSERT OR IGNORE INTO attempts
                   (delivery_id, number, started_at, duration_ms, status_code,
                    error, response_excerpt)
                   VALUES (?, ?, ?, ?, ?, ?, ?)""",
                [
                    (
                        o.attempt.delivery_id,
                        o.attempt.number,
                        _to_db(o.attempt.started_at),
                        o.attempt.duration_ms,
                        o.attempt.status_code,
                        o.attempt.error,
                        o.attempt.response_excerpt,
                    )
                    for o in outcomes
                ],
            )
            await db.executemany(
                """UPDATE deliveries
                   SET status = ?, next_attempt_at = COALESCE(?, next_attempt_at),
                       held_until = ?,
                       attempt_count = attempt_count + 1,
                       attempts_in_round = attempts_in_round + 1,
                       last_error = ?, last_status_code = ?, updated_at = ?,
                       lease_owner = NULL, lease_expires_at = NULL
                   WHERE id = ? AND lease_owner = ? AND status = 'pending'""",
                [
                    (
                        o.status.value,
                        _to_db(o.next_attempt_at),
                        _to_db(o.held_until),
                        o.attempt.error,
                        o.attempt.status_code,
                        now,
                        o.attempt.delivery_id,
                        owner,
                    )
                    for o in outcomes
                ],
            )
            entries = [o.timeline for o in outcomes if o.timeline is not None]
            if entries:
                await transaction.add_timeline_entries(entries)
            for outcome in outcomes:
                if outcome.client_id is not None and outcome.host is not None:
                    await _record_receiver_outcome(
                        transaction, outcome, release_interval_s, release_batch
                    )

    async def postpone_delivery(
        self, delivery_id: str, owner: str, next_attempt_at: datetime, reason: str
    ) -> None:
        await self._write(
            """UPDATE deliveries
               SET next_attempt_at = ?, last_error = ?, updated_at = ?,
                   lease_owner = NULL, lease_expires_at = NULL
               WHERE id = ? AND lease_owner = ?""",
            (
                _to_db(next_attempt_at),
                reason,
                _to_db(datetime.now(UTC)),
                delivery_id,
                owner,
            ),
        )

    async def release_leases(self, owner: str) -> int:
        return await self._write(
            """UPDATE deliveries SET lease_owner = NULL, lease_expires_at = NULL
               WHERE lease_owner = ?""",
            (owner,),
        )

    def lock_for_dispatch(self) -> None:
        """Take the file lock that lets one process at a time dispatch from this file.

        The lock ends with the process, so a killed service does not block
        its restart. Raises StoreError while another process holds it.
        """
        lock_path = self.path.with_name(self.path.name + ".dispatch.lock")
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise StoreError(
                f"another process is dispatching from {self.path}; run one "
                "webhooks serve per SQLite file, or PostgreSQL for several"
            ) from None
        self._dispatch_lock = descriptor

    async def release_all_leases(self) -> int:
        return await self._write(
            """UPDATE deliveries SET lease_owner = NULL, lease_expires_at = NULL
               WHERE lease_owner IS NOT NULL"""
        )

    async def next_due_at(self) -> datetime | None:
        row = await self._one(
            "SELECT MIN(next_attempt_at) AS due FROM deliveries WHERE status = 'pending'"
        )
        return rows.time(row["due"])

    # Monitoring

    async def count_deliveries_by_state(self, now: datetime) -> dict[str, int]:
        found = await self._all(
            """SELECT status, COALESCE(lease_expires_at > ?, 0) AS leased,
                      COUNT(*) AS count
               FROM deliveries WHERE status IN ('pending', 'failed', 'held')
               GROUP BY 1, 2""",
            (_to_db(now),),
        )
        return rows.delivery_counts(found)

    async def schema_version(self) -> SchemaVersion:
        row = await self._one("SELECT MAX(version) AS version FROM schema_migrations")
        return SchemaVersion(applied=row["version"] or 0, latest=_migrations()[-1][0])

    # Operators

    async def list_deliveries(
        self, filter: DeliveryFilter, limit: int, cursor: str | None
    ) -> DeliveryPage:
        where, params = _delivery_conditions(filter)
        conditions = [where.removeprefix("WHERE ")] if where else []
        if cursor is not None:
            created_at, delivery_id = decode_cursor(cursor)
            conditions.append("(created_at, id) < (?, ?)")
            params.extend([created_at, delivery_id])
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        found = await self._all(
            f"""SELECT * FROM deliveries {where}
                ORDER BY created_at DESC, id DESC LIMIT ?""",
            [*params, limit + 1],
        )
        deliveries = [rows.delivery(row) for row in found[:limit]]
        next_cursor = None
        if len(found) > limit:
            last = found[limit - 1]
            next_cursor = _encode_cursor(last["created_at"], last["id"])
        return DeliveryPage(deliveries=deliveries, next_cursor=next_cursor)

    async def get_delivery(self, delivery_id: str) -> DeliveryRecord | None:
        row = await self._one("SELECT * FROM deliveries WHERE id = ?", (delivery_id,))
        return None if row is None else rows.delivery(row)

    async def list_attempts(self, delivery_id: str) -> list[AttemptRecord]:
        found = await self._all(
            "SELECT * FROM attempts WHERE delivery_id = ? ORDER BY number",
            (delivery_id,),
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
        marks = ",".join("?" * len(delivery_ids))
        status_marks = ",".join("?" * len(statuses))
        async with self.transaction() as transaction:
            found = await transaction._all(
                f"""UPDATE deliveries
                    SET status = 'pending', attempts_in_round = 0,
                        next_attempt_at = ?, updated_at = ?, held_until = NULL,
                        lease_owner = NULL, lease_expires_at = NULL
                    WHERE id IN ({marks}) AND status IN ({status_marks})
                    RETURNING id""",
                (_to_db(now), _to_db(now), *delivery_ids, *(s.value for s in statuses)),
            )
            if found:
                transaction.new_work = True
        return [row["id"] for row in found]

    async def count_deliveries(self, filter: DeliveryFilter) -> int:
        where, params = _delivery_conditions(filter)
        row = await self._one(f"SELECT COUNT(*) AS count FROM deliveries {where}", params)
        return row["count"]

    # Held deliveries and receiver health

    async def hold_delivery(
        self, delivery_id: str, owner: str, held_until: datetime, reason: str
    ) -> None:
        await self._write(
            """UPDATE deliveries
               SET status = 'held', held_until = ?, last_error = ?, updated_at = ?,
                   lease_owner = NULL, lease_expires_at = NULL
               WHERE id = ? AND lease_owner = ? AND status = 'pending'""",
            (
                _to_db(held_until),
                reason,
                _to_db(datetime.now(UTC)),
                delivery_id,
                owner,
            ),
        )

    async def release_held_deliveries(
        self, client_id: str, host: str, now: datetime, interval_s: float, limit: int
    ) -> int:
        async with self.transaction() as transaction:
            released = await _release_held(
                transaction, client_id, host, _to_db(now), interval_s, limit
            )
        return released

    async def fail_expired_held(self, now: datetime, limit: int) -> int:
        return await self._write(
            """UPDATE deliveries
               SET status = 'failed', updated_at = ?, held_until = NULL
               WHERE id IN (
                   SELECT id FROM deliveries
                   WHERE status = 'held' AND held_until <= ? LIMIT ?)""",
            (_to_db(now), _to_db(now), limit),
        )

    async def get_receiver_health(self, client_id: str, host: str) -> ReceiverHealth | None:
        row = await self._one(
            "SELECT * FROM receiver_health WHERE client_id = ? AND host = ?",
            (client_id, host),
        )
        return None if row is None else rows.receiver_health(row)

    async def list_receiver_health(self, client_id: str) -> list[ReceiverHealth]:
        found = await self._all(
            "SELECT * FROM receiver_health WHERE client_id = ? ORDER BY host", (client_id,)
        )
        return [rows.receiver_health(row) for row in found]

    # Timelines and fetch tracking

    async def list_timeline(
        self, correlation_id: str, audience: Audience | None
    ) -> list[TimelineEntry]:
        sql = "SELECT * FROM timeline_entries WHERE correlation_id = ?"
        params: list[Any] = [correlation_id]
        if audience is not None:
            sql += " AND audience = ?"
            params.append(audience.value)
        found = await self._all(sql + " ORDER BY at, id", params)
        return [rows.timeline_entry(row) for row in found]

    async def list_unfetched_requests(
        self, delivered_before: datetime, limit: int, cursor: str | None
    ) -> tuple[list[ScoreRequestRecord], str | None]:
        sql = (
            _SCORE_REQUEST_SELECT
            + " WHERE r.fetched_at IS NULL AND r.delivered_at IS NOT NULL"
            " AND r.delivered_at < ?"
        )
        params: list[Any] = [_to_db(delivered_before)]
        if cursor is not None:
            delivered_at, correlation_id = decode_cursor(cursor)
            sql += " AND (r.delivered_at, r.correlation_id) > (?, ?)"
            params.extend([delivered_at, correlation_id])
        found = await self._all(
            sql + " ORDER BY r.delivered_at, r.correlation_id LIMIT ?", [*params, limit + 1]
        )
        requests = [rows.score_request(row) for row in found[:limit]]
        next_cursor = None
        if len(found) > limit:
            last = found[limit - 1]
            next_cursor = _encode_cursor(last["delivered_at"], last["correlation_id"])
        return requests, next_cursor

    async def count_unfetched_requests(self, delivered_before: datetime) -> int:
        row = await self._one(
            """SELECT COUNT(*) AS count FROM score_requests
               WHERE fetched_at IS NULL AND delivered_at IS NOT NULL
                 AND delivered_at < ?""",
            (_to_db(delivered_before),),
        )
        return row["count"]

    # Callback handshakes

    async def get_callback_origin(self, client_id: str, origin: str) -> CallbackOrigin | None:
        row = await self._one(
            "SELECT * FROM callback_origins WHERE client_id = ? AND origin = ?",
            (client_id, origin),
        )
        return None if row is None else rows.callback_origin(row)

    async def save_callback_origin(self, record: CallbackOrigin) -> None:
        await self._write(
            """INSERT INTO callback_origins (client_id, origin, allowed, reason, checked_at)
               VALUES (?, ?, ?, ?, ?)
               ON CONFLICT (client_id, origin) DO UPDATE
               SET allowed = excluded.allowed, reason = excluded.reason,
                   checked_at = excluded.checked_at""",
            (
                record.client_id,
                record.origin,
                int(record.allowed),
                record.reason,
                _to_db(record.checked_at),
            ),
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
        async with self.transaction() as transaction:
            return await sqlite_retention.delete_expired(
                transaction._db,
                scores_before=scores_before.timestamp(),
                requests_before=requests_before.timestamp(),
                idempotency_before=idempotency_before.timestamp(),
                limit=limit,
            )

    async def erase_customer(
        self, client_id: str, customer_id: str, erasure: ErasureRecord
    ) -> dict[str, int]:
        async with self.transaction() as transaction:
            counts = await sqlite_retention.erase_customer(
                transaction._db, client_id, customer_id, erasure
            )
        await self._checkpoint_wal()
        return counts

    async def list_erasures(self, client_id: str) -> list[ErasureRecord]:
        found = await self._all(
            "SELECT * FROM erasures WHERE client_id = ? ORDER BY erased_at, id",
            (client_id,),
        )
        return [rows.erasure(row) for row in found]

    async def _checkpoint_wal(self) -> None:
        """Copy the write-ahead log into the database file and truncate it.

        Old copies of changed pages, such as those with an erased customer's
        ID, stay in the log until a checkpoint, and in the log file's bytes
        until it is truncated. A checkpoint cannot run inside a transaction,
        so it waits for an open commit group to end.
        """
        while True:
            async with self._write_lock:
                group = self._group
                if group is None:
                    found = await self._writer.execute_fetchall(
                        "PRAGMA wal_checkpoint(TRUNCATE)"
                    )
                    busy = next(iter(found))[0]
                    break
            await asyncio.gather(group.committed, return_exceptions=True)
        if busy:
            log.warning(
                "the write-ahead log could not be truncated because another "
                "connection was reading; it keeps old page copies until the next "
                "checkpoint",
                extra={"event": "wal_checkpoint_busy"},
            )


def _statements(script: str) -> list[str]:
    """Split a migration script into complete SQL statements."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    leftover = [
        line for line in buffer.splitlines() if line.strip() and not line.strip().startswith("--")
    ]
    if leftover:
        raise MigrationError(f"incomplete SQL statement at the end: {leftover[0][:80]}")
    return statements


async def _migrate(db: aiosqlite.Connection) -> None:
    """Apply pending migrations in one transaction.

    The version is read under the write lock, so two processes that open a
    new file together migrate it once. Foreign keys are off meanwhile, as
    SQLite's table rebuilds require, and checked before the commit.
    """
    await db.execute(
        """CREATE TABLE IF NOT EXISTS schema_migrations (
               version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"""
    )
    await db.execute("PRAGMA foreign_keys = OFF")
    await db.execute("BEGIN IMMEDIATE")
    try:
        async with db.execute("SELECT MAX(version) FROM schema_migrations") as cursor:
            row = await cursor.fetchone()
        current = row[0] or 0
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
                for statement in _statements(script):
                    await db.execute(statement)
            except sqlite3.Error as exc:
                raise MigrationError(f"migration {name} failed: {exc}") from exc
            await db.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (version, name, datetime.now(UTC).timestamp()),
            )
        async with db.execute("PRAGMA foreign_key_check") as cursor:
            violation = await cursor.fetchone()
        if violation is not None:
            raise MigrationError(f"migrations left a broken foreign key: {tuple(violation)}")
    except BaseException:
        await db.execute("ROLLBACK")
        raise
    finally:
        if db.in_transaction:
            await db.execute("COMMIT")
        await db.execute("PRAGMA foreign_keys = ON")
