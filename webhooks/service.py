"""Domain rules of score requests: submission, reuse, joining, and results.

Every state change and the deliveries it causes are written in one store
transaction, so a response that reports success means the webhook will go out.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from yarl import URL

from store import Store, Transaction, UniqueViolation
from store.records import (
    Audience,
    ComputationRecord,
    IdempotencyRecord,
    NewDelivery,
    RequestStatus,
    ScoreRecord,
    ScoreRequestRecord,
    TimelineEntry,
)
from webhooks import events, ids
from webhooks.problems import Conflict, NotFound, ValidationFailed
from webhooks.timefmt import format_time

log = logging.getLogger("webhooks.service")

# Concurrent submissions can race on a unique key (a customer's pending
# computation, an idempotency key); the loser runs again and sees the winner.
_MAX_TRANSACTION_RUNS = 3


@dataclass(frozen=True, kw_only=True)
class Submission:
    client_id: str
    customer_id: str
    callback_url: str
    metadata: dict[str, Any] | None
    idempotency_key: str | None

    def fingerprint(self) -> str:
        body = {
            "customer_id": self.customer_id,
            "callback_url": self.callback_url,
            "metadata": self.metadata,
        }
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, kw_only=True)
class SubmitResult:
    request: ScoreRequestRecord
    status_code: int  # 201 when a stored score answered at once, else 202
    replayed: bool  # an Idempotency-Key repeat of an earlier submission


@dataclass(frozen=True, kw_only=True)
class Result:
    """The backend's readiness signal for one computation."""

    outcome: RequestStatus  # READY or FAILED
    score: int | None = None
    valid_until: datetime | None = None  # None: the configured default applies
    reason: str | None = None

    def fingerprint(self) -> str:
        return json.dumps(
            {
                "outcome": self.outcome.value,
                "score": self.score,
                "valid_until": format_time(self.valid_until) if self.valid_until else None,
                "reason": self.reason,
            },
            sort_keys=True,
        )


def host_of(url: str) -> str:
    """Return ``host:port`` of a URL, the unit of per-receiver isolation."""
    parsed = URL(url)
    return f"{parsed.host}:{parsed.port}"


class ScoreService:
    def __init__(
        self,
        store: Store,
        *,
        public_url: str,
        backend_url: str,
        default_validity: timedelta,
        idempotency_window: timedelta,
    ) -> None:
        self._store = store
        self._public_url = public_url
        self._backend_url = backend_url
        self._default_validity = default_validity
        self._idempotency_window = idempotency_window

    async def submit(self, submission: Submission, now: datetime) -> SubmitResult:
        """Create a score request, answered by a stored score, a pending job or a new one."""
        for run in range(1, _MAX_TRANSACTION_RUNS + 1):
            try:
                async with self._store.transaction() as transaction:
                    return await self._submit(transaction, submission, now)
            except UniqueViolation:
                if run == _MAX_TRANSACTION_RUNS:
                    raise
                log.debug(
                    "submission raced another; running it again",
                    extra={"event": "submit_retry"},
                )
        raise AssertionError("unreachable")

    async def _submit(
        self, transaction: Transaction, submission: Submission, now: datetime
    ) -> SubmitResult:
        fingerprint = submission.fingerprint()
        if submission.idempotency_key is not None:
            replay = await self._replay_idempotent(transaction, submission, fingerprint, now)
            if replay is not None:
                return replay

        correlation_id = ids.correlation_id()
        metadata = (
            None if submission.metadata is None else json.dumps(submission.metadata)
        )
        request = ScoreRequestRecord(
            correlation_id=correlation_id,
            client_id=submission.client_id,
            customer_id=submission.customer_id,
            callback_url=submission.callback_url,
            metadata=metadata,
            status=RequestStatus.PENDING,
            created_at=now,
        )

        score = await transaction.find_valid_score(
            submission.client_id, submission.customer_id, now
        )
        if score is not None:
            request = replace(request, status=RequestStatus.READY, completed_at=now, score=score)
            await transaction.insert_score_request(request)
            await self._notify_client(transaction, request)
            status_code = 201
            steps = [_step(request, now, "stored_score_reused", score_id=score.id)]
            log.info(
                "score request %s served from a stored score",
                correlation_id,
                extra={"event": "score_reused", "correlation_id": correlation_id},
            )
        else:
            computation = await transaction.find_pending_computation(
                submission.client_id, submission.customer_id
            )
            step = "computation_joined"
            if computation is None:
                computation = await self._start_computation(transaction, request, now)
                step = "computation_started"
            request = replace(request, computation_id=computation.id)
            await transaction.insert_score_request(request)
            status_code = 202
            steps = [_step(request, now, step, computation_id=computation.id)]
        await transaction.add_timeline_entries([_step(request, now, "submitted"), *steps])

        if submission.idempotency_key is not None:
            await transaction.insert_idempotency_key(
                IdempotencyRecord(
                    client_id=submission.client_id,
                    key=submission.idempotency_key,
                    request_fingerprint=fingerprint,
                    correlation_id=correlation_id,
                    status_code=status_code,
                    created_at=now,
                )
            )
        return SubmitResult(request=request, status_code=status_code, replayed=False)

    async def _replay_idempotent(
        self,
        transaction: Transaction,
        submission: Submission,
        fingerprint: str,
        now: datetime,
    ) -> SubmitResult | None:
        assert submission.idempotency_key is not None
        record = await transaction.get_idempotency_key(
            submission.client_id,
            submission.idempotency_key,
            not_before=now - self._idempotency_window,
        )
        if record is None:
            return None
        if record.request_fingerprint != fingerprint:
            raise ValidationFailed(
                "this Idempotency-Key was used with a different body; "
                "use a new key for a new request",
                errors={"Idempotency-Key": ["already used with a different body"]},
            )
        request = await transaction.get_score_request(
            record.correlation_id, submission.client_id
        )
        assert request is not None
        await transaction.add_timeline_entries([_step(request, now, "idempotent_repeat")])
        return SubmitResult(request=request, status_code=record.status_code, replayed=True)

    async def _start_computation(
        self, transaction: Transaction, request: ScoreRequestRecord, now: datetime
    ) -> ComputationRecord:
        computation = ComputationRecord(
            id=ids.computation_id(),
            client_id=request.client_id,
            customer_id=request.customer_id,
            status=RequestStatus.PENDING,
            created_at=now,
        )
        await transaction.insert_computation(computation)
        payload = events.score_requested_event(
            request.correlation_id, request.client_id, request.customer_id, now
        )
        await transaction.insert_delivery(
            NewDelivery(
                id=ids.delivery_id(),
                message_id=ids.message_id(),
                client_id=None,
                correlation_id=request.correlation_id,
                event_type=events.SCORE_REQUESTED,
                url=self._backend_url,
                host=host_of(self._backend_url),
                payload=payload,
                next_attempt_at=now,
            )
        )
        return computation

    async def _notify_client(
        self, transaction: Transaction, request: ScoreRequestRecord
    ) -> None:
        event_type, payload = events.completion_event(request, self._public_url)
        assert request.completed_at is not None
        await transaction.insert_delivery(
            NewDelivery(
                id=ids.delivery_id(),
                message_id=ids.message_id(),
                client_id=request.client_id,
                correlation_id=request.correlation_id,
                event_type=event_type,
                url=request.callback_url,
                host=host_of(request.callback_url),
                payload=payload,
                next_attempt_at=request.completed_at,
            )
        )

    async def record_reads(
        self, correlation_ids: Sequence[str], via: str, now: datetime
    ) -> None:
        """Record reads of completed requests by their client, and the first as fetched.

        ``via`` names the endpoint: "request" or "customer".
        """
        if not correlation_ids:
            return
        async with self._store.transaction() as transaction:
            await _record_reads(transaction, correlation_ids, via, now)

    async def record_customer_read(
        self, client_id: str, score_id: str, now: datetime
    ) -> None:
        """Record a read of a customer's score as a read of every request it answered."""
        async with self._store.transaction() as transaction:
            correlation_ids = await transaction.requests_with_score(client_id, score_id)
            if correlation_ids:
                await _record_reads(transaction, correlation_ids, "customer", now)

    async def record_result(
        self, correlation_id: str, result: Result, now: datetime
    ) -> tuple[ScoreRequestRecord, bool]:
        """Store a computation's result and notify every request waiting on it.

        Returns the request and whether this call changed anything: an
        identical repeat changes nothing and notifies nobody again.
        """
        async with self._store.transaction() as transaction:
            request = await transaction.get_score_request(correlation_id)
            if request is None:
                raise NotFound(f"no score request {correlation_id!r}")
            if request.computation_id is None:
                raise Conflict(
                    "this request was served from a stored score; "
                    "the backend was not asked for it"
                )
            computation = await transaction.get_computation(request.computation_id)
            assert computation is not None

            fingerprint = result.fingerprint()
            if computation.status is not RequestStatus.PENDING:
                if computation.result_fingerprint == fingerprint:
                    return request, False
                if computation.result_fingerprint is None:
                    # Only an erasure completes a computation without a result.
                    raise Conflict(
                        f"the customer of {correlation_id!r} was erased, so its "
                        "result is no longer accepted"
                    )
                raise Conflict(
                    f"a different result is already stored for {correlation_id!r}; "
                    "a result cannot change"
                )

            await self._complete(transaction, computation, result, fingerprint, now)
            completed = await transaction.get_score_request(correlation_id)
            assert completed is not None
        return completed, True

    async def _complete(
        self,
        transaction: Transaction,
        computation: ComputationRecord,
        result: Result,
        fingerprint: str,
        now: datetime,
    ) -> None:
        await transaction.complete_computation(
            replace(
                computation,
                status=result.outcome,
                completed_at=now,
                result_fingerprint=fingerprint,
                failure_reason=result.reason,
            )
        )
        score_id = None
        if result.outcome is RequestStatus.READY:
            assert result.score is not None
            score_id = ids.new_id("scr")
            await transaction.insert_score(
                ScoreRecord(
                    id=score_id,
                    client_id=computation.client_id,
                    customer_id=computation.customer_id,
                    computation_id=computation.id,
                    value=result.score,
                    computed_at=now,
                    valid_until=result.valid_until or now + self._default_validity,
                )
            )

        completed = await transaction.complete_pending_requests(
            computation.id, result.outcome, now, score_id, result.reason
        )
        for request in completed:
            await self._notify_client(transaction, request)
        await transaction.add_timeline_entries(
            [
                _step(request, now, "result_received", outcome=result.outcome.value)
                for request in completed
            ]
        )
        # A backend that sends a result before acknowledging the event would
        # otherwise get the event again on the next retry.
        await transaction.cancel_pending_deliveries(
            [request.correlation_id for request in completed], events.SCORE_REQUESTED, now
        )
        log.info(
            "computation %s %s; notifying %d requests",
            computation.id,
            result.outcome.value,
            len(completed),
            extra={"event": "result_recorded", "computation_id": computation.id},
        )


async def _record_reads(
    transaction: Transaction, correlation_ids: Sequence[str], via: str, now: datetime
) -> None:
    await transaction.mark_fetched(correlation_ids, now)
    await transaction.add_timeline_entries(
        [
            TimelineEntry(
                correlation_id=correlation_id,
                at=now,
                step="result_read",
                audience=Audience.CLIENT,
                detail={"via": via},
            )
            for correlation_id in correlation_ids
        ]
    )


def _step(request: ScoreRequestRecord, at: datetime, step: str, **detail: Any) -> TimelineEntry:
    return TimelineEntry(
        correlation_id=request.correlation_id,
        at=at,
        step=step,
        audience=Audience.CLIENT,
        detail=detail or None,
    )
