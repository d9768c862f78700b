"""Delivery rules against real receivers on 127.0.0.1 with short schedules."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

from aiohttp import web

from conftest import Receiver, Service, make_config, wait_for
from store.records import DeliveryStatus


async def _ready_delivery(
    service: Service, receiver: Receiver, customer_id: str = "c-1", url: str | None = None
) -> str:
    """Submit a request, post its result and return the client delivery's ID.

    Every request to one receiver comes from one client, whose secret the
    receiver verifies.
    """
    client = getattr(receiver, "client", None)
    if client is None:
        client = await service.new_client(f"client-{customer_id}")
        receiver.client = client  # type: ignore[attr-defined]
        receiver.secret = client.signing_secret
    response = await service.submit(
        client, customer_id=customer_id, callback_url=url or receiver.url()
    )
    correlation_id = (await response.json())["correlation_id"]
    response = await service.post_result(correlation_id, outcome="ready", score=700)
    assert response.status == 200
    page = await service.state.store.list_deliveries(
        _client_filter(client.record.id), limit=1, cursor=None
    )
    delivery = page.deliveries[0]
    assert delivery.correlation_id == correlation_id
    return delivery.id


def _client_filter(client_id: str) -> Any:
    from store.records import DeliveryFilter

    return DeliveryFilter(client_id=client_id)


async def _delivery(service: Service, delivery_id: str) -> Any:
    return await service.state.store.get_delivery(delivery_id)


async def _attempts(service: Service, delivery_id: str) -> list[Any]:
    return await service.state.store.list_attempts(delivery_id)


async def _status_is(service: Service, delivery_id: str, status: DeliveryStatus) -> bool:
    delivery = await _delivery(service, delivery_id)
    return delivery.status is status


async def test_retry_after_500s_keeps_webhook_id(service: Service, make_receiver) -> None:
    receiver = await make_receiver(responses=[500, 500], default_status=200)
    delivery_id = await _ready_delivery(service, receiver)

    await wait_for(lambda: _status_is(service, delivery_id, DeliveryStatus.DELIVERED))
    assert len(receiver.received) == 3
    assert receiver.invalid == []
    assert len({hook.headers["webhook-id"] for hook in receiver.received}) == 1
    attempts = await _attempts(service, delivery_id)
    assert [a.status_code for a in attempts] == [500, 500, 200]


async def test_410_gone_fails_after_one_attempt(service: Service, make_receiver) -> None:
    receiver = await make_receiver(default_status=410)
    delivery_id = await _ready_delivery(service, receiver)

    await wait_for(lambda: _status_is(service, delivery_id, DeliveryStatus.FAILED))
    await asyncio.sleep(0.5)  # the schedule would have retried by now
    assert len(receiver.received) == 1
    attempts = await _attempts(service, delivery_id)
    assert len(attempts) == 1
    assert "410" in attempts[0].error


async def test_429_retry_after_delays_next_attempt(service: Service, make_receiver) -> None:
    answered: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        answered.append(1)
        if len(answered) == 1:
            return web.Response(status=429, headers={"Retry-After": "2"})
        return web.Response(status=204)

    receiver = await make_receiver(handler=handler)
    delivery_id = await _ready_delivery(service, receiver)

    await wait_for(lambda: _status_is(service, delivery_id, DeliveryStatus.DELIVERED), 6)
    first, second = receiver.received
    assert second.received_at - first.received_at >= 1.9


async def test_redirect_not_followed(service: Service, make_receiver) -> None:
    target = await make_receiver(default_status=200)

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": target.url()})

    receiver = await make_receiver(handler=handler)
    delivery_id = await _ready_delivery(service, receiver)

    await wait_for(lambda: len(receiver.received) >= 2)
    assert target.received == []
    attempts = await _attempts(service, delivery_id)
    assert attempts[0].status_code == 302
    assert "redirect" in attempts[0].error
    assert "not followed" in attempts[0].error


async def test_hanging_receiver_times_out_and_frees_slot(
    make_service, make_receiver, backend: Receiver, tmp_path
) -> None:
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(status=200)

    config = make_config(
        tmp_path,
        delivery={"attempt_timeout_s": 0.5, "max_in_flight_per_host": 1},
    )
    config = replace(config, backend=replace(config.backend, url=backend.url()))
    service = await make_service(config)
    receiver = await make_receiver(handler=hang)
    try:
        first = await _ready_delivery(service, receiver, "c-1")
        second = await _ready_delivery(service, receiver, "c-2")

        # With one slot per host, the second delivery is attempted only
        # after the first attempt timed out and gave the slot back.
        await wait_for(lambda: len(receiver.received) >= 2, 4)
        await wait_for(lambda: _has_attempt(service, first), 4)
        attempts = await _attempts(service, first)
        assert attempts[0].status_code is None
        assert "timed out" in attempts[0].error
        assert attempts[0].duration_ms < 1500
        assert second != first
    finally:
        release.set()


async def _has_attempt(service: Service, delivery_id: str) -> bool:
    return bool(await _attempts(service, delivery_id))


async def test_endless_body_keeps_first_4_kib(service: Service, make_receiver) -> None:
    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200)
        await response.prepare(request)
        try:
            while True:
                await response.write(b"x" * 1024)
                await asyncio.sleep(0.001)
        except (ConnectionError, asyncio.CancelledError):
            pass
        return response

    receiver = await make_receiver(handler=stream)
    delivery_id = await _ready_delivery(service, receiver)

    await wait_for(lambda: _has_attempt(service, delivery_id), 4)
    attempt = (await _attempts(service, delivery_id))[0]
    assert attempt.status_code == 200
    assert attempt.response_excerpt == "x" * 4096
    assert attempt.duration_ms < 2000


async def test_refused_connection_then_receiver_up(
    make_service, make_receiver, backend: Receiver, tmp_path
) -> None:
    config = make_config(tmp_path, delivery={"retry_schedule_s": (0.3,) * 10})
    config = replace(config, backend=replace(config.backend, url=backend.url()))
    service = await make_service(config)
    receiver = await make_receiver(default_status=200)
    url = receiver.url()
    port = receiver.server.port
    await receiver.server.close()

    delivery_id = await _ready_delivery(service, receiver, url=url)
    await wait_for(lambda: _has_attempt(service, delivery_id), 3)
    attempt = (await _attempts(service, delivery_id))[0]
    assert attempt.error == "connection refused"

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        await wait_for(lambda: _status_is(service, delivery_id, DeliveryStatus.DELIVERED), 5)
        assert receiver.received[-1].headers["webhook-id"]
        assert receiver.invalid == []
    finally:
        await runner.cleanup()


async def test_hanging_host_does_not_delay_others(
    make_service, make_receiver, backend: Receiver, tmp_path
) -> None:
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(status=200)

    config = make_config(
        tmp_path,
        delivery={"attempt_timeout_s": 30.0, "max_in_flight": 64, "max_in_flight_per_host": 8},
    )
    config = replace(config, backend=replace(config.backend, url=backend.url()))
    service = await make_service(config)
    slow = await make_receiver(handler=hang)
    healthy = await make_receiver(default_status=200)
    try:
        # Baseline latency to the healthy host with nothing else going on.
        started = time.monotonic()
        await _ready_delivery(service, healthy, "baseline")
        await wait_for(lambda: len(healthy.received) == 1)
        baseline_s = time.monotonic() - started

        for number in range(50):
            await _ready_delivery(service, slow, f"slow-{number}")
        await wait_for(lambda: len(slow.received) >= 8)

        started = time.monotonic()
        for number in range(5):
            await _ready_delivery(service, healthy, f"healthy-{number}")
        await wait_for(lambda: len(healthy.received) == 6, 3)
        loaded_s = time.monotonic() - started
        assert loaded_s < max(1.0, 10 * baseline_s)
        # The hanging host never holds more than its own share of slots.
        assert len(slow.received) == 8
    finally:
        release.set()


async def test_circuit_opens_then_probes(
    make_service, make_receiver, backend: Receiver, tmp_path
) -> None:
    config = make_config(
        tmp_path,
        delivery={
            "retry_schedule_s": (0.05,) * 20,
            "circuit_failure_threshold": 3,
            "circuit_cooldown_s": 1.5,
            "max_in_flight_per_host": 1,
        },
    )
    config = replace(config, backend=replace(config.backend, url=backend.url()))
    service = await make_service(config)
    receiver = await make_receiver(default_status=500)
    delivery_id = await _ready_delivery(service, receiver)

    await wait_for(lambda: len(receiver.received) == 3, 3)
    opened_at = time.monotonic()
    await asyncio.sleep(1.0)
    assert len(receiver.received) == 3  # nothing during the cool-down

    receiver.default_status = 200
    await wait_for(lambda: _status_is(service, delivery_id, DeliveryStatus.DELIVERED), 4)
    probe = receiver.received[3]
    assert probe.received_at - opened_at >= 1.4
    assert len(receiver.received) == 4
    attempts = await _attempts(service, delivery_id)
    assert len(attempts) == 4  # holding back is not an attempt
