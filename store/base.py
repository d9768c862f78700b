"""The store interface that the service uses; no SQL crosses it.

Exceptions::

    StoreError
    ├── MigrationError      the schema is newer than this code, or a migration failed
    └── UniqueViolation     an insert met an existing key
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Protocol

from store.records import (
    AttemptOutcome,
    Audience,
    CallbackOrigin,
    DeliveryStatus,
    ErasureRecord,
    ReceiverHealth,
    TimelineEntry,
    AttemptRecord,
    ClientRecord,
    ComputationRecord,
    DeliveryFilter,
    DeliveryPage,
    DeliveryRecord,
    IdempotencyRecord,
    NewDelivery,
    RequestStatus,
    SchemaVersion,
    ScoreRecord,
    ScoreRequestRecord,
)


class StoreError(Exception):
    """The store failed."""


class MigrationError(StoreError):
    """The database schema cannot be brought to the version this code expects."""


class UniqueViolation(StoreError):
    """An insert met a row with the same key."""


class Transaction(Protocol):
    """One atomic unit of work: everything in it commits together or not at all."""

    async def get_idempotency_key(
        self, client_id: str, key: str, not_before: datetime
    ) -> IdempotencyRecord | None:
        """Return the key if it was stored at or after ``not_before``.

        An older record of the key is deleted, so the name can be used again.
        """

    async def insert_idempotency_key(self, record: IdempotencyRecord) -> None:
        """Insert; raise UniqueViolation if a concurrent transaction stored the key."""

    async def find_valid_score(
        self, client_id: str, customer_id: str, now: datetime
    ) -> ScoreRecord | None: ...

    async def find_pending_computation(
        self, client_id: str, customer_id: str
    ) -> ComputationRecord | None: ...

    async def insert_computation(self, computation: ComputationRecord) -> None:
        """Insert; raise UniqueViolation if the customer has a pending one."""

    async def get_computation(self, computation_id: str) -> ComputationRecord | None: ...

    async def complete_computation(self, computation: ComputationRecord) -> None:
        """Write the status, completion time, fingerprint and failure reason."""

    async def insert_score(self, score: ScoreRecord) -> None: ...

    async def insert_score_request(self, request: ScoreRequestRecord) -> None: ...

    async def get_score_request(
        self, correlation_id: str, client_id: str | None = None
    ) -> ScoreRequestRecord | None: ...

    async def complete_pending_requests(
        self,
        computation_id: str,
        status: RequestStatus,
        completed_at: datetime,
        score_id: str | None,
        failure_reason: str | None,
    ) -> list[ScoreRequestRecord]:
        """Complete the computation's pending requests and return them, completed."""

    async def insert_delivery(self, delivery: NewDelivery) -> None:
        """Insert a due delivery; the dispatcher is woken after the commit."""

    async def insert_deliveries(self, deliveries: Sequence[NewDelivery]) -> None:
        """Insert many deliveries in one statement, for seeding and imports.

        Does what ``insert_delivery`` does for each, at a fraction of the
        cost per row.
        """

    async def cancel_pending_deliveries(
        self, correlation_ids: Sequence[str], event_type: str, now: datetime
    ) -> int: ...

    async def add_timeline_entries(self, entries: Sequence[TimelineEntry]) -> None: ...

    async def mark_fetched(self, correlation_ids: Sequence[str], at: datetime) -> None:
        """Set ``fetched_at`` on the completed requests that have none yet."""

    async def requests_with_score(self, client_id: str, score_id: str) -> list[str]:
        """Return the correlation IDs of the client's requests answered by a score."""


class Store(Protocol):
    kind: str  # "sqlite" or "postgresql"

    async def close(self) -> None: ...

    def transaction(self) -> AbstractAsyncContextManager[Transaction]: ...

    def add_new_work_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after each commit that made a delivery due."""

    # Clients

    async def insert_client(self, client: ClientRecord) -> None: ...

    async def get_client(self, client_id: str) -> ClientRecord | None: ...

    async def find_client_by_key_hash(self, api_key_hash: str) -> ClientRecord | None: ...

    async def get_signing_secrets(self, client_ids: Sequence[str]) -> dict[str, bytes]: ...

    async def update_signing_secrets(self, client_id: str, signing_secrets: bytes) -> None: ...

    async def swap_signing_secrets(
        self, client_id: str, expected: bytes, replacement: bytes
    ) -> bool:
        """Replace a client's signing secrets if they are still ``expected``.

        Returns whether they were replaced, so two concurrent rotations
        cannot both succeed and lose one new secret.
        """

    # Service settings

    async def get_setting(self, name: str) -> bytes | None:
        """Return a service-wide setting, or None if it was never stored."""

    async def put_setting(self, name: str, value: bytes, *, expected: bytes | None) -> bool:
        """Store a setting if its current value is ``expected`` (None: absent).

        Returns whether it was stored; a concurrent writer that got there
        first makes it return False.
        """

    # Reads of requests and scores

    async def get_score_request(
        self, correlation_id: str, client_id: str | None = None
    ) -> ScoreRequestRecord | None: ...

    async def latest_valid_score(
        self, client_id: str, customer_id: str, now: datetime
    ) -> ScoreRecord | None: ...

    async def has_requested_customer(self, client_id: str, customer_id: str) -> bool: ...

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
        """Lease up to ``limit`` due deliveries, oldest first.

        A host gets at most ``host_limits[host]`` of them, or
        ``per_host_limit`` if it is not in that mapping; a limit of 0 skips
        the host. So one busy receiver cannot fill a batch. A delivery whose
        previous lease had expired comes back with ``took_over_expired_lease``.
        """

    async def record_outcomes(
        self,
        owner: str,
        outcomes: Sequence[AttemptOutcome],
        *,
        release_interval_s: float = 0.1,
        release_batch: int = 100,
    ) -> None:
        """Store attempts and their deliveries' new state, and release the leases.

        An outcome whose lease ``owner`` no longer holds still stores its
        attempt but leaves the delivery to its new holder. An outcome with a
        ``client_id`` also updates that receiver's health, and on success
        marks its request delivered and releases up to ``release_batch``
        held deliveries to the same client and host, oldest first, due
        ``release_interval_s`` apart.
        """

    async def postpone_delivery(
        self, delivery_id: str, owner: str, next_attempt_at: datetime, reason: str
    ) -> None:
        """Release a lease without an attempt, due again at ``next_attempt_at``."""

    async def release_leases(self, owner: str) -> int:
        """Release every lease ``owner`` holds, leaving the deliveries due."""

    async def release_all_leases(self) -> int:
        """Release every lease; only for a store that a single dispatcher uses."""

    async def next_due_at(self) -> datetime | None:
        """Return the earliest due time of a pending delivery, leased or not."""

    # Monitoring

    async def count_deliveries_by_state(self, now: datetime) -> dict[str, int]:
        """Count deliveries as ``pending`` (not leased at ``now``), ``in_flight``
        (leased) and ``failed``, with one query.

        Delivered and cancelled deliveries are left out because they only
        grow. The query reads every pending and failed row, so call it at
        most every few seconds.
        """

    async def schema_version(self) -> SchemaVersion:
        """Read the newest migration applied to the database."""

    # Operators

    async def list_deliveries(
        self, filter: DeliveryFilter, limit: int, cursor: str | None
    ) -> DeliveryPage: ...

    async def get_delivery(self, delivery_id: str) -> DeliveryRecord | None: ...

    async def list_attempts(self, delivery_id: str) -> list[AttemptRecord]: ...

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
        """Make deliveries in one of ``statuses`` due now with a fresh attempt budget.

        Returns the IDs replayed; the others are left alone.
        """

    async def count_deliveries(self, filter: DeliveryFilter) -> int: ...

    # Held deliveries and receiver health

    async def hold_delivery(
        self, delivery_id: str, owner: str, held_until: datetime, reason: str
    ) -> None:
        """Hold a leased delivery without an attempt, as a refused handshake does."""

    async def release_held_deliveries(
        self, client_id: str, host: str, now: datetime, interval_s: float, limit: int
    ) -> int:
        """Make held deliveries to a client's host due again, oldest first, spaced out."""

    async def fail_expired_held(self, now: datetime, limit: int) -> int:
        """Turn held deliveries past their ``held_until`` into failed ones."""

    async def get_receiver_health(self, client_id: str, host: str) -> ReceiverHealth | None: ...

    async def list_receiver_health(self, client_id: str) -> list[ReceiverHealth]: ...

    # Timelines and fetch tracking

    async def list_timeline(
        self, correlation_id: str, audience: Audience | None
    ) -> list[TimelineEntry]:
        """Return the request's steps in order; ``audience=None`` returns them all."""

    async def list_unfetched_requests(
        self, delivered_before: datetime, limit: int, cursor: str | None
    ) -> tuple[list[ScoreRequestRecord], str | None]:
        """Return requests delivered before a time and never read, and a next cursor."""

    async def count_unfetched_requests(self, delivered_before: datetime) -> int: ...

    # Callback handshakes

    async def get_callback_origin(self, client_id: str, origin: str) -> CallbackOrigin | None: ...

    async def save_callback_origin(self, record: CallbackOrigin) -> None: ...

    # Retention and erasure

    async def delete_expired(
        self,
        *,
        scores_before: datetime,
        requests_before: datetime,
        idempotency_before: datetime,
        limit: int,
    ) -> dict[str, int]:
        """Delete or scrub up to ``limit`` rows per kind in one transaction.

        Returns the rows changed per kind: ``score``, ``request_metadata``,
        ``timeline_entry`` and ``idempotency_key``; a count below ``limit``
        means none of that kind is left. Scores whose ``valid_until`` is
        before ``scores_before`` are deleted, and the requests that used
        them keep no score. Requests completed before ``requests_before`` lose
        their metadata, and their timeline entries written before then are
        deleted. Idempotency keys stored before ``idempotency_before`` go.
        A request with a pending or held delivery keeps its score, metadata
        and timeline entries until that delivery ends.
        """

    async def erase_customer(
        self, client_id: str, customer_id: str, erasure: ErasureRecord
    ) -> dict[str, int]:
        """Remove every trace of one customer of one client and store the audit record.

        In one transaction, scores, metadata, idempotency records and
        timeline entries are deleted, and pending and held deliveries
        cancelled. Pending requests and computations fail, with the reason
        that the customer was erased, so no later result can store a score
        for them. The customer ID in the remaining rows is replaced by
        ``erasure.customer_hash``: in ID columns, in the ``customer_id``
        members of delivery payloads, and wherever it occurs in their URLs,
        errors, failure reasons and response excerpts.

        Returns the rows changed per table. The stored audit record is
        ``erasure`` with ``rows_changed`` and ``detail`` set from them. The
        SQLite store also checkpoints and truncates its write-ahead log.
        """

    async def list_erasures(self, client_id: str) -> list[ErasureRecord]: ...
