"""Request timelines, fetch tracking, held deliveries and the callback handshake."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from aiohttp import web
from conftest import Receiver, Service, config_with_backend, wait_for

from webhooks.timefmt import parse_time, utc_now


async def _timeline(service: Service, path: str, headers: dict[str, str]) -> list[dict]:
    response = await service.http.get(path, headers=headers)
    assert response.status == 200, await response.text()
    return (await response.json())["steps"]


async def _delivery_statuses(service: Service, client_id: str) -> list[str]:
    deliveries = await service.list_deliveries(client_id=client_id)
    return [delivery["status"] for delivery in deliveries]


async def test_timeline_records_every_step_in_order(
    service: Service, backend: Receiver, make_receiver
) -> None:
    started = utc_now()
    client = await service.new_client("a")
    first = await make_receiver(secret=client.signing_secret)
    second = await make_receiver(secret=client.signing_secret, responses=[500])
    first_id = await service.submit_pending(client, "cust-1", first.url())
    joined_id = await service.submit_pending(client, "cust-1", second.url())
    await wait_for(lambda: len(backend.received) == 1)

    response = await service.post_result(first_id, outcome="ready", score=700)
    assert response.status == 200
    await wait_for(lambda: len(second.received) == 2)
    await wait_for(
        lambda: _delivered(service, client.record.id, 2), timeout_s=5
    )
    for _ in range(2):
        response = await service.get_request(client, joined_id)
        assert response.status == 200

    steps = await _timeline(
        service,
        f"/v1/score-requests/{joined_id}/timeline",
        service.client_headers(client),
    )
    names = [step["step"] for step in steps]
    assert names == [
        "submitted",
        "computation_joined",
        "result_received",
        "webhook_attempt",
        "webhook_attempt",
        "result_read",
        "result_read",
    ]
    assert steps[3]["detail"]["status_code"] == 500
    assert steps[3]["detail"]["outcome"] == "retry"
    assert steps[4]["detail"]["status_code"] == 200
    assert steps[4]["detail"]["outcome"] == "delivered"
    assert steps[5]["detail"]["via"] == "request"
    times = [parse_time(step["at"]) for step in steps]
    assert times == sorted(times)
    assert started - timedelta(seconds=1) <= times[0]
    assert times[-1] <= utc_now()

    client_view = await _timeline(
        service, f"/v1/score-requests/{first_id}/timeline", service.client_headers(client)
    )
    operator_view = await _timeline(
        service,
        f"/v1/admin/score-requests/{first_id}/timeline",
        service.admin_headers(),
    )
    assert "backend_event_attempt" not in [step["step"] for step in client_view]
    assert "computation_started" in [step["step"] for step in client_view]
    assert "backend_event_attempt" in [step["step"] for step in operator_view]


async def _delivered(service: Service, client_id: str, count: int) -> bool:
    statuses = await _delivery_statuses(service, client_id)
    return statuses.count("delivered") == count


async def test_timeline_of_other_client_is_not_found(
    service: Service, make_receiver
) -> None:
    owner = await service.new_client("a")
    other = await service.new_client("b")
    receiver = await make_receiver(secret=owner.signing_secret)
    correlation_id = await service.submit_pending(owner, "cust-1", receiver.url())

    response = await service.http.get(
        f"/v1/score-requests/{correlation_id}/timeline",
        headers=service.client_headers(other),
    )
    unknown = await service.http.get(
        "/v1/score-requests/req_unknown/timeline", headers=service.client_headers(other)
    )

    assert response.status == 404
    assert unknown.status == 404
    assert (await response.json())["type"] == (await unknown.json())["type"]


async def test_idempotent_repeat_is_a_step(service: Service, make_receiver) -> None:
    client = await service.new_client()
    receiver = await make_receiver(secret=client.signing_secret)
    body = {"customer_id": "cust-1", "callback_url": receiver.url(), "idempotency_key": "k1"}
    first = await (await service.submit(client, **dict(body))).json()
    await service.submit(client, **dict(body))

    steps = await _timeline(
        service,
        f"/v1/score-requests/{first['correlation_id']}/timeline",
        service.client_headers(client),
    )
    assert [step["step"] for step in steps] == [
        "submitted",
        "computation_started",
        "idempotent_repeat",
    ]


async def _ready_request(service: Service, client: Any, receiver: Receiver, customer: str) -> str:
    correlation_id = await service.submit_pending(client, customer, receiver.url())
    response = await service.post_result(correlation_id, outcome="ready", score=650)
    assert response.status == 200
    return correlation_id


async def _unfetched(service: Service, duration: str) -> list[str]:
    response = await service.http.get(
        "/v1/admin/score-requests",
        params={"delivered_not_fetched_for": duration},
        headers=service.admin_headers(),
    )
    assert response.status == 200, await response.text()
    return [item["correlation_id"] for item in (await response.json())["requests"]]


async def test_delivered_but_never_read_is_listed(
    service: Service, make_receiver
) -> None:
    client = await service.new_client()
    receiver = await make_receiver(secret=client.signing_secret)
    ignored = await _ready_request(service, client, receiver, "cust-ignored")
    read = await _ready_request(service, client, receiver, "cust-read")
    await wait_for(lambda: _delivered(service, client.record.id, 2))

    response = await service.get_request(client, read)
    resource = await response.json()
    assert resource["fetched_at"] is not None
    assert resource["delivered_at"] is not None
    assert await _unfetched(service, "1h") == []

    await asyncio.sleep(1.1)
    listed = await _unfetched(service, "1s")
    assert listed == [ignored]

    response = await service.get_request(client, ignored)
    first_read = (await response.json())["fetched_at"]
    response = await service.get_request(client, ignored)
    assert (await response.json())["fetched_at"] == first_read
    assert await _unfetched(service, "1s") == []


async def test_customer_read_counts_as_fetch(service: Service, make_receiver) -> None:
    client = await service.new_client()
    receiver = await make_receiver(secret=client.signing_secret)
    correlation_id = await _ready_request(service, client, receiver, "cust-1")
    await wait_for(lambda: _delivered(service, client.record.id, 1))

    response = await service.get_customer_score(client, "cust-1")
    assert response.status == 200
    await asyncio.sleep(1.1)

    assert await _unfetched(service, "1s") == []
    steps = await _timeline(
        service,
        f"/v1/score-requests/{correlation_id}/timeline",
        service.client_headers(client),
    )
    assert steps[-1]["step"] == "result_read"
    assert steps[-1]["detail"] == {"via": "customer"}


async def test_unfetched_listing_rejects_bad_duration(service: Service) -> None:
    for value in ("soon", "-1h", "1w", ""):
        response = await service.http.get(
            "/v1/admin/score-requests",
            params={"delivered_not_fetched_for": value},
            headers=service.admin_headers(),
        )
        assert response.status == 422, value
        assert "delivered_not_fetched_for" in (await response.json())["errors"]


async def test_held_deliveries_sent_oldest_first_on_recovery(
    make_service, make_receiver, backend: Receiver, tmp_path
) -> None:
    config = config_with_backend(
        tmp_path,
        backend,
        delivery={
            "retry_schedule_s": (0.05, 0.05),
            "held_window_s": 300.0,
            "held_release_per_second": 20.0,
            "circuit_failure_threshold": 1000,
        },
    )
    service = await make_service(config)
    client = await service.new_client()
    receiver = await make_receiver(secret=client.signing_secret, default_status=503)
    held_ids = [
        await _ready_request(service, client, receiver, f"cust-{number}")
        for number in range(3)
    ]

    async def all_held() -> bool:
        return await _delivery_statuses(service, client.record.id) == ["held"] * 3

    await wait_for(all_held)
    health = await (
        await service.http.get("/v1/clients/me/health", headers=service.client_headers(client))
    ).json()
    assert health["held_count"] == 3
    assert health["failing_since"] is not None
    assert "503" in health["last_error"]
    response = await service.http.get(
        "/v1/clients/me/deliveries",
        params={"status": "held"},
        headers=service.client_headers(client),
    )
    assert len((await response.json())["deliveries"]) == 3

    receiver.default_status = 200
    attempts_while_down = len(receiver.received)
    trigger = await _ready_request(service, client, receiver, "cust-new")

    await wait_for(lambda: _delivered(service, client.record.id, 4), timeout_s=5)
    after = receiver.received[attempts_while_down:]
    order = [hook.event["data"]["correlation_id"] for hook in after]
    assert order == [trigger, *held_ids]
    assert receiver.invalid == []
    health = await (
        await service.http.get("/v1/clients/me/health", headers=service.client_headers(client))
    ).json()
    assert health["held_count"] == 0
    assert health["failing_since"] is None


async def test_receiver_up_meanwhile_fails_not_holds(
    make_service, make_receiver, backend: Receiver, tmp_path
) -> None:
    config = config_with_backend(
        tmp_path,
        backend,
        delivery={"retry_schedule_s": (0.4, 0.4), "held_window_s": 300.0},
    )
    service = await make_service(config)
    client = await service.new_client()
    rejected: set[str] = set()

    async def reject_some(request: web.Request) -> web.Response:
        data = (await request.json())["data"]
        return web.Response(status=500 if data["correlation_id"] in rejected else 200)

    receiver = await make_receiver(secret=client.signing_secret, handler=reject_some)
    bad = await service.submit_pending(client, "cust-bad", receiver.url())
    rejected.add(bad)
    await service.post_result(bad, outcome="ready", score=700)
    await wait_for(lambda: len(receiver.received) == 1)

    # Another webhook to the same receiver succeeds while the first is
    # retried, so the receiver is not down: the first one fails for good.
    await _ready_request(service, client, receiver, "cust-good")

    async def failed_and_delivered() -> bool:
        statuses = await _delivery_statuses(service, client.record.id)
        return sorted(statuses) == ["delivered", "failed"]

    await wait_for(failed_and_delivered)


def _handshake_receiver(
    allowed_origin: str | None, status: int = 200
) -> tuple[web.Application, list[str], list[dict[str, str]]]:
    methods: list[str] = []
    options: list[dict[str, str]] = []

    async def handle(request: web.Request) -> web.Response:
        methods.append(request.method)
        if request.method == "OPTIONS":
            options.append(dict(request.headers))
            headers = {}
            if allowed_origin is not None:
                headers["WebHook-Allowed-Origin"] = allowed_origin
            return web.Response(status=status, headers=headers)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app, methods, options


async def test_handshake_accepted_then_webhooks_flow(
    make_service, aiohttp_server, backend: Receiver, tmp_path
) -> None:
    config = config_with_backend(
        tmp_path, backend, delivery={"verify_callback_origin": True}
    )
    service = await make_service(config)
    client = await service.new_client()
    app, methods, options = _handshake_receiver("scores.test")
    server = await aiohttp_server(app)
    url = str(server.make_url("/hooks"))
    for number in range(2):
        correlation_id = await service.submit_pending(client, f"cust-{number}", url)
        await service.post_result(correlation_id, outcome="ready", score=700)

    await wait_for(lambda: methods.count("POST") == 2)
    assert methods.count("OPTIONS") == 1
    assert options[0]["WebHook-Request-Origin"] == "scores.test"


async def test_handshake_refused_holds_without_post(
    make_service, aiohttp_server, backend: Receiver, tmp_path
) -> None:
    config = config_with_backend(
        tmp_path, backend, delivery={"verify_callback_origin": True}
    )
    service = await make_service(config)
    cases = {
        "405": _handshake_receiver(None, status=405),
        "no-header": _handshake_receiver(None),
        "other-origin": _handshake_receiver("someone-else.example"),
    }
    for name, (app, methods, _) in cases.items():
        client = await service.new_client(name)
        server = await aiohttp_server(app)
        correlation_id = await service.submit_pending(
            client, "cust-1", str(server.make_url("/hooks"))
        )
        await service.post_result(correlation_id, outcome="ready", score=700)

        async def held() -> bool:
            return await _delivery_statuses(service, client.record.id) == ["held"]

        await wait_for(held)
        [delivery] = await service.list_deliveries(client_id=client.record.id)
        assert "handshake" in delivery["last_error"], name
        assert delivery["attempt_count"] == 0, name
        assert "POST" not in methods, name
        assert methods == ["OPTIONS"], name
