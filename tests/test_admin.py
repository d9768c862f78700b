"""Operator endpoints: listing, paging, one delivery with attempts, replay."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from conftest import Receiver, Service, wait_for
from store.records import DeliveryStatus, NewDelivery
from webhooks import ids
from webhooks.timefmt import format_time, utc_now


async def _seed(service: Service, client_id: str | None, count: int, url: str) -> list[str]:
    delivery_ids = []
    async with service.state.store.transaction() as transaction:
        for _ in range(count):
            delivery_id = ids.delivery_id()
            await transaction.insert_delivery(
                NewDelivery(
                    id=delivery_id,
                    message_id=ids.message_id(),
                    client_id=client_id,
                    correlation_id=ids.correlation_id(),
                    event_type="score.ready",
                    url=url,
                    host=url.split("/")[2],
                    payload=b'{"type":"score.ready"}',
                    next_attempt_at=utc_now(),
                )
            )
            delivery_ids.append(delivery_id)
    return delivery_ids


async def _get(service: Service, path: str, **params: str) -> tuple[int, dict]:
    response = await service.http.get(path, params=params, headers=service.admin_headers())
    return response.status, await response.json()


async def test_list_pages_through_every_delivery(service: Service, make_receiver) -> None:
    receiver = await make_receiver(default_status=200)
    client = await service.new_client()
    receiver.secret = client.signing_secret
    seeded = await _seed(service, client.record.id, 25, receiver.url())
    await wait_for(lambda: len(receiver.received) == 25)

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"client_id": client.record.id, "limit": "10"}
        if cursor:
            params["cursor"] = cursor
        status, body = await _get(service, "/v1/admin/deliveries", **params)
        assert status == 200
        seen.extend(item["id"] for item in body["deliveries"])
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert sorted(seen) == sorted(seeded)
    assert len(seen) == len(set(seen))


async def test_list_filters_status_and_window(service: Service, make_receiver) -> None:
    failing = await make_receiver(default_status=410)
    good = await make_receiver(default_status=200)
    client = await service.new_client()
    failing.secret = good.secret = client.signing_secret
    failed_ids = await _seed(service, client.record.id, 3, failing.url())
    await _seed(service, client.record.id, 2, good.url())
    await wait_for(lambda: len(failing.received) == 3 and len(good.received) == 2)

    async def all_failed() -> bool:
        status, body = await _get(service, "/v1/admin/deliveries", status="failed")
        return len(body["deliveries"]) == 3

    await wait_for(all_failed)
    status, body = await _get(service, "/v1/admin/deliveries", status="failed")
    assert sorted(item["id"] for item in body["deliveries"]) == sorted(failed_ids)

    later = format_time(utc_now() + timedelta(hours=1))
    status, body = await _get(service, "/v1/admin/deliveries", since=later)
    assert status == 200
    assert body["deliveries"] == []

    status, body = await _get(service, "/v1/admin/deliveries", event_type="score.ready")
    assert len(body["deliveries"]) == 5


async def test_list_rejects_bad_parameters(service: Service) -> None:
    cases = {
        "status": "lost",
        "limit": "0",
        "since": "yesterday",
        "cursor": "not-a-cursor",
        "event_type": "score.exploded",
        "colour": "blue",
    }
    for name, value in cases.items():
        status, body = await _get(service, "/v1/admin/deliveries", **{name: value})
        assert status == 422, name
        assert name in body["errors"], name


async def test_delivery_shows_every_attempt(service: Service, make_receiver) -> None:
    receiver = await make_receiver(responses=[503, 500], default_status=200)
    client = await service.new_client()
    receiver.secret = client.signing_secret
    [delivery_id] = await _seed(service, client.record.id, 1, receiver.url())

    async def delivered() -> bool:
        _, body = await _get(service, f"/v1/admin/deliveries/{delivery_id}")
        return body["status"] == "delivered"

    await wait_for(delivered)
    status, body = await _get(service, f"/v1/admin/deliveries/{delivery_id}")
    assert status == 200
    assert [a["status_code"] for a in body["attempts"]] == [503, 500, 200]
    assert all(a["duration_ms"] >= 0 for a in body["attempts"])
    assert body["message_id"].startswith("msg_")


async def test_replay_resends_with_same_webhook_id(service: Service, make_receiver) -> None:
    receiver = await make_receiver(default_status=410)
    client = await service.new_client()
    receiver.secret = client.signing_secret
    [delivery_id] = await _seed(service, client.record.id, 1, receiver.url())
    store = service.state.store

    async def failed() -> bool:
        return (await store.get_delivery(delivery_id)).status is DeliveryStatus.FAILED

    await wait_for(failed)
    receiver.default_status = 200
    response = await service.http.post(
        f"/v1/admin/deliveries/{delivery_id}/replay", headers=service.admin_headers()
    )
    assert response.status == 202

    await wait_for(lambda: len(receiver.received) == 2)
    first, second = receiver.received
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert receiver.invalid == []

    response = await service.http.post(
        "/v1/admin/deliveries/dlv_unknown/replay", headers=service.admin_headers()
    )
    assert response.status == 404


async def test_replay_of_pending_delivery_conflicts(service: Service) -> None:
    # A receiver port that nothing listens on keeps the delivery pending.
    [delivery_id] = await _seed(service, None, 1, "http://127.0.0.1:9/hooks")
    response = await service.http.post(
        f"/v1/admin/deliveries/{delivery_id}/replay", headers=service.admin_headers()
    )
    assert response.status == 409
    assert response.content_type == "application/problem+json"


async def test_busy_client_does_not_starve_another(
    service: Service, make_receiver
) -> None:
    async def slow(request) -> object:
        await asyncio.sleep(0.05)
        from aiohttp import web

        return web.Response(status=200)

    busy: Receiver = await make_receiver(handler=slow)
    quiet: Receiver = await make_receiver(default_status=200)
    busy_client = await service.new_client("busy")
    quiet_client = await service.new_client("quiet")
    busy.secret = busy_client.signing_secret
    quiet.secret = quiet_client.signing_secret

    await _seed(service, busy_client.record.id, 10_000, busy.url())
    await wait_for(lambda: len(busy.received) >= 8)
    await _seed(service, quiet_client.record.id, 1, quiet.url())

    await wait_for(lambda: len(quiet.received) == 1, 2)
    assert len(busy.received) < 10_000


async def test_list_filters_by_receiver_host(service: Service, make_receiver) -> None:
    first = await make_receiver(default_status=200)
    second = await make_receiver(default_status=200)
    client = await service.new_client()
    first_ids = await _seed(service, client.record.id, 2, first.url())
    await _seed(service, client.record.id, 1, second.url())

    host = first.url().split("/")[2]
    status, body = await _get(service, "/v1/admin/deliveries", host=host)

    assert status == 200
    assert sorted(item["id"] for item in body["deliveries"]) == sorted(first_ids)
