"""Invalid input gets its documented status and a problem document, storing nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from conftest import Service, count_rows

PROBLEM = "application/problem+json"
CALLBACK_URL = "http://127.0.0.1:9/hooks"
TABLES = ("score_requests", "computations", "scores", "deliveries", "idempotency_keys")


def metadata_of_size(size: int) -> dict[str, str]:
    """Return metadata whose compact JSON form is ``size`` bytes."""
    return {"blob": "x" * (size - len('{"blob":""}'))}


def request_body(**changes: Any) -> dict[str, Any]:
    """Return a valid submission body with ``changes`` applied. None removes a field."""
    body: dict[str, Any] = {"customer_id": "cust-1", "callback_url": CALLBACK_URL}
    body.update(changes)
    return {key: value for key, value in body.items() if value is not None}


async def assert_nothing_stored(service: Service) -> None:
    for table in TABLES:
        assert count_rows(service.config, table) == 0, table
    assert await service.list_deliveries() == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (request_body(customer_id=""), "customer_id"),
        (request_body(customer_id="c" * 65), "customer_id"),
        (request_body(customer_id="cust 1"), "customer_id"),
        (request_body(customer_id="cust-\u00e9"), "customer_id"),
        (request_body(customer_id="cust/1"), "customer_id"),
        (request_body(customer_id="cust-1\n"), "customer_id"),
        (request_body(customer_id=1042), "customer_id"),
        ({"callback_url": CALLBACK_URL}, "customer_id"),
        (request_body(callback_url="/hooks"), "callback_url"),
        (request_body(callback_url="ftp://127.0.0.1/hooks"), "callback_url"),
        (request_body(callback_url="http://user:pass@127.0.0.1/hooks"), "callback_url"),
        (request_body(callback_url="http://127.0.0.1/hooks#part"), "callback_url"),
        (request_body(callback_url="http://127.0.0.1/" + "a" * 2048), "callback_url"),
        ({"customer_id": "cust-1"}, "callback_url"),
        (request_body(metadata=metadata_of_size(4097)), "metadata"),
        (request_body(metadata=["loan", "L-77"]), "metadata"),
        (request_body(metadata="loan L-77"), "metadata"),
        (request_body(extra=True), "extra"),
    ],
    ids=[
        "empty-customer",
        "customer-65-chars",
        "customer-space",
        "customer-non-ascii",
        "customer-slash",
        "customer-trailing-newline",
        "customer-number",
        "customer-missing",
        "relative-url",
        "ftp-url",
        "url-with-credentials",
        "url-with-fragment",
        "url-over-2048-chars",
        "url-missing",
        "metadata-4097-bytes",
        "metadata-list",
        "metadata-string",
        "unknown-field",
    ],
)
async def test_invalid_submission_rejected_unstored(
    service: Service, body: dict[str, Any], field: str
) -> None:
    client = await service.new_client()

    response = await service.submit(client, **body)

    assert response.status == 422
    assert response.content_type == PROBLEM
    problem = await response.json()
    assert problem["status"] == 422
    assert problem["type"] == "/problems/validation-error"
    assert field in problem["errors"]
    assert field in problem["detail"]
    await assert_nothing_stored(service)


@pytest.mark.parametrize(
    "callback_url",
    [
        "http://203.0.113.7/hooks",
        "https://10.0.0.1/hooks",
        "https://169.254.169.254/latest/meta-data",
        "https://127.0.0.1/hooks",
        "https://2130706433/hooks",
        "https://[::ffff:127.0.0.1]/hooks",
        "https://[fd00::1]/hooks",
    ],
    ids=[
        "plain-http",
        "private",
        "metadata-address",
        "loopback",
        "decimal-loopback",
        "ipv4-mapped-loopback",
        "unique-local",
    ],
)
async def test_strict_policy_rejects_callback_url(
    make_service, callback_url: str
) -> None:
    # Every address here is rejected at submission, so no connection is made.
    service = await make_service(
        delivery={"allow_http": False, "allow_private_networks": False}
    )
    client = await service.new_client()

    response = await service.submit(
        client, customer_id="cust-1", callback_url=callback_url
    )

    assert response.status == 422
    assert response.content_type == PROBLEM
    assert "callback_url" in (await response.json())["errors"]
    await assert_nothing_stored(service)


@pytest.mark.parametrize(
    "body",
    [
        request_body(customer_id="Az09._:-" * 8),
        request_body(metadata=metadata_of_size(4096)),
        request_body(metadata=None),
    ],
    ids=["customer-64-chars", "metadata-4096-bytes", "no-metadata"],
)
async def test_submission_at_limits_accepted(
    service: Service, body: dict[str, Any]
) -> None:
    client = await service.new_client()

    response = await service.submit(client, **body)

    assert response.status == 202
    assert count_rows(service.config, "score_requests") == 1


async def test_non_json_body_returns_400(service: Service) -> None:
    client = await service.new_client()

    response = await service.http.post(
        "/v1/score-requests",
        data=b'{"customer_id": "cust-1",',
        headers=service.client_headers(client, **{"Content-Type": "application/json"}),
    )

    assert response.status == 400
    assert response.content_type == PROBLEM
    assert (await response.json())["type"] == "/problems/malformed-json"
    await assert_nothing_stored(service)


async def test_json_array_body_returns_422(service: Service) -> None:
    client = await service.new_client()

    response = await service.http.post(
        "/v1/score-requests",
        json=[request_body()],
        headers=service.client_headers(client),
    )

    assert response.status == 422
    assert response.content_type == PROBLEM
    assert "_schema" in (await response.json())["errors"]
    await assert_nothing_stored(service)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", None]
)
async def test_wrong_content_type_returns_415(
    service: Service, content_type: str | None
) -> None:
    client = await service.new_client()
    headers = service.client_headers(client)
    if content_type is not None:
        headers["Content-Type"] = content_type

    response = await service.http.post(
        "/v1/score-requests", data=json.dumps(request_body()).encode(), headers=headers
    )

    assert response.status == 415
    assert response.content_type == PROBLEM
    assert (await response.json())["type"] == "/problems/unsupported-media-type"
    await assert_nothing_stored(service)


async def test_oversize_body_returns_413(make_service) -> None:
    service = await make_service(server={"max_body_bytes": 2048})
    client = await service.new_client()
    body = request_body(metadata={"blob": "x" * 2048})

    response = await service.submit(client, **body)

    assert response.status == 413
    assert response.content_type == PROBLEM
    assert (await response.json())["type"] == "/problems/payload-too-large"
    await assert_nothing_stored(service)


@pytest.mark.parametrize(
    "customer_id",
    ["cust%201", "c" * 65, "cust-%C3%A9"],
    ids=["space", "65-chars", "non-ascii"],
)
async def test_invalid_customer_in_path_422(service: Service, customer_id: str) -> None:
    client = await service.new_client()

    response = await service.http.get(
        f"/v1/customers/{customer_id}/score", headers=service.client_headers(client)
    )

    assert response.status == 422
    assert response.content_type == PROBLEM
    assert "customer_id" in (await response.json())["errors"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"outcome": "ready", "score": 299}, "score"),
        ({"outcome": "ready", "score": 851}, "score"),
        ({"outcome": "ready", "score": "712"}, "score"),
        ({"outcome": "ready", "score": 712.5}, "score"),
        ({"outcome": "ready"}, "score"),
        (
            {"outcome": "ready", "score": 712, "valid_until": "2000-01-01T00:00:00Z"},
            "valid_until",
        ),
        (
            {"outcome": "ready", "score": 712, "valid_until": "2099-01-01T00:00:00"},
            "valid_until",
        ),
        ({"outcome": "ready", "score": 712, "valid_until": "tomorrow"}, "valid_until"),
        ({"outcome": "ready", "score": 712, "reason": "none"}, "reason"),
        ({"outcome": "failed"}, "reason"),
        ({"outcome": "failed", "reason": ""}, "reason"),
        ({"outcome": "failed", "reason": "x" * 501}, "reason"),
        ({"outcome": "failed", "reason": "no file", "score": 712}, "score"),
        ({"outcome": "done", "score": 712}, "outcome"),
        ({"score": 712}, "outcome"),
        ({"outcome": "ready", "score": 712, "extra": 1}, "extra"),
    ],
    ids=[
        "score-299",
        "score-851",
        "score-string",
        "score-fraction",
        "ready-without-score",
        "valid-until-past",
        "valid-until-no-timezone",
        "valid-until-not-time",
        "ready-with-reason",
        "failed-without-reason",
        "failed-empty-reason",
        "failed-reason-501-chars",
        "failed-with-score",
        "unknown-outcome",
        "outcome-missing",
        "unknown-field",
    ],
)
async def test_invalid_result_rejected_unchanged(
    service: Service, body: dict[str, Any], field: str
) -> None:
    client = await service.new_client()
    correlation_id = await service.submit_pending(client, "cust-1", CALLBACK_URL)

    response = await service.post_result(correlation_id, **body)

    assert response.status == 422
    assert response.content_type == PROBLEM
    problem = await response.json()
    assert problem["type"] == "/problems/validation-error"
    assert field in problem["errors"]
    resource = await (await service.get_request(client, correlation_id)).json()
    assert resource["status"] == "pending"
    assert "score" not in resource
    assert "error" not in resource
    assert count_rows(service.config, "scores") == 0
    assert (await service.get_customer_score(client, "cust-1")).status == 404
    assert await service.list_deliveries(client_id=client.record.id) == []


@pytest.mark.parametrize("score", [300, 850])
async def test_result_score_at_limits_accepted(service: Service, score: int) -> None:
    client = await service.new_client()
    correlation_id = await service.submit_pending(client, "cust-1", CALLBACK_URL)

    response = await service.post_result(correlation_id, outcome="ready", score=score)

    assert response.status == 200
    customer = await (await service.get_customer_score(client, "cust-1")).json()
    assert customer["score"]["value"] == score


async def test_result_valid_until_is_stored(service: Service) -> None:
    client = await service.new_client()
    correlation_id = await service.submit_pending(client, "cust-1", CALLBACK_URL)

    response = await service.post_result(
        correlation_id,
        outcome="ready",
        score=700,
        valid_until="2099-01-01T01:00:00+01:00",
    )

    assert response.status == 200
    resource = await (await service.get_request(client, correlation_id)).json()
    assert resource["score"]["valid_until"] == "2099-01-01T00:00:00.000Z"


async def test_non_json_result_returns_400(service: Service) -> None:
    client = await service.new_client()
    correlation_id = await service.submit_pending(client, "cust-1", CALLBACK_URL)

    response = await service.http.put(
        f"/v1/backend/score-requests/{correlation_id}/result",
        data=b"ready",
        headers={**service.backend_headers(), "Content-Type": "application/json"},
    )

    assert response.status == 400
    assert response.content_type == PROBLEM
    assert count_rows(service.config, "scores") == 0


async def test_result_wrong_content_type_415(service: Service) -> None:
    client = await service.new_client()
    correlation_id = await service.submit_pending(client, "cust-1", CALLBACK_URL)

    response = await service.http.put(
        f"/v1/backend/score-requests/{correlation_id}/result",
        data=json.dumps({"outcome": "ready", "score": 700}).encode(),
        headers={**service.backend_headers(), "Content-Type": "text/plain"},
    )

    assert response.status == 415
    assert response.content_type == PROBLEM
    assert count_rows(service.config, "scores") == 0


async def test_control_character_in_customer_path_404(service: Service) -> None:
    client = await service.new_client()
    response = await service.http.get(
        "/v1/customers/cust-1%0A/score", headers=service.client_headers(client)
    )
    # No resource has a control character in its path.
    assert response.status == 404
    assert response.content_type == "application/problem+json"
