"""GET /metrics: the Prometheus text format, after real flows on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Service, make_config, wait_for
from store import open_store
from store.records import NewDelivery
from webhooks import ids
from webhooks.app import create_app
from webhooks.attempts import HttpResult, describe_error, outcome_class
from webhooks.metrics import ATTEMPT_OUTCOMES, Metrics
from webhooks.netpolicy import PolicyViolation
from webhooks.timefmt import utc_now


async def _scrape(service: Service) -> str:
    response = await service.http.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return await response.text()


def _samples(text: str) -> list[Any]:
    return [
        s for family in text_string_to_metric_families(text) for s in family.samples
    ]


def _value(text: str, name: str, **labels: str) -> float:
    """Return the value of the sample ``name`` whose labels include ``labels``."""
    for sample in _samples(text):
        if sample.name == name and all(
            sample.labels.get(k) == v for k, v in labels.items()
        ):
            return sample.value
    raise AssertionError(f"no sample {name} with {labels}")


async def _submit_ready(
    service: Service, client: Any, customer_id: str, url: str
) -> None:
    response = await service.submit(client, customer_id=customer_id, callback_url=url)
    assert response.status == 202, await response.text()
    correlation_id = (await response.json())["correlation_id"]
    response = await service.post_result(correlation_id, outcome="ready", score=700)
    assert response.status == 200, await response.text()


async def test_metrics_parse_and_name_every_family(service: Service) -> None:
    text = await _scrape(service)

    names = {family.name for family in text_string_to_metric_families(text)}
    for name in (
        "webhooks_http_requests",
        "webhooks_http_request_duration_seconds",
        "webhooks_delivery_attempts",
        "webhooks_delivery_attempt_duration_seconds",
        "webhooks_delivery_first_attempt_delay_seconds",
        "webhooks_lease_expiries",
        "webhooks_leases_recovered",
        "webhooks_deliveries",
        "webhooks_deliveries_counted_timestamp_seconds",
        "webhooks_delivery_count_failures",
        "webhooks_circuit_breakers_open",
    ):
        assert name in names
    for outcome in ATTEMPT_OUTCOMES:
        assert _value(text, "webhooks_delivery_attempts_total", outcome=outcome) == 0


async def test_attempt_outcomes_after_failing_and_good_receiver(
    service: Service, make_receiver: Any
) -> None:
    client = await service.new_client()
    failing = await make_receiver(default_status=500)
    good = await make_receiver(default_status=200)

    await _submit_ready(service, client, "cust-bad", failing.url())
    await _submit_ready(service, client, "cust-good", good.url())
    # retry_schedule_s has 3 delays, so 4 attempts fail the delivery.
    await wait_for(lambda: len(failing.received) == 4 and len(good.received) == 1)
    text = await _scrape(service)

    ready = {"event_type": "score.ready"}
    assert (
        _value(text, "webhooks_delivery_attempts_total", outcome="http_error", **ready)
        == 4
    )
    assert (
        _value(text, "webhooks_delivery_attempts_total", outcome="success", **ready)
        == 1
    )
    assert (
        _value(text, "webhooks_delivery_attempts_total", outcome="timeout", **ready)
        == 0
    )
    requested = {"event_type": "score.requested", "outcome": "success"}
    assert _value(text, "webhooks_delivery_attempts_total", **requested) == 2
    assert _value(text, "webhooks_delivery_attempt_duration_seconds_count") == 7
    delay_count = "webhooks_delivery_first_attempt_delay_seconds_count"
    assert _value(text, delay_count, **ready) == 2
    assert _value(text, delay_count, event_type="score.requested") == 2


async def test_delivery_gauges_count_failed(
    service: Service, make_receiver: Any
) -> None:
    client = await service.new_client()
    failing = await make_receiver(default_status=500)
    await _submit_ready(service, client, "cust-bad", failing.url())
    await wait_for(lambda: len(failing.received) == 4)

    async def counted_failed() -> bool:
        # The gauges are counted at most every 5 s, so this waits for a fresh count.
        text = await _scrape(service)
        return _value(text, "webhooks_deliveries", state="failed") == 1

    await wait_for(counted_failed, timeout_s=10)
    text = await _scrape(service)
    assert _value(text, "webhooks_deliveries", state="pending") == 0
    assert _value(text, "webhooks_deliveries", state="in_flight") == 0
    assert (
        _value(text, "webhooks_deliveries_counted_timestamp_seconds") > time.time() - 30
    )


async def test_http_routes_labelled_by_template(service: Service) -> None:
    client = await service.new_client()
    correlation_id = ids.correlation_id()
    response = await service.http.get(
        f"/v1/score-requests/{correlation_id}", headers=service.client_headers(client)
    )
    assert response.status == 404
    response = await service.http.get("/no/such/path/x-secret-id")
    assert response.status == 404

    text = await _scrape(service)

    route = "/v1/score-requests/{correlation_id}"
    labels = {"method": "GET", "route": route, "status": "404"}
    assert _value(text, "webhooks_http_requests_total", **labels) == 1
    assert (
        _value(text, "webhooks_http_request_duration_seconds_count", route=route) == 1
    )
    unmatched = {"route": "unmatched", "status": "404"}
    assert _value(text, "webhooks_http_requests_total", **unmatched) == 1
    assert correlation_id not in text
    assert "x-secret-id" not in text


async def test_unknown_method_labelled_other(service: Service) -> None:
    response = await service.http.request("PROPFIND", "/healthz")
    assert response.status == 405

    text = await _scrape(service)

    assert (
        _value(text, "webhooks_http_requests_total", method="other", status="405") == 1
    )
    assert "PROPFIND" not in text


async def test_each_app_counts_alone(make_service: Any, tmp_path: Path) -> None:
    first = await make_service(make_config(tmp_path / "first"))
    second = await make_service(make_config(tmp_path / "second"))
    for _ in range(3):
        assert (await first.http.get("/healthz")).status == 200

    first_text = await _scrape(first)
    second_text = await _scrape(second)

    healthz = {"route": "/healthz", "status": "200"}
    assert _value(first_text, "webhooks_http_requests_total", **healthz) == 3
    with pytest.raises(AssertionError):
        _value(second_text, "webhooks_http_requests_total", **healthz)


async def test_open_circuit_counted(
    make_service: Any, make_receiver: Any, backend: Any, tmp_path: Path
) -> None:
    config = make_config(tmp_path, delivery={"circuit_failure_threshold": 1})
    config = replace(config, backend=replace(config.backend, url=backend.url()))
    service = await make_service(config)
    client = await service.new_client()
    failing = await make_receiver(default_status=500)
    await _submit_ready(service, client, "cust-bad", failing.url())
    await wait_for(lambda: len(failing.received) == 1)

    async def circuit_open() -> bool:
        text = await _scrape(service)
        return _value(text, "webhooks_circuit_breakers_open") == 1

    await wait_for(circuit_open)


# A PostgreSQL store is shared by several processes, so a starting process
# leaves other leases to expire instead of taking them back.
@pytest.mark.sqlite_only
async def test_leases_left_by_dead_process_counted(
    make_service: Any, tmp_path: Path
) -> None:
    config = make_config(tmp_path)
    if not config.store.url.startswith("sqlite:"):
        pytest.skip("only the SQLite store takes back every lease at start")
    store = await open_store(config.store.url)
    try:
        async with store.transaction() as transaction:
            await transaction.insert_delivery(_backend_delivery())
        # A claim as if made when the delivery is due, by a process that died.
        due = utc_now() + timedelta(hours=2)
        claimed = await store.claim_due_deliveries(
            owner="dead-node",
            now=due,
            lease_until=due + timedelta(hours=1),
            limit=1,
            per_host_limit=1,
            host_limits={},
        )
        assert len(claimed) == 1
    finally:
        await store.close()

    service = await make_service(config)
    text = await _scrape(service)

    assert _value(text, "webhooks_leases_recovered_total") == 1


def _backend_delivery() -> NewDelivery:
    return NewDelivery(
        id=ids.delivery_id(),
        message_id=ids.message_id(),
        client_id=None,
        correlation_id=ids.correlation_id(),
        event_type="score.requested",
        # Port 9 (discard) on loopback: nothing listens, so attempts fail fast.
        url="http://127.0.0.1:9/backend",
        host="127.0.0.1:9",
        payload=b"{}",
        next_attempt_at=utc_now() + timedelta(hours=1),
    )


class SlowCountStore:
    """A real store whose delivery count never returns."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def count_deliveries_by_state(self, now: Any) -> dict[str, int]:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")


async def test_slow_store_count_keeps_scrape_bounded(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    config = make_config(tmp_path)
    store = await open_store(config.store.url)
    try:
        http = await aiohttp_client(create_app(config, store=SlowCountStore(store)))
        started = time.monotonic()
        response = await http.get("/metrics")
        elapsed_s = time.monotonic() - started
        text = await response.text()
        await http.close()
    finally:
        await store.close()

    assert response.status == 200
    assert elapsed_s < 3
    assert _value(text, "webhooks_delivery_count_failures_total") == 1
    assert _value(text, "webhooks_deliveries_counted_timestamp_seconds") == 0


def _result(status_code: int | None = None, error: str | None = None) -> HttpResult:
    return HttpResult(
        status_code=status_code,
        error=error,
        response_excerpt=None,
        retry_after=None,
        location=None,
        duration_ms=1.0,
    )


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        pytest.param(aiohttp.ConnectionTimeoutError(), "timeout", id="connect-timeout"),
        pytest.param(TimeoutError(), "timeout", id="total-timeout"),
        pytest.param(
            PolicyViolation("10.0.0.1 is private"), "policy_rejected", id="policy"
        ),
        pytest.param(
            aiohttp.ServerDisconnectedError(), "connection_error", id="disconnect"
        ),
        pytest.param(OSError("network unreachable"), "connection_error", id="os-error"),
    ],
)
def test_outcome_class_of_errors(error: BaseException, expected: str) -> None:
    description = describe_error(error, connect_timeout_s=1, total_timeout_s=2)

    assert outcome_class(_result(error=description)) == expected


@pytest.mark.parametrize(
    ("status_code", "expected"),
    [
        (200, "success"),
        (204, "success"),
        (302, "http_error"),
        (410, "http_error"),
        (503, "http_error"),
    ],
)
def test_outcome_class_of_status(status_code: int, expected: str) -> None:
    assert outcome_class(_result(status_code=status_code)) == expected


def test_lease_expiry_counted_from_claim() -> None:
    metrics = Metrics()
    delivery = _claimed_record(took_over_expired_lease=True)

    metrics.observe_claim([delivery, _claimed_record(took_over_expired_lease=False)])

    assert metrics.registry.get_sample_value("webhooks_lease_expiries_total") == 1


def _claimed_record(*, took_over_expired_lease: bool) -> Any:
    from store.records import DeliveryRecord, DeliveryStatus

    now = utc_now()
    return DeliveryRecord(
        id=ids.delivery_id(),
        message_id=ids.message_id(),
        client_id=None,
        correlation_id=ids.correlation_id(),
        event_type="score.requested",
        url="http://127.0.0.1:9/backend",
        host="127.0.0.1:9",
        payload=b"{}",
        status=DeliveryStatus.PENDING,
        attempt_count=0,
        attempts_in_round=0,
        next_attempt_at=now,
        lease_owner="node",
        lease_expires_at=now,
        last_error=None,
        last_status_code=None,
        created_at=now,
        updated_at=now,
        took_over_expired_lease=took_over_expired_lease,
    )
