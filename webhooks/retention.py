"""The retention sweep: deletes personal data once its lifetime is over.

Each service process runs one sweep every ``retention.sweep_interval``. A
sweep deletes expired scores, clears the metadata and timeline of old
requests, drops idempotency keys past ``scores.idempotency_window``, and
fails held deliveries past their ``held_until``. It works in store
transactions of at most ``retention.sweep_batch`` rows per kind, and
repeats them until less than a full batch is left. Processes that share a
PostgreSQL store sweep side by side, each taking rows the others have not
locked.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from store import Store
from store.scrub import RETENTION_KINDS
from webhooks.config import RetentionConfig
from webhooks.timefmt import utc_now

if TYPE_CHECKING:
    from webhooks.metrics import Metrics

log = logging.getLogger("webhooks.retention")

# The kinds of rows a sweep counts: those of Store.delete_expired, and the
# held deliveries that it turns into failed ones.
HELD_FAILED = "held_failed"
SWEEP_KINDS = (*RETENTION_KINDS, HELD_FAILED)

# How long ``stop`` waits for the batch in progress before it cancels it.
_STOP_TIMEOUT_S = 10.0


class RetentionSweep:
    """Runs the sweep in a background task between ``start`` and ``stop``."""

    def __init__(
        self,
        store: Store,
        config: RetentionConfig,
        *,
        idempotency_window_s: float,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._config = config
        self._idempotency_window = timedelta(seconds=idempotency_window_s)
        self._metrics = metrics
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def start(self) -> None:
        """Sweep now, and then every ``sweep_interval`` until ``stop``."""
        self._task = asyncio.create_task(self._run(), name="retention-sweep")

    async def stop(self) -> None:
        """Let the batch in progress finish, and end the task.

        A store transaction is not cancelled midway, because a cancelled
        ``BEGIN`` could leave the SQLite writer connection inside a
        transaction that is never committed. Only a batch that takes longer
        than ``_STOP_TIMEOUT_S`` is cancelled.
        """
        if self._task is None:
            return
        self._stopping.set()
        done, _ = await asyncio.wait({self._task}, timeout=_STOP_TIMEOUT_S)
        if not done:
            log.warning(
                "a retention batch ran longer than %g s at shutdown; cancelling it",
                _STOP_TIMEOUT_S,
                extra={"event": "retention_stop_timed_out"},
            )
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._task = None

    async def sweep(self, now: datetime) -> dict[str, int]:
        """Delete everything whose lifetime ended before ``now``; return counts by kind.

        The counters in the metrics move after each batch, so the work of a
        sweep that fails part way through is still counted. After ``stop``,
        the sweep ends after its current batch.
        """
        counts = dict.fromkeys(SWEEP_KINDS, 0)
        batch = self._config.sweep_batch
        while True:
            found = await self._store.delete_expired(
                scores_before=now
                - timedelta(seconds=self._config.scores_after_expiry_s),
                requests_before=now
                - timedelta(seconds=self._config.requests_after_completion_s),
                idempotency_before=now - self._idempotency_window,
                limit=batch,
            )
            self._count(counts, found)
            if max(found.values(), default=0) < batch or self._stopping.is_set():
                break
        while not self._stopping.is_set():
            failed = await self._store.fail_expired_held(now, batch)
            self._count(counts, {HELD_FAILED: failed})
            if failed < batch:
                break
        return counts

    def _count(self, counts: dict[str, int], found: dict[str, int]) -> None:
        for kind, count in found.items():
            counts[kind] += count
            if self._metrics is not None and count:
                self._metrics.retention_deleted.labels(kind).inc(count)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            await self._sweep_and_log()
            try:
                await asyncio.wait_for(
                    self._stopping.wait(), self._config.sweep_interval_s
                )
            except TimeoutError:
                pass  # time for the next sweep

    async def _sweep_and_log(self) -> None:
        started = time.monotonic()
        try:
            counts = await self.sweep(utc_now())
        except Exception:  # the task goes on, and the next sweep tries again
            if self._metrics is not None:
                self._metrics.retention_sweep_failures.inc()
            log.exception(
                "retention sweep failed; the next one starts in %g s",
                self._config.sweep_interval_s,
                extra={"event": "retention_sweep_failed"},
            )
            return
        duration_ms = (time.monotonic() - started) * 1000
        if self._metrics is not None:
            self._metrics.retention_last_sweep.set(time.time())
        log.info(
            "retention sweep: %d scores deleted, metadata of %d requests cleared, "
            "%d timeline entries and %d idempotency keys deleted, %d held "
            "deliveries failed, in %.0f ms",
            counts["score"],
            counts["request_metadata"],
            counts["timeline_entry"],
            counts["idempotency_key"],
            counts[HELD_FAILED],
            duration_ms,
            extra={
                "event": "retention_swept",
                "counts": counts,
                "duration_ms": round(duration_ms, 1),
            },
        )
