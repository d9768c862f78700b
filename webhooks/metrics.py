"""Prometheus metrics of one application, kept in a registry of its own.

Each application owns its ``CollectorRegistry``, so several applications in
one process (as in the tests) count separately. No label carries an
unbounded value: routes are path templates, and IDs, URLs and hosts never
appear.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from store import Store
from store.records import DeliveryRecord
from webhooks import events
from webhooks.attempts import HttpResult, outcome_class
from webhooks.retention import SWEEP_KINDS
from webhooks.state import STATE
from webhooks.timefmt import utc_now

log = logging.getLogger("webhooks.metrics")

ATTEMPT_OUTCOMES = (
    "success",
    "http_error",
    "timeout",
    "connection_error",
    "policy_rejected",
)
DELIVERY_STATES = ("pending", "in_flight", "held", "failed")
# aiohttp also accepts WebDAV and other methods that llhttp knows; they
# share the label "other".
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_HTTP_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_ATTEMPT_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_FIRST_ATTEMPT_BUCKETS_S = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0)

# The delivery counts read every pending and failed row, so they are read
# at most this often, and a scrape waits at most this long for them.
COUNT_INTERVAL_S = 5.0
COUNT_TIMEOUT_S = 1.0


class Metrics:
    """The metrics of one application and the hooks that update them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry

        self.http_requests = Counter(
            "webhooks_http_requests_total",
            "HTTP requests served, by method, route template and status code.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.http_duration = Histogram(
            "webhooks_http_request_duration_seconds",
            "Time to serve an HTTP request, by method and route template.",
            ["method", "route"],
            buckets=_HTTP_BUCKETS_S,
            registry=registry,
        )

        self.attempts = Counter(
            "webhooks_delivery_attempts_total",
            "Delivery attempts by event type and outcome.",
            ["event_type", "outcome"],
            registry=registry,
        )
        self.attempt_duration = Histogram(
            "webhooks_delivery_attempt_duration_seconds",
            "Duration of delivery attempts, from connecting to the response excerpt.",
            buckets=_ATTEMPT_BUCKETS_S,
            registry=registry,
        )
        self.first_attempt_delay = Histogram(
            "webhooks_delivery_first_attempt_delay_seconds",
            "Time from the creation of a delivery to the start of its first attempt.",
            ["event_type"],
            buckets=_FIRST_ATTEMPT_BUCKETS_S,
            registry=registry,
        )

        self.lease_expiries = Counter(
            "webhooks_lease_expiries_total",
            "Deliveries claimed after the lease of their previous holder had expired.",
            registry=registry,
        )
        self.leases_recovered = Counter(
            "webhooks_leases_recovered_total",
            "Leases left by a previous run and released at start (SQLite store).",
            registry=registry,
        )

        self.deliveries = Gauge(
            "webhooks_deliveries",
            "Deliveries by state as last counted in the store.",
            ["state"],
            registry=registry,
        )
        self.deliveries_counted = Gauge(
            "webhooks_deliveries_counted_timestamp_seconds",
            "Unix time at which webhooks_deliveries was last counted.",
            registry=registry,
        )
        self.delivery_count_failures = Counter(
            "webhooks_delivery_count_failures_total",
            "Counts of deliveries in the store that failed or timed out.",
            registry=registry,
        )

        self.circuits_open = Gauge(
            "webhooks_circuit_breakers_open",
            "Receiver hosts whose circuit breaker is open or half-open.",
            registry=registry,
        )

        self.console_login_failures = Counter(
            "webhooks_console_login_failures_total",
            "Console logins rejected because the admin token was wrong.",
            registry=registry,
        )

        self.retention_deleted = Counter(
            "webhooks_retention_deleted_total",
            "Rows deleted, scrubbed or failed by the retention sweep, by kind.",
            ["kind"],
            registry=registry,
        )
        self.retention_last_sweep = Gauge(
            "webhooks_retention_last_sweep_timestamp_seconds",
            "Unix time at which the last retention sweep of this process completed.",
            registry=registry,
        )
        self.retention_sweep_failures = Counter(
            "webhooks_retention_sweep_failures_total",
            "Retention sweeps that stopped with an error.",
            registry=registry,
        )
        self.requests_unfetched = Gauge(
            "webhooks_requests_delivered_not_fetched",
            "Requests whose webhook was accepted longer than "
            "scores.fetch_expected_within ago and whose result was never read, "
            "as last counted in the store.",
            registry=registry,
        )

        self._initialise_labels()
        self._counted_at_monotonic: float | None = None
        self._count_lock = asyncio.Lock()

    def _initialise_labels(self) -> None:
        """Create every label value of the bounded series, so each shows 0 at first."""
        for event_type in events.EVENT_TYPES:
            self.first_attempt_delay.labels(event_type)
            for outcome in ATTEMPT_OUTCOMES:
                self.attempts.labels(event_type, outcome)
        for state in DELIVERY_STATES:
            self.deliveries.labels(state)
        for kind in SWEEP_KINDS:
            self.retention_deleted.labels(kind)

    def watch_circuits(self, open_count: Callable[[], int]) -> None:
        """Read the number of open circuits from ``open_count`` at each scrape."""
        self.circuits_open.set_function(open_count)

    def observe_claim(self, claimed: Sequence[DeliveryRecord]) -> None:
        expired = sum(1 for delivery in claimed if delivery.took_over_expired_lease)
        if expired:
            self.lease_expiries.inc(expired)

    def observe_attempt(
        self, delivery: DeliveryRecord, result: HttpResult, started_at: datetime
    ) -> None:
        """Count an attempt by outcome and time it.

        A first attempt also records its delay since the delivery was created.
        """
        self.attempts.labels(delivery.event_type, outcome_class(result)).inc()
        self.attempt_duration.observe(result.duration_ms / 1000)
        if delivery.attempt_count == 0:
            delay_s = (started_at - delivery.created_at).total_seconds()
            self.first_attempt_delay.labels(delivery.event_type).observe(
                max(0.0, delay_s)
            )

    async def count_deliveries(
        self, store: Store, fetch_expected_within_s: float | None = None
    ) -> None:
        """Refresh the delivery gauges unless they were counted recently.

        With ``fetch_expected_within_s``, the same refresh counts the
        requests delivered longer ago than that and never fetched.

        A count that fails or times out keeps the previous values, which
        the timestamp gauge shows as stale.
        """
        async with self._count_lock:
            counted_at = self._counted_at_monotonic
            if (
                counted_at is not None
                and time.monotonic() - counted_at < COUNT_INTERVAL_S
            ):
                return
            self._counted_at_monotonic = time.monotonic()
            try:
                async with asyncio.timeout(COUNT_TIMEOUT_S):
                    now = utc_now()
                    counts = await store.count_deliveries_by_state(now)
                    unfetched = None
                    if fetch_expected_within_s is not None:
                        unfetched = await store.count_unfetched_requests(
                            now - timedelta(seconds=fetch_expected_within_s)
                        )
            except Exception as exc:  # a failing store must not break the scrape
                self.delivery_count_failures.inc()
                log.warning(
                    "counting deliveries for the metrics failed: %s",
                    _describe(exc),
                    extra={"event": "delivery_count_failed", "error": _describe(exc)},
                )
                return
        for state in DELIVERY_STATES:
            self.deliveries.labels(state).set(counts.get(state, 0))
        if unfetched is not None:
            self.requests_unfetched.set(unfetched)
        self.deliveries_counted.set(time.time())

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return f"timed out after {COUNT_TIMEOUT_S:g} s"
    return f"{type(error).__name__}: {error}"


METRICS = web.AppKey("metrics", Metrics)


def route_label(request: web.Request) -> str:
    """Return the path template of the matched route, or "unmatched"."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def metrics_middleware(
    request: web.Request,
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> web.StreamResponse:
    """Count and time every request by method, route template and status code.

    A request whose client went away before the response is counted with
    status 499, the code nginx uses for a closed request.
    """
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as error:
        status = error.status
        raise
    except asyncio.CancelledError:
        status = 499
        raise
    finally:
        metrics = request.app[METRICS]
        method = request.method if request.method in _METHODS else "other"
        route = route_label(request)
        metrics.http_requests.labels(method, route, str(status)).inc()
        metrics.http_duration.labels(method, route).observe(
            time.perf_counter() - started
        )


async def serve_metrics(request: web.Request) -> web.Response:
    """Return the metrics in the Prometheus text format 0.0.4."""
    metrics = request.app[METRICS]
    state = request.app.get(STATE)
    if state is not None:
        await metrics.count_deliveries(
            state.store, state.config.scores.fetch_expected_within_s
        )
    return web.Response(
        body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4}
    )
