"""A restart on the same SQLite file keeps requests, scores and pending deliveries."""

from __future__ import annotations

from pathlib import Path

from conftest import Receiver, config_with_backend, wait_for


async def test_restart_keeps_state_and_delivers(
    make_service, backend: Receiver, make_receiver, tmp_path: Path
) -> None:
    # Fifty 0.2 s delays keep the delivery pending for the whole test while
    # the receiver returns 500.
    config = config_with_backend(
        tmp_path, backend, delivery={"retry_schedule_s": (0.2,) * 50}
    )
    service = await make_service(config)
    client = await service.new_client()
    receiver = await make_receiver(secret=client.signing_secret, default_status=500)
    ready_id = await service.submit_pending(client, "cust-ready", receiver.url())
    pending_id = await service.submit_pending(client, "cust-pending", receiver.url())
    await wait_for(lambda: len(backend.received) == 2)
    response = await service.post_result(ready_id, outcome="ready", score=733)
    assert response.status == 200
    await wait_for(lambda: len(receiver.received) >= 2)
    await service.http.close()
    attempts_before_restart = len(receiver.received)
    receiver.default_status = 200

    restarted = await make_service(config)

    ready = await (await restarted.get_request(client, ready_id)).json()
    assert ready["status"] == "ready"
    assert ready["score"]["value"] == 733
    pending = await restarted.get_request(client, pending_id)
    assert pending.status == 200
    assert (await pending.json())["status"] == "pending"
    customer = await (await restarted.get_customer_score(client, "cust-ready")).json()
    assert customer["score"]["value"] == 733
    listed = await restarted.list_deliveries(client_id=client.record.id)
    assert len(listed) == 1
    delivery_id = listed[0]["id"]

    async def delivered() -> bool:
        return (await restarted.get_delivery(delivery_id))["status"] == "delivered"

    await wait_for(delivered)
    delivery = await restarted.get_delivery(delivery_id)
    statuses = [attempt["status_code"] for attempt in delivery["attempts"]]
    assert len(receiver.received) == attempts_before_restart + 1
    assert statuses == [500] * attempts_before_restart + [200]
    assert receiver.invalid == []
    assert {hook.headers["webhook-id"] for hook in receiver.received} == {
        delivery["message_id"]
    }
    assert receiver.received[-1].event["data"]["correlation_id"] == ready_id
    assert len(backend.received) == 2

    # The computation of the pending request survived too: its result
    # completes it and notifies the client.
    response = await restarted.post_result(pending_id, outcome="ready", score=610)
    assert response.status == 200
    await wait_for(lambda: len(receiver.received) == attempts_before_restart + 2)
    assert receiver.received[-1].event["data"]["correlation_id"] == pending_id
