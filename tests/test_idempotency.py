"""Idempotency-Key on submission: repeats, conflicts, invalid keys and scope."""

from __future__ import annotations

import json

import pytest

from conftest import Receiver, Service, count_rows, wait_for

CALLBACK_URL = "http://127.0.0.1:9/hooks"


async def test_same_key_same_body_replays(service: Service, backend: Receiver) -> None:
    client = await service.new_client()
    body = {
        "customer_id": "cust-1",
        "callback_url": CALLBACK_URL,
        "metadata": {"loan": "L-77"},
    }

    first = await service.submit(client, idempotency_key="order-77", **body)
    second = await service.submit(client, idempotency_key="order-77", **body)
    await wait_for(lambda: len(backend.received) == 1)

    assert first.status == 202
    assert second.status == first.status
    first_resource = await first.json()
    second_resource = await second.json()
    assert second_resource["correlation_id"] == first_resource["correlation_id"]
    assert second.headers["Location"] == first.headers["Location"]
    assert second.headers.get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert count_rows(service.config, "score_requests") == 1
    assert len(await service.list_deliveries(event_type="score.requested")) == 1


async def test_same_key_reordered_body_replays(service: Service) -> None:
    client = await service.new_client()
    headers = service.client_headers(
        client, **{"Idempotency-Key": "order-77", "Content-Type": "application/json"}
    )
    body = (
        '{"customer_id": "cust-1", "callback_url": "%s", "metadata": {"a": 1, "b": 2}}'
    )
    reordered = (
        '{"metadata": {"b": 2, "a": 1}, "callback_url": "%s", "customer_id": "cust-1"}'
    )

    first = await service.http.post(
        "/v1/score-requests", data=body % CALLBACK_URL, headers=headers
    )
    second = await service.http.post(
        "/v1/score-requests", data=reordered % CALLBACK_URL, headers=headers
    )

    assert first.status == 202
    assert second.status == 202
    assert (await second.json())["correlation_id"] == (await first.json())[
        "correlation_id"
    ]


async def test_replay_of_201_keeps_status(service: Service) -> None:
    client = await service.new_client()
    correlation_id = await service.submit_pending(client, "cust-1", CALLBACK_URL)
    response = await service.post_result(correlation_id, outcome="ready", score=700)
    assert response.status == 200
    body = {"customer_id": "cust-1", "callback_url": CALLBACK_URL}

    first = await service.submit(client, idempotency_key="again-1", **body)
    second = await service.submit(client, idempotency_key="again-1", **body)

    assert first.status == 201
    assert second.status == 201
    assert (await second.json())["correlation_id"] == (await first.json())[
        "correlation_id"
    ]


@pytest.mark.parametrize(
    "changes",
    [
        {"customer_id": "cust-2"},
        {"callback_url": "http://127.0.0.1:9/other"},
        {"metadata": {"loan": "L-78"}},
        {"metadata": None},
    ],
    ids=["other-customer", "other-callback", "other-metadata", "no-metadata"],
)
async def test_same_key_other_body_422(service: Service, changes: dict) -> None:
    client = await service.new_client()
    body = {
        "customer_id": "cust-1",
        "callback_url": CALLBACK_URL,
        "metadata": {"loan": "L-77"},
    }
    first = await service.submit(client, idempotency_key="order-77", **body)
    other_body = {
        key: value for key, value in {**body, **changes}.items() if value is not None
    }

    second = await service.submit(client, idempotency_key="order-77", **other_body)

    assert first.status == 202
    assert second.status == 422
    assert second.content_type == "application/problem+json"
    problem = await second.json()
    assert problem["type"] == "/problems/validation-error"
    assert "Idempotency-Key" in problem["errors"]
    assert count_rows(service.config, "score_requests") == 1
    assert count_rows(service.config, "computations") == 1


@pytest.mark.parametrize(
    "key",
    ["k" * 256, "k" * 300, "order 77", "", "order\t77"],
    ids=["256-chars", "300-chars", "space", "empty", "tab"],
)
async def test_invalid_key_header_422(service: Service, key: str) -> None:
    client = await service.new_client()

    response = await service.http.post(
        "/v1/score-requests",
        data=json.dumps({"customer_id": "cust-1", "callback_url": CALLBACK_URL}),
        headers=service.client_headers(
            client, **{"Idempotency-Key": key, "Content-Type": "application/json"}
        ),
    )

    assert response.status == 422
    assert response.content_type == "application/problem+json"
    assert "Idempotency-Key" in (await response.json())["errors"]
    assert count_rows(service.config, "score_requests") == 0
    assert count_rows(service.config, "idempotency_keys") == 0


async def test_key_of_255_visible_chars_accepted(service: Service) -> None:
    client = await service.new_client()
    key = ("!~" + "".join(chr(code) for code in range(0x21, 0x7F))) * 3
    key = key[:255]

    response = await service.submit(
        client, idempotency_key=key, customer_id="cust-1", callback_url=CALLBACK_URL
    )

    assert response.status == 202
    assert count_rows(service.config, "idempotency_keys") == 1


async def test_same_key_other_client_is_new(service: Service) -> None:
    first_client = await service.new_client("first")
    second_client = await service.new_client("second")
    body = {"customer_id": "cust-1", "callback_url": CALLBACK_URL}

    first = await service.submit(first_client, idempotency_key="order-77", **body)
    second = await service.submit(second_client, idempotency_key="order-77", **body)

    assert first.status == 202
    assert second.status == 202
    assert (await second.json())["correlation_id"] != (await first.json())[
        "correlation_id"
    ]
    assert "Idempotent-Replayed" not in second.headers
