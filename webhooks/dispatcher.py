"""The durable dispatcher: claims due deliveries with a lease and attempts them.

The store is the queue. A claim leases deliveries to this process; the
outcome of each attempt is written together with the release of its lease,
in batches. A process that dies leaves leases that expire, after which the
deliveries are due again, so delivery is at least once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import aiohttp

from store import Store
from store.records import (
    AttemptOutcome,
    AttemptRecord,
    Audience,
    DeliveryRecord,
    DeliveryStatus,
    TimelineEntry,
)
from webhooks import attempts, ids
from webhooks.attempts import HttpResult
from webhooks.circuit import CircuitBreakers, CircuitState
from webhooks.config import DeliveryConfig
from webhooks.handshake import CallbackHandshake
from webhooks.retry import next_delay_s, parse_retry_after
from webhooks.signing import Signer, webhook_headers
from webhooks.timefmt import format_time, utc_now

if TYPE_CHECKING:
    from webhooks.metrics import Metrics

log = logging.getLogger("webhooks.dispatcher")

# Outcomes written in one transaction at most.
_MAX_OUTCOMES_PER_COMMIT = 256

# Held deliveries made due again by one success; the next batch follows
# when one of these succeeds.
_HELD_RELEASE_BATCH = 100

SignerSource = Callable[[DeliveryRecord], Awaitable[list[Signer]]]


def decide(
    delivery: DeliveryRecord, result: HttpResult, config: DeliveryConfig, now: datetime
) -> tuple[DeliveryStatus, datetime | None, str | None]:
    """Return the delivery's next status, next due time and the attempt's error."""
    status_code = result.status_code
    error = result.error
    if status_code is not None and 200 <= status_code < 300:
        return DeliveryStatus.DELIVERED, None, None
    if status_code == 410:
        return DeliveryStatus.FAILED, None, "410 Gone: the receiver asked for no more attempts"
    if status_code is not None and 300 <= status_code < 400:
        target = result.location or "no Location header"
        error = f"redirect {status_code} to {target} not followed"

    delay_s = next_delay_s(
        delivery.attempts_in_round + 1, config.retry_schedule_s, config.jitter
    )
    if delay_s is None:
        return DeliveryStatus.FAILED, None, error
    if status_code in (429, 503):
        asked_s = parse_retry_after(result.retry_after, now)
        if asked_s is not None:
            delay_s = max(delay_s, min(asked_s, config.retry_after_max_s))
    return DeliveryStatus.PENDING, now + timedelta(seconds=delay_s), error


def _attempt_step(
    delivery: DeliveryRecord,
    result: HttpResult,
    status: DeliveryStatus,
    error: str | None,
    started_at: datetime,
) -> TimelineEntry:
    """Return the attempt as a step of its request's timeline.

    Attempts of the event to the backend are shown to operators only.
    """
    to_client = delivery.client_id is not None
    return TimelineEntry(
        correlation_id=delivery.correlation_id,
        at=started_at,
        step="webhook_attempt" if to_client else "backend_event_attempt",
        audience=Audience.CLIENT if to_client else Audience.OPERATOR,
        detail={
            "delivery_id": delivery.id,
            "attempt": delivery.attempt_count + 1,
            "status_code": result.status_code,
            "error": error,
            "duration_ms": round(result.duration_ms, 1),
            "outcome": "retry" if status is DeliveryStatus.PENDING else status.value,
        },
    )


class Dispatcher:
    def __init__(
        self,
        store: Store,
        session: aiohttp.ClientSession,
        config: DeliveryConfig,
        signers_for: SignerSource,
        *,
        backend_session: aiohttp.ClientSession | None = None,
        metrics: Metrics | None = None,
        handshake: CallbackHandshake | None = None,
    ) -> None:
        """``session`` sends webhooks to clients; ``backend_session``, if
        given, sends the events to the backend URL, which is operator
        configuration and so bypasses the clients' network policy."""
        self._store = store
        self._session = session
        self._backend_session = backend_session or session
        self._config = config
        self._signers_for = signers_for
        self._metrics = metrics
        self._handshake = handshake
        self.owner = ids.new_id("node")
        self._circuits = CircuitBreakers(
            config.circuit_failure_threshold, config.circuit_cooldown_s
        )
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight_by_host: Counter[str] = Counter()
        self._outcomes: asyncio.Queue[AttemptOutcome] = asyncio.Queue()
        # Outcomes queued or being written. Their leases are still held, so
        # they count against max_in_flight: a store that records slower
        # than receivers respond slows the claims instead of letting the
        # queue, and the age of its leases, grow without bound.
        self._unrecorded = 0
        self._loop_task: asyncio.Task[None] | None = None
        self._recorder_task: asyncio.Task[None] | None = None
        store.add_new_work_listener(self.wake)

    @property
    def running(self) -> bool:
        return self._loop_task is not None and not self._loop_task.done()

    def wake(self) -> None:
        self._wake.set()

    def open_circuits(self) -> list[tuple[str, datetime]]:
        """Return the receiver hosts whose circuit is open in this process, and since when."""
        return self._circuits.open_circuits(time.monotonic())

    def open_circuit_count(self) -> int:
        """Count the receiver hosts whose circuit is not closed."""
        return self._circuits.open_count(time.monotonic())

    async def start(self) -> None:
        self._recorder_task = asyncio.create_task(self._record_outcomes())
        self._loop_task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop claiming, let attempts in flight finish within the grace period,
        record their outcomes and release the leases of anything left."""
        self._stopping = True
        self.wake()
        if self._loop_task is not None:
            await self._loop_task
        if self._tasks:
            _, pending = await asyncio.wait(
                self._tasks, timeout=self._config.shutdown_grace_s
            )
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._recorder_task is not None:
            await self._outcomes.join()
            self._recorder_task.cancel()
            await asyncio.gather(self._recorder_task, return_exceptions=True)
        released = await self._store.release_leases(self.owner)
        log.info(
            "dispatcher stopped; released %d leases",
            released,
            extra={"event": "dispatcher_stopped", "leases_released": released},
        )

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                claimed = await self._claim_and_start()
                sleep_s = 0.0 if claimed else await self._idle_time_s()
            except Exception:
                log.exception("claiming deliveries failed", extra={"event": "claim_failed"})
                sleep_s = self._config.poll_interval_s
            if sleep_s > 0:
                try:
                    await asyncio.wait_for(self._wake.wait(), sleep_s)
                except TimeoutError:
                    pass

    async def _idle_time_s(self) -> float:
        due = await self._store.next_due_at()
        poll_s = self._config.poll_interval_s
        if due is None:
            return poll_s
        until_due_s = (due - utc_now()).total_seconds()
        # A due time in the past belongs to a delivery that is leased or held
        # back; new capacity or new work sets the wake event.
        return poll_s if until_due_s <= 0 else min(poll_s, until_due_s)

    def _host_limits(self, now_monotonic: float) -> dict[str, int]:
        limits = {
            host: self._config.max_in_flight_per_host - count
            for host, count in self._in_flight_by_host.items()
        }
        for host, cap in self._circuits.host_limits(now_monotonic).items():
            limits[host] = min(limits.get(host, cap), cap)
        return limits

    async def _claim_and_start(self) -> int:
        free = self._config.max_in_flight - len(self._tasks) - self._unrecorded
        if free <= 0:
            return 0
        now = utc_now()
        lease_s = self._config.attempt_timeout_s + self._config.lease_margin_s
        claimed = await self._store.claim_due_deliveries(
            owner=self.owner,
            now=now,
            lease_until=now + timedelta(seconds=lease_s),
            limit=free,
            per_host_limit=self._config.max_in_flight_per_host,
            host_limits=self._host_limits(time.monotonic()),
        )
        if self._metrics is not None:
            self._metrics.observe_claim(claimed)
        for delivery in claimed:
            self._in_flight_by_host[delivery.host] += 1
            task = asyncio.create_task(self._attempt(delivery))
            self._tasks.add(task)
            task.add_done_callback(self._attempt_done)
        return len(claimed)

    def _attempt_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.wake()

    async def _attempt(self, delivery: DeliveryRecord) -> None:
        try:
            await self._attempt_once(delivery)
        except Exception:
            log.exception(
                "attempt of delivery %s failed unexpectedly; its lease will expire",
                delivery.id,
                extra={"event": "attempt_crashed", "delivery_id": delivery.id},
            )
        finally:
            self._in_flight_by_host[delivery.host] -= 1
            if self._in_flight_by_host[delivery.host] <= 0:
                del self._in_flight_by_host[delivery.host]

    async def _attempt_once(self, delivery: DeliveryRecord) -> None:
        now_monotonic = time.monotonic()
        state = self._circuits.state(delivery.host, now_monotonic)
        if state in (CircuitState.OPEN, CircuitState.PROBING):
            await self._hold_back(delivery)
            return
        self._circuits.start_attempt(delivery.host, now_monotonic)

        if self._handshake is not None and delivery.client_id is not None:
            refusal, newly_allowed = await self._handshake.refusal(
                delivery.client_id, delivery.url
            )
            if refusal is not None:
                await self._hold(delivery, refusal)
                return
            if newly_allowed:
                await self._release_held(delivery)

        signers = await self._signers_for(delivery)
        started_at = utc_now()
        headers = webhook_headers(
            delivery.message_id, int(started_at.timestamp()), delivery.payload, signers
        )
        session = self._backend_session if delivery.client_id is None else self._session
        result = await attempts.post(
            session,
            delivery.url,
            delivery.payload,
            headers,
            connect_timeout_s=self._config.connect_timeout_s,
            total_timeout_s=self._config.attempt_timeout_s,
        )
        finished_at = utc_now()
        if self._metrics is not None:
            self._metrics.observe_attempt(delivery, result, started_at)
        status, next_attempt_at, error = decide(delivery, result, self._config, finished_at)
        held_until = None
        if status is DeliveryStatus.FAILED and await self._receiver_down_throughout(
            delivery, result
        ):
            status = DeliveryStatus.HELD
            held_until = finished_at + timedelta(seconds=self._config.held_window_s)

        if status is DeliveryStatus.DELIVERED:
            self._circuits.record_success(delivery.host)
        else:
            self._circuits.record_failure(delivery.host, time.monotonic())
        self._log_attempt(delivery, result, status, next_attempt_at, error)
        self._unrecorded += 1
        await self._outcomes.put(
            AttemptOutcome(
                attempt=AttemptRecord(
                    delivery_id=delivery.id,
                    number=delivery.attempt_count + 1,
                    started_at=started_at,
                    duration_ms=result.duration_ms,
                    status_code=result.status_code,
                    error=error,
                    response_excerpt=result.response_excerpt,
                ),
                status=status,
                next_attempt_at=next_attempt_at,
                held_until=held_until,
                timeline=_attempt_step(delivery, result, status, error, started_at),
                client_id=delivery.client_id,
                host=delivery.host if delivery.client_id is not None else None,
                correlation_id=delivery.correlation_id,
            )
        )

    async def _receiver_down_throughout(
        self, delivery: DeliveryRecord, result: HttpResult
    ) -> bool:
        """Tell whether no attempt to the receiver succeeded since the delivery began.

        Only a client's delivery whose schedule ran out is held; one that the
        receiver ended with 410 Gone fails as before.
        """
        if (
            delivery.client_id is None
            or self._config.held_window_s <= 0
            or result.status_code == 410
        ):
            return False
        health = await self._store.get_receiver_health(delivery.client_id, delivery.host)
        if health is None or health.last_success_at is None:
            return True
        return health.last_success_at < delivery.created_at

    async def _hold(self, delivery: DeliveryRecord, reason: str) -> None:
        """Hold a delivery without an attempt, for the held window."""
        held_until = utc_now() + timedelta(seconds=self._config.held_window_s)
        await self._store.hold_delivery(delivery.id, self.owner, held_until, reason)

    async def _release_held(self, delivery: DeliveryRecord) -> None:
        assert delivery.client_id is not None
        await self._store.release_held_deliveries(
            delivery.client_id,
            delivery.host,
            utc_now(),
            interval_s=1 / self._config.held_release_per_second,
            limit=_HELD_RELEASE_BATCH,
        )

    async def _hold_back(self, delivery: DeliveryRecord) -> None:
        """Reschedule a delivery for after the cool-down, without an attempt."""
        reopens_at = self._circuits.reopens_at(delivery.host) or time.monotonic()
        delay_s = max(0.0, reopens_at - time.monotonic()) + random.uniform(0, 1)
        await self._store.postpone_delivery(
            delivery.id,
            self.owner,
            utc_now() + timedelta(seconds=delay_s),
            reason=f"circuit open for {delivery.host}",
        )

    def _log_attempt(
        self,
        delivery: DeliveryRecord,
        result: HttpResult,
        status: DeliveryStatus,
        next_attempt_at: datetime | None,
        error: str | None,
    ) -> None:
        fields = {
            "delivery_id": delivery.id,
            "correlation_id": delivery.correlation_id,
            "host": delivery.host,
            "status_code": result.status_code,
            "error": error,
            "duration_ms": round(result.duration_ms, 1),
        }
        outcome = error or f"HTTP {result.status_code}"
        if status is DeliveryStatus.DELIVERED:
            log.debug(
                "delivered %s to %s (%s)",
                delivery.id,
                delivery.host,
                outcome,
                extra={"event": "attempt_succeeded", **fields},
            )
        elif status is DeliveryStatus.PENDING:
            assert next_attempt_at is not None
            log.info(
                "attempt of %s to %s failed (%s); next attempt at %s",
                delivery.id,
                delivery.host,
                outcome,
                format_time(next_attempt_at),
                extra={
                    "event": "attempt_failed",
                    "next_attempt_at": format_time(next_attempt_at),
                    **fields,
                },
            )
        elif status is DeliveryStatus.HELD:
            log.warning(
                "delivery %s to %s held (%s): the receiver has failed since the "
                "delivery began; it goes again when the receiver answers",
                delivery.id,
                delivery.host,
                outcome,
                extra={"event": "delivery_held", **fields},
            )
        else:
            log.error(
                "delivery %s to %s failed for good (%s); it waits for a replay",
                delivery.id,
                delivery.host,
                outcome,
                extra={"event": "delivery_failed", **fields},
            )

    async def _record_outcomes(self) -> None:
        """Write outcomes as they come, many per transaction under load."""
        while True:
            batch = [await self._outcomes.get()]
            while len(batch) < _MAX_OUTCOMES_PER_COMMIT and not self._outcomes.empty():
                batch.append(self._outcomes.get_nowait())
            try:
                await self._store.record_outcomes(
                    self.owner,
                    batch,
                    release_interval_s=1 / self._config.held_release_per_second,
                    release_batch=_HELD_RELEASE_BATCH,
                )
            except Exception:
                log.exception(
                    "recording %d attempt outcomes failed; their deliveries come "
                    "due again when the leases expire",
                    len(batch),
                    extra={"event": "record_failed"},
                )
            finally:
                for _ in batch:
                    self._outcomes.task_done()
                self._unrecorded -= len(batch)
                self.wake()
