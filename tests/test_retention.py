"""The retention sweep on a real store, with lifetimes of a fraction of a second."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from conftest import (
    ADMIN_TOKEN,
    BACKEND_TOKEN,
    Receiver,
    Service,
    config_with_backend,
    count_rows,
    make_config,
    wait_for,
)
from store import Store, open_store
from store.records import (
    Audience,
    ComputationRecord,
    IdempotencyRecord,
    RequestStatus,
    ScoreRecord,
    ScoreRequestRecord,
    TimelineEntry,
)
from webhooks import credentials, ids
from webhooks.app import create_app
from webhooks.clients import create_client
from webhooks.config import ConfigError, RetentionConfig, load_config
from webhooks.credentials import SecretBox
from webhooks.retention import RetentionSweep
from webhooks.timefmt import utc_now

# Lifetimes short enough for a test, and a sweep several times a second.
SHORT_RETENTION = {
    "scores_after_expiry_s": 0.3,
    "requests_after_completion_s": 0.3,
    "sweep_interval_s": 0.1,
}


def _value(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(
                sample.labels.get(key) == value for key, value in labels.items()
            ):
                return sample.value
    raise AssertionError(f"no sample {name} with {labels}")


async def _scrape(service: Service) -> str:
    response = await service.http.get("/metrics")
    assert response.status == 200
    return await response.text()


async def _ready(
    service: Service, client: Any, customer_id: str, callback_url: str
) -> str:
    """Submit a request with metadata and complete it; return its correlation ID."""
    response = await service.submit(
        client,
        customer_id=customer_id,
        callback_url=callback_url,
        metadata={"loan": "L-77"},
    )
    assert response.status == 202, await response.text()
    correlation_id = (await response.json())["correlation_id"]
    response = await service.post_result(correlation_id, outcome="ready", score=712)
    assert response.status == 200, await response.text()
    return correlation_id


async def test_sweep_deletes_score_metadata_and_timeline(
    make_service: Any, make_receiver: Any, backend: Receiver, tmp_path: Path
) -> None:
    config = config_with_backend(
        tmp_path,
        backend,
        scores={"default_validity_s": 0.2},
        retention=SHORT_RETENTION,
    )
    service = await make_service(config)
    client = await service.new_client()
    receiver = await make_receiver(secret=client.signing_secret)
    correlation_id = await _ready(service, client, "cust-1", receiver.url())
    await wait_for(lambda: len(receiver.received) == 1)
    store = service.state.store

    async def scrubbed() -> bool:
        record = await store.get_score_request(correlation_id)
        timeline = await store.list_timeline(correlation_id, None)
        return record.score is None and record.metadata is None and timeline == []

    await wait_for(scrubbed)

    assert count_rows(config, "scores") == 0
    response = await service.get_request(client, correlation_id)
    assert response.status == 200
    body = await response.json()
    assert body["status"] == "ready"
    assert "score" not in body
    assert body["metadata"] is None
    assert body["customer_id"] == "cust-1"
    response = await service.get_customer_score(client, "cust-1")
    assert response.status == 404
    text = await _scrape(service)
    for kind in ("score", "request_metadata", "timeline_entry"):
        assert _value(text, "webhooks_retention_deleted_total", kind=kind) >= 1, kind
    assert _value(text, "webhooks_retention_last_sweep_timestamp_seconds") > 0
    assert _value(text, "webhooks_retention_sweep_failures_total") == 0


async def test_new_request_after_score_deleted(
    make_service: Any, make_receiver: Any, backend: Receiver, tmp_path: Path
) -> None:
    config = config_with_backend(
        tmp_path,
        backend,
        scores={"default_validity_s": 0.2},
        retention=SHORT_RETENTION,
    )
    service = await make_service(config)
    client = await service.new_client()
    receiver = await make_receiver(secret=client.signing_secret)
    await _ready(service, client, "cust-1", receiver.url())
    await wait_for(lambda: count_rows(config, "scores") == 0)

    # _ready checks for 202: the deleted score is not reused, so a new
    # computation starts.
    second = await _ready(service, client, "cust-1", receiver.url())

    await wait_for(lambda: len(receiver.received) == 2)
    assert receiver.invalid == []
    assert receiver.received[1].event["data"]["correlation_id"] == second


async def test_open_delivery_keeps_request_data(
    make_service: Any, make_receiver: Any, backend: Receiver, tmp_path: Path
) -> None:
    """A delivery in flight, and then pending a retry, keeps what its request needs.

    The retry arrives with the body of the first attempt; after it, the
    sweep deletes the data.
    """
    config = config_with_backend(
        tmp_path,
        backend,
        scores={"default_validity_s": 0.1},
        retention=SHORT_RETENTION,
        delivery={"retry_schedule_s": (1.0,), "attempt_timeout_s": 5.0},
    )
    service = await make_service(config)
    client = await service.new_client()
    in_flight = asyncio.Event()
    release = asyncio.Event()

    async def slow_then_fail_then_accept(request: web.Request) -> web.Response:
        if len(receiver.received) == 1:
            in_flight.set()
            await release.wait()
            return web.Response(status=500)
        return web.Response(status=200)

    receiver = await make_receiver(
        secret=client.signing_secret, handler=slow_then_fail_then_accept
    )
    correlation_id = await _ready(service, client, "cust-1", receiver.url())
    store = service.state.store

    async def data_kept() -> None:
        record = await store.get_score_request(correlation_id)
        assert record.score is not None
        assert record.metadata == '{"loan": "L-77"}'
        assert await store.list_timeline(correlation_id, None) != []

    await asyncio.wait_for(in_flight.wait(), timeout=5)
    await asyncio.sleep(0.6)  # past every lifetime, several sweeps
    await data_kept()

    release.set()
    await wait_for(lambda: count_rows(config, "attempts") == 1)
    await asyncio.sleep(0.5)  # the retry is due after 1 s
    assert len(receiver.received) == 1
    await data_kept()

    await wait_for(lambda: len(receiver.received) == 2)
    assert receiver.received[1].body == receiver.received[0].body
    assert receiver.invalid == []

    async def scrubbed() -> bool:
        record = await store.get_score_request(correlation_id)
        return record.score is None and record.metadata is None

    await wait_for(scrubbed)


async def test_held_delivery_past_window_fails(
    make_service: Any, make_receiver: Any, backend: Receiver, tmp_path: Path
) -> None:
    config = config_with_backend(
        tmp_path,
        backend,
        retention={"sweep_interval_s": 0.1},
        delivery={
            "retry_schedule_s": (0.05,),
            "held_window_s": 0.5,
            "circuit_failure_threshold": 1000,
        },
    )
    service = await make_service(config)
    client = await service.new_client()
    receiver = await make_receiver(secret=client.signing_secret, default_status=503)
    await _ready(service, client, "cust-1", receiver.url())

    async def status_is(expected: str) -> bool:
        deliveries = await service.list_deliveries(client_id=client.record.id)
        return [delivery["status"] for delivery in deliveries] == [expected]

    await wait_for(lambda: status_is("held"))
    await wait_for(lambda: status_is("failed"))

    text = await _scrape(service)
    assert _value(text, "webhooks_retention_deleted_total", kind="held_failed") == 1


async def test_idempotency_key_deleted_after_window(
    make_service: Any, backend: Receiver, make_receiver: Any, tmp_path: Path
) -> None:
    # Below the minimum that a config file allows, to keep the test short.
    config = config_with_backend(
        tmp_path,
        backend,
        scores={"idempotency_window_s": 0.3},
        retention={"sweep_interval_s": 0.1},
    )
    service = await make_service(config)
    client = await service.new_client()
    receiver = await make_receiver(secret=client.signing_secret)
    response = await service.submit(
        client, customer_id="cust-1", callback_url=receiver.url(), idempotency_key="k-1"
    )
    assert response.status == 202
    assert count_rows(config, "idempotency_keys") == 1

    await wait_for(lambda: count_rows(config, "idempotency_keys") == 0)

    text = await _scrape(service)
    assert _value(text, "webhooks_retention_deleted_total", kind="idempotency_key") == 1


async def test_unfetched_gauge_counts_unread_results(
    make_service: Any, make_receiver: Any, backend: Receiver, tmp_path: Path
) -> None:
    config = config_with_backend(
        tmp_path, backend, scores={"fetch_expected_within_s": 0.1}
    )
    service = await make_service(config)
    client = await service.new_client()
    receiver = await make_receiver(secret=client.signing_secret)
    unread = await _ready(service, client, "cust-1", receiver.url())
    read = await _ready(service, client, "cust-2", receiver.url())
    store = service.state.store

    async def both_delivered() -> bool:
        records = [await store.get_score_request(cid) for cid in (unread, read)]
        return all(record.delivered_at is not None for record in records)

    await wait_for(both_delivered)
    assert (await service.get_request(client, read)).status == 200
    await asyncio.sleep(0.2)

    text = await _scrape(service)

    assert _value(text, "webhooks_requests_delivered_not_fetched") == 1


class FailingSweepStore:
    """A real store whose retention queries fail."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.sweeps = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def delete_expired(self, **kwargs: Any) -> dict[str, int]:
        self.sweeps += 1
        raise OSError("disk I/O error")


@pytest.fixture
async def plain_store(store_url: str) -> AsyncIterator[Store]:
    store = await open_store(store_url)
    try:
        yield store
    finally:
        await store.close()


async def test_failed_sweep_logged_and_retried(
    aiohttp_client: Any,
    tmp_path: Path,
    plain_store: Store,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = make_config(tmp_path, retention={"sweep_interval_s": 0.05})
    failing = FailingSweepStore(plain_store)

    with caplog.at_level(logging.ERROR, logger="webhooks.retention"):
        http = await aiohttp_client(create_app(config, store=failing))
        await wait_for(lambda: failing.sweeps >= 2)
        text = await (await http.get("/metrics")).text()
        await http.close()

    failures = [
        record
        for record in caplog.records
        if getattr(record, "event", None) == "retention_sweep_failed"
    ]
    assert len(failures) >= 2
    assert failures[0].exc_info is not None
    assert "disk I/O error" in str(failures[0].exc_info[1])
    assert _value(text, "webhooks_retention_sweep_failures_total") >= 2
    assert _value(text, "webhooks_retention_last_sweep_timestamp_seconds") == 0


async def _insert_expired(store: Store, client_id: str, count: int) -> list[str]:
    """Insert completed requests with expired scores; return their correlation IDs."""
    long_ago = utc_now() - timedelta(days=400)
    correlation_ids = []
    for number in range(count):
        computation = ComputationRecord(
            id=ids.computation_id(),
            client_id=client_id,
            customer_id=f"cust-{number}",
            status=RequestStatus.READY,
            created_at=long_ago,
            completed_at=long_ago,
        )
        score = ScoreRecord(
            id=ids.new_id("scr"),
            client_id=client_id,
            customer_id=computation.customer_id,
            computation_id=computation.id,
            value=700,
            computed_at=long_ago,
            valid_until=long_ago + timedelta(days=1),
        )
        request = ScoreRequestRecord(
            correlation_id=ids.correlation_id(),
            client_id=client_id,
            customer_id=computation.customer_id,
            callback_url="https://client.example/hooks",
            metadata='{"loan": "L-1"}',
            status=RequestStatus.READY,
            created_at=long_ago,
            completed_at=long_ago,
            computation_id=computation.id,
            score=score,
        )
        async with store.transaction() as transaction:
            await transaction.insert_computation(computation)
            await transaction.insert_score(score)
            await transaction.insert_score_request(request)
            await transaction.add_timeline_entries(
                [
                    TimelineEntry(
                        correlation_id=request.correlation_id,
                        at=long_ago,
                        step="submitted",
                        audience=Audience.CLIENT,
                    )
                ]
            )
            await transaction.insert_idempotency_key(
                IdempotencyRecord(
                    client_id=client_id,
                    key=f"key-{number}",
                    request_fingerprint="0" * 64,
                    correlation_id=request.correlation_id,
                    status_code=202,
                    created_at=long_ago,
                )
            )
        correlation_ids.append(request.correlation_id)
    return correlation_ids


async def test_store_deletes_in_batches(plain_store: Store) -> None:
    """delete_expired stops at the limit, and one sweep repeats it until done."""
    client_id = await _client_in(plain_store)
    await _insert_expired(plain_store, client_id, 5)
    now = utc_now()
    cutoffs = {
        "scores_before": now,
        "requests_before": now,
        "idempotency_before": now,
    }

    first = await plain_store.delete_expired(**cutoffs, limit=2)

    assert first == {
        "score": 2,
        "request_metadata": 2,
        "timeline_entry": 2,
        "idempotency_key": 2,
    }
    sweep = RetentionSweep(
        plain_store, RetentionConfig(sweep_batch=2), idempotency_window_s=86400.0
    )
    counts = await sweep.sweep(now + timedelta(days=200))
    assert counts == {
        "score": 3,
        "request_metadata": 3,
        "timeline_entry": 3,
        "idempotency_key": 3,
        "held_failed": 0,
    }
    again = await sweep.sweep(now + timedelta(days=200))
    assert set(again.values()) == {0}


async def test_store_keeps_recent_rows(plain_store: Store) -> None:
    client_id = await _client_in(plain_store)
    [correlation_id] = await _insert_expired(plain_store, client_id, 1)
    # The rows were written 400 days ago, and the score expired a day later.
    before_them = utc_now() - timedelta(days=401)

    counts = await plain_store.delete_expired(
        scores_before=before_them,
        requests_before=before_them,
        idempotency_before=before_them,
        limit=100,
    )

    assert set(counts.values()) == {0}
    record = await plain_store.get_score_request(correlation_id)
    assert record is not None
    assert record.score is not None
    assert record.metadata is not None


async def _client_in(store: Store) -> str:
    box = SecretBox(credentials.decode_master_key(credentials.new_master_key()))
    created = await create_client(store, box, "retention")
    return created.record.id


def test_retention_section_loads_from_toml(tmp_path: Path) -> None:
    path = _config_file(
        tmp_path,
        "[retention]\n"
        "scores_after_expiry = 3600.0\n"
        "requests_after_completion = 7200\n"
        "sweep_interval = 5\n"
        "sweep_batch = 50\n",
    )

    config = load_config(path, environ={})

    assert config.retention == RetentionConfig(
        scores_after_expiry_s=3600.0,
        requests_after_completion_s=7200.0,
        sweep_interval_s=5.0,
        sweep_batch=50,
    )


@pytest.mark.parametrize(
    ("line", "key"),
    [
        pytest.param("sweep_batch = 0", "retention.sweep_batch", id="batch-zero"),
        pytest.param("sweep_batch = 1.5", "retention.sweep_batch", id="batch-float"),
        pytest.param(
            "sweep_interval = 0", "retention.sweep_interval", id="interval-zero"
        ),
        pytest.param(
            "scores_after_expiry = -1", "retention.scores_after_expiry", id="negative"
        ),
        pytest.param("keep_forever = true", "retention.keep_forever", id="unknown"),
    ],
)
def test_retention_section_rejects_invalid(tmp_path: Path, line: str, key: str) -> None:
    path = _config_file(tmp_path, f"[retention]\n{line}\n")

    with pytest.raises(ConfigError) as raised:
        load_config(path, environ={})

    assert key in str(raised.value)


def _config_file(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[backend]\ntoken = "{BACKEND_TOKEN}"\n'
        f'signing_secret = "{credentials.new_signing_secret()}"\n'
        f'[admin]\ntoken = "{ADMIN_TOKEN}"\n'
        f'[security]\nmaster_key = "{credentials.new_master_key()}"\n' + extra
    )
    return path
