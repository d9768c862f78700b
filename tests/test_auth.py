"""Bearer tokens on every protected endpoint, and isolation between clients."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import Service, count_rows
from webhooks import ids
from webhooks.clients import NewClient

CALLBACK_URL = "http://127.0.0.1:9/hooks"
SUBMISSION = {"customer_id": "cust-2", "callback_url": CALLBACK_URL}
RESULT_PATH = "/v1/backend/score-requests/{correlation_id}/result"
RESULT = {"outcome": "ready", "score": 700}

# (method, path, role that may call it, JSON body). The paths name a
# request, customer and delivery that the `prepared` fixture creates.
ENDPOINTS = [
    ("POST", "/v1/score-requests", "client", SUBMISSION),
    ("GET", "/v1/score-requests/{correlation_id}", "client", None),
    ("GET", "/v1/customers/cust-1/score", "client", None),
    ("PUT", RESULT_PATH, "backend", RESULT),
    ("POST", "/v1/admin/clients", "admin", {"name": "another"}),
    ("GET", "/v1/admin/deliveries", "admin", None),
    ("GET", "/v1/admin/deliveries/{delivery_id}", "admin", None),
    ("POST", "/v1/admin/deliveries/{delivery_id}/replay", "admin", None),
]
ENDPOINT_IDS = [f"{method} {path}" for method, path, _, _ in ENDPOINTS]
ROLES = ("client", "backend", "admin")


class Prepared:
    """A service with one client, one pending request and its backend delivery."""

    def __init__(
        self, service: Service, client: NewClient, correlation_id: str, delivery_id: str
    ):
        self.service = service
        self.client = client
        self.correlation_id = correlation_id
        self.delivery_id = delivery_id

    def path(self, template: str) -> str:
        return template.format(
            correlation_id=self.correlation_id, delivery_id=self.delivery_id
        )

    def token(self, role: str) -> str:
        tokens = {
            "client": self.client.api_key,
            "backend": self.service.config.backend.token,
            "admin": self.service.config.admin.token,
        }
        return tokens[role]

    async def call(
        self, method: str, template: str, body: Any, authorization: str | None
    ):
        headers = {} if authorization is None else {"Authorization": authorization}
        return await self.service.http.request(
            method, self.path(template), json=body, headers=headers
        )


@pytest.fixture
async def prepared(service: Service) -> Prepared:
    client = await service.new_client()
    correlation_id = await service.submit_pending(client, "cust-1", CALLBACK_URL)
    deliveries = await service.list_deliveries(event_type="score.requested")
    return Prepared(service, client, correlation_id, deliveries[0]["id"])


def wrong_credentials(role: str) -> list[tuple[str, str | None]]:
    """Return (case name, Authorization header) pairs that must not pass as ``role``.

    A role name in place of a header is that role's valid token, which exists
    only once the ``prepared`` fixture has run.
    """
    cases: list[tuple[str, str | None]] = [
        ("missing", None),
        ("empty-bearer", "Bearer "),
        ("basic-scheme", "Basic dXNlcjpwYXNz"),
        ("unknown-token", "Bearer sk_not-a-real-key-0123456789abcdef"),
    ]
    cases += [(f"{other}-token", other) for other in ROLES if other != role]
    return cases


CASES = [
    pytest.param(endpoint, name, authorization, id=f"{endpoint_id} {name}")
    for endpoint, endpoint_id in zip(ENDPOINTS, ENDPOINT_IDS, strict=True)
    for name, authorization in wrong_credentials(endpoint[2])
]


@pytest.mark.parametrize(("endpoint", "case", "authorization"), CASES)
async def test_wrong_token_gets_401(
    prepared: Prepared, endpoint: tuple, case: str, authorization: str | None
) -> None:
    method, template, _, body = endpoint
    if authorization in ROLES:
        # Another role's valid token, sent as a bearer token.
        authorization = f"Bearer {prepared.token(authorization)}"

    response = await prepared.call(method, template, body, authorization)

    assert response.status == 401
    assert response.headers.get("WWW-Authenticate", "").startswith("Bearer")
    assert response.content_type == "application/problem+json"
    assert (await response.json())["type"] == "/problems/unauthorized"


async def test_rejected_token_changes_nothing(prepared: Prepared) -> None:
    service = prepared.service

    submitted = await prepared.call(
        "POST", "/v1/score-requests", SUBMISSION, f"Bearer {prepared.token('admin')}"
    )
    result = await prepared.call(
        "PUT", RESULT_PATH, RESULT, f"Bearer {prepared.token('client')}"
    )

    assert submitted.status == 401
    assert result.status == 401
    assert count_rows(service.config, "score_requests") == 1
    assert count_rows(service.config, "scores") == 0
    assert count_rows(service.config, "clients") == 1


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=ENDPOINT_IDS)
async def test_right_token_is_accepted(prepared: Prepared, endpoint: tuple) -> None:
    method, template, role, body = endpoint
    if template.endswith("/replay"):
        # Only failed or delivered deliveries can be replayed, so the backend
        # event gets 409 while it is pending and 202 once it was delivered.
        expected = {202, 409}
    elif template.startswith("/v1/customers/"):
        expected = {404}  # There is no score yet, so a 404 shows the token passed.
    else:
        expected = {200, 201, 202}

    response = await prepared.call(
        method, template, body, f"Bearer {prepared.token(role)}"
    )

    assert response.status in expected, await response.text()


async def test_other_clients_request_looks_unknown(service: Service) -> None:
    owner = await service.new_client("owner")
    other = await service.new_client("other")
    correlation_id = await service.submit_pending(owner, "cust-1", CALLBACK_URL)
    unknown_id = ids.correlation_id()

    foreign = await service.get_request(other, correlation_id)
    unknown = await service.get_request(other, unknown_id)
    own = await service.get_request(owner, correlation_id)

    assert own.status == 200
    assert foreign.status == 404
    assert foreign.status == unknown.status
    assert foreign.content_type == unknown.content_type
    foreign_problem = await foreign.json()
    unknown_problem = await unknown.json()
    assert foreign_problem["type"] == unknown_problem["type"]
    assert foreign_problem["title"] == unknown_problem["title"]
    foreign_detail = foreign_problem["detail"].replace(correlation_id, "ID")
    unknown_detail = unknown_problem["detail"].replace(unknown_id, "ID")
    assert foreign_detail == unknown_detail
    assert set(foreign_problem) == set(unknown_problem)


async def test_other_clients_customer_is_404(service: Service) -> None:
    owner = await service.new_client("owner")
    other = await service.new_client("other")
    correlation_id = await service.submit_pending(owner, "cust-1", CALLBACK_URL)
    response = await service.post_result(correlation_id, outcome="ready", score=700)
    assert response.status == 200

    own = await service.get_customer_score(owner, "cust-1")
    foreign = await service.get_customer_score(other, "cust-1")
    never_seen = await service.get_customer_score(other, "cust-unknown")

    assert own.status == 200
    assert foreign.status == 404
    assert foreign.content_type == "application/problem+json"
    assert (await foreign.json())["type"] == (await never_seen.json())["type"]


async def test_other_clients_score_not_reused(service: Service) -> None:
    owner = await service.new_client("owner")
    other = await service.new_client("other")
    correlation_id = await service.submit_pending(owner, "cust-1", CALLBACK_URL)
    response = await service.post_result(correlation_id, outcome="ready", score=700)
    assert response.status == 200

    response = await service.submit(
        other, customer_id="cust-1", callback_url=CALLBACK_URL
    )

    assert response.status == 202
    assert "score" not in await response.json()
