"""The whole score flow through the real app, a real SQLite file and real receivers."""

from __future__ import annotations

from conftest import Receiver, Service, wait_for


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
