"""The whole score flow through the real app, a real SQLite file and real receivers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from conftest import Receiver, Service, config_with_backend, wait_for

# How long a test waits to be sure that a webhook does not arrive. The
# dispatcher is woken by each commit that makes a delivery due, so a
# webhook that should not exist would arrive within milliseconds.
QUIET_PERIOD_S = 0.3


async def test_full_flow_delivers_verified_webhook(
    service: Service, backend: Receiver, make_receiver
) -> None:
    client = await service.new_client()
    receiver = await make_receiver(secret=client.signing_secret)

    response = await service.submit(
        client, customer_id="cust-1042", callback_url=receiver.url(), metadata={"loan": "L-77"}
    )
    assert response.status == 202
    submitted = await response.json()
    correlation_id = submitted["correlation_id"]
    assert response.headers["Location"] == f"/v1/score-requests/{correlation_id}"
    assert submitted["status"] == "pending"

    await wait_for(lambda: len(backend.received) == 1)
    assert backend.invalid == []
    requested = backend.received[0].event
    assert requested["type"] == "score.requested"
    assert requested["data"]["correlation_id"] == correlation_id
    assert "metadata" not in requested["data"]

    response = await service.post_result(correlation_id, outcome="ready", score=712)
    assert response.status == 200

    await wait_for(lambda: len(receiver.received) == 1)
    assert receiver.invalid == []
    event = receiver.received[0].event
    assert event["type"] == "score.ready"
    assert event["data"]["correlation_id"] == correlation_id
    assert "score" not in event["data"]

    response = await service.http.get(
        f"/v1/score-requests/{correlation_id}", headers=service.client_headers(client)
    )
    resource = await response.json()
    assert resource["status"] == "ready"
    assert resource["score"]["value"] == 712
    assert resource["metadata"] == {"loan": "L-77"}

    response = await service.http.get(
        "/v1/customers/cust-1042/score", headers=service.client_headers(client)
    )
    assert (await response.json())["score"]["value"] == 712


async def test_repeated_result_notifies_once(service: Service, make_receiver) -> None:
    client = await service.new_client()
    receiver = await make_receiver(secret=client.signing_secret)
    correlation_id = await service.submit_pending(client, "cust-1", receiver.url())

    first = await service.post_result(correlation_id, outcome="ready", score=712)
    await wait_for(lambda: len(receiver.received) == 1)
    second = await service.post_result(correlation_id, outcome="ready", score=712)
    await asyncio.sleep(QUIET_PERIOD_S)

    assert first.status == 200
    assert (await first.json())["changed"] is True
    assert second.status == 200
    assert (await second.json())["changed"] is False
    assert len(receiver.received) == 1
    assert receiver.invalid == []
    ready = await service.list_deliveries(
        client_id=client.record.id, event_type="score.ready"
    )
    assert len(ready) == 1


async def test_repeated_result_other_offset_is_same(service: Service) -> None:
    client = await service.new_client()
    correlation_id = await service.submit_pending(
        client, "cust-1", "http://127.0.0.1:9/hooks"
    )

    first = await service.post_result(
        correlation_id, outcome="ready", score=712, valid_until="2099-01-01T00:00:00Z"
    )
    second = await service.post_result(
        correlation_id,
        outcome="ready",
        score=712,
        valid_until="2099-01-01T01:00:00+01:00",
    )

    assert first.status == 200
    assert second.status == 200
    assert (await second.json())["changed"] is False


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"outcome": "ready", "score": 712}, {"outcome": "ready", "score": 713}),
        (
            {"outcome": "ready", "score": 712},
            {"outcome": "failed", "reason": "no file"},
        ),
        (
            {"outcome": "ready", "score": 712},
            {"outcome": "ready", "score": 712, "valid_until": "2099-01-01T00:00:00Z"},
        ),
        (
            {"outcome": "failed", "reason": "no file"},
            {"outcome": "failed", "reason": "other"},
        ),
        (
            {"outcome": "failed", "reason": "no file"},
            {"outcome": "ready", "score": 712},
        ),
    ],
    ids=[
        "other-score",
        "ready-then-failed",
        "other-validity",
        "other-reason",
        "failed-then-ready",
    ],
)
async def test_contradicting_result_conflicts_unchanged(
    service: Service, make_receiver, first: dict, second: dict
) -> None:
    client = await service.new_client()
    receiver = await make_receiver(secret=client.signing_secret)
    correlation_id = await service.submit_pending(client, "cust-1", receiver.url())
    response = await service.post_result(correlation_id, **first)
    assert response.status == 200
    await wait_for(lambda: len(receiver.received) == 1)
    before = await (await service.get_request(client, correlation_id)).json()
    score_before = await service.get_customer_score(client, "cust-1")

    response = await service.post_result(correlation_id, **second)
    await asyncio.sleep(QUIET_PERIOD_S)

    assert response.status == 409
    assert response.content_type == "application/problem+json"
    assert (await response.json())["type"] == "/problems/conflict"
    after = await (await service.get_request(client, correlation_id)).json()
    # The dispatcher records the webhook's acceptance on its own schedule.
    before.pop("delivered_at")
    after.pop("delivered_at")
    assert after == before
    score_after = await service.get_customer_score(client, "cust-1")
    assert score_after.status == score_before.status
    assert await score_after.json() == await score_before.json()
    assert len(receiver.received) == 1


async def test_result_for_unknown_request_404(service: Service) -> None:
    response = await service.post_result("req_unknown", outcome="ready", score=712)

    assert response.status == 404
    assert response.content_type == "application/problem+json"
    assert (await response.json())["type"] == "/problems/not-found"


async def test_result_for_reused_score_conflicts(service: Service) -> None:
    client = await service.new_client()
    first_id = await service.submit_pending(
        client, "cust-1", "http://127.0.0.1:9/hooks"
    )
    response = await service.post_result(first_id, outcome="ready", score=712)
    assert response.status == 200
    response = await service.submit(
        client, customer_id="cust-1", callback_url="http://127.0.0.1:9/hooks"
    )
    reused_id = (await response.json())["correlation_id"]

    response = await service.post_result(reused_id, outcome="ready", score=712)

    assert response.status == 409
    assert response.content_type == "application/problem+json"


async def test_stored_score_answers_new_request(
    make_service, backend: Receiver, make_receiver, tmp_path: Path
) -> None:
    # A poll interval far beyond the test's timeout proves that the webhook
    # goes out because the commit wakes the dispatcher, not on a later poll.
    service = await make_service(
        config_with_backend(tmp_path, backend, delivery={"poll_interval_s": 60.0})
    )
    client = await service.new_client()
    receiver = await make_receiver(secret=client.signing_secret)
    first_id = await service.submit_pending(client, "cust-1", receiver.url("/first"))
    await wait_for(lambda: len(backend.received) == 1)
    response = await service.post_result(first_id, outcome="ready", score=712)
    assert response.status == 200
    await wait_for(lambda: len(receiver.received) == 1)

    response = await service.submit(
        client, customer_id="cust-1", callback_url=receiver.url("/second")
    )
    resource = await response.json()
    await wait_for(lambda: len(receiver.received) == 2, timeout_s=1.0)
    await asyncio.sleep(QUIET_PERIOD_S)

    assert response.status == 201
    assert "Retry-After" not in response.headers
    assert resource["status"] == "ready"
    assert resource["score"]["value"] == 712
    assert resource["correlation_id"] != first_id
    webhook = receiver.received[1]
    assert webhook.event["type"] == "score.ready"
    assert webhook.event["data"]["correlation_id"] == resource["correlation_id"]
    assert receiver.invalid == []
    assert len(backend.received) == 1
    requested = await service.list_deliveries(event_type="score.requested")
    assert len(requested) == 1


async def test_pending_customer_joins_computation(
    service: Service, backend: Receiver, make_receiver
) -> None:
    client = await service.new_client()
    first_receiver = await make_receiver(secret=client.signing_secret)
    second_receiver = await make_receiver(secret=client.signing_secret)
    first_id = await service.submit_pending(client, "cust-1", first_receiver.url())
    second_id = await service.submit_pending(client, "cust-1", second_receiver.url())
    await wait_for(lambda: len(backend.received) == 1)

    response = await service.post_result(first_id, outcome="ready", score=640)
    await wait_for(lambda: len(first_receiver.received) == 1)
    await wait_for(lambda: len(second_receiver.received) == 1)
    await asyncio.sleep(QUIET_PERIOD_S)

    assert response.status == 200
    assert len(backend.received) == 1
    assert backend.invalid == []
    assert len(first_receiver.received) == 1
    assert len(second_receiver.received) == 1
    assert first_receiver.received[0].event["data"]["correlation_id"] == first_id
    assert second_receiver.received[0].event["data"]["correlation_id"] == second_id
    assert first_receiver.invalid == []
    assert second_receiver.invalid == []
    second = await (await service.get_request(client, second_id)).json()
    assert second["status"] == "ready"
    assert second["score"]["value"] == 640


async def test_result_via_joined_request_repeats(service: Service) -> None:
    client = await service.new_client()
    first_id = await service.submit_pending(client, "cust-1", "http://127.0.0.1:9/a")
    second_id = await service.submit_pending(client, "cust-1", "http://127.0.0.1:9/b")
    response = await service.post_result(first_id, outcome="ready", score=640)
    assert response.status == 200

    response = await service.post_result(second_id, outcome="ready", score=640)

    assert response.status == 200
    assert (await response.json())["changed"] is False


async def test_customer_of_two_clients_computed_twice(
    service: Service, backend: Receiver
) -> None:
    first_client = await service.new_client("first")
    second_client = await service.new_client("second")

    await service.submit_pending(first_client, "cust-1", "http://127.0.0.1:9/a")
    await service.submit_pending(second_client, "cust-1", "http://127.0.0.1:9/b")
    await wait_for(lambda: len(backend.received) == 2)

    client_ids = {webhook.event["data"]["client_id"] for webhook in backend.received}
    assert client_ids == {first_client.record.id, second_client.record.id}
    assert backend.invalid == []


async def test_receiver_500_then_200_retried(service: Service, make_receiver) -> None:
    client = await service.new_client()
    receiver = await make_receiver(secret=client.signing_secret, responses=[500])
    correlation_id = await service.submit_pending(client, "cust-1", receiver.url())
    response = await service.post_result(correlation_id, outcome="ready", score=700)
    assert response.status == 200

    await wait_for(lambda: len(receiver.received) == 2)
    listed = await service.list_deliveries(client_id=client.record.id)
    assert len(listed) == 1
    delivery_id = listed[0]["id"]

    async def delivered() -> bool:
        return (await service.get_delivery(delivery_id))["status"] == "delivered"

    await wait_for(delivered)
    delivery = await service.get_delivery(delivery_id)

    first, second = receiver.received
    assert receiver.invalid == []
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.headers["webhook-id"] == delivery["message_id"]
    first_delay_s = service.config.delivery.retry_schedule_s[0]
    assert second.received_at - first.received_at >= first_delay_s
    assert first.body == second.body
    assert delivery["correlation_id"] == correlation_id
    assert delivery["attempt_count"] == 2
    assert [attempt["number"] for attempt in delivery["attempts"]] == [1, 2]
    assert [attempt["status_code"] for attempt in delivery["attempts"]] == [500, 200]


async def test_pending_request_has_retry_after(service: Service) -> None:
    client = await service.new_client()
    submitted = await service.submit(
        client, customer_id="cust-1", callback_url="http://127.0.0.1:9/hooks"
    )
    correlation_id = (await submitted.json())["correlation_id"]

    pending = await service.get_request(client, correlation_id)
    await service.post_result(correlation_id, outcome="ready", score=700)
    ready = await service.get_request(client, correlation_id)

    hint = str(service.config.scores.poll_hint_s)
    assert submitted.headers.get("Retry-After") == hint
    assert pending.status == 200
    assert (await pending.json())["status"] == "pending"
    assert pending.headers.get("Retry-After") == hint
    assert ready.status == 200
    assert "Retry-After" not in ready.headers


async def test_failed_outcome_sends_score_failed(
    service: Service, make_receiver
) -> None:
    client = await service.new_client()
    receiver = await make_receiver(secret=client.signing_secret)
    correlation_id = await service.submit_pending(client, "cust-1", receiver.url())

    response = await service.post_result(
        correlation_id, outcome="failed", reason="customer not found at bureau"
    )
    await wait_for(lambda: len(receiver.received) == 1)
    resource = await (await service.get_request(client, correlation_id)).json()
    customer = await service.get_customer_score(client, "cust-1")

    assert response.status == 200
    assert (await response.json())["status"] == "failed"
    assert resource["status"] == "failed"
    assert resource["error"] == {"reason": "customer not found at bureau"}
    assert "score" not in resource
    assert resource["completed_at"] is not None
    assert customer.status == 404
    event = receiver.received[0].event
    assert receiver.invalid == []
    assert event["type"] == "score.failed"
    assert event["data"]["status"] == "failed"
    assert event["data"]["correlation_id"] == correlation_id
    assert "reason" not in event["data"]


async def test_failed_customer_is_computed_again(
    service: Service, backend: Receiver
) -> None:
    client = await service.new_client()
    first_id = await service.submit_pending(
        client, "cust-1", "http://127.0.0.1:9/hooks"
    )
    await wait_for(lambda: len(backend.received) == 1)
    response = await service.post_result(first_id, outcome="failed", reason="timeout")
    assert response.status == 200

    second_id = await service.submit_pending(
        client, "cust-1", "http://127.0.0.1:9/hooks"
    )
    await wait_for(lambda: len(backend.received) == 2)

    assert backend.received[1].event["data"]["correlation_id"] == second_id
