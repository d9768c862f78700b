"""Endpoints of client systems: submit a score request, read requests and scores."""

from __future__ import annotations

import re

from aiohttp import web
from yarl import URL

from webhooks import bodies
from webhooks.auth import authenticate_client
from webhooks.netpolicy import PolicyViolation
from webhooks.problems import NotFound, ValidationFailed
from webhooks.resolver import check_resolved_host
from webhooks.resources import request_resource, score_resource
from webhooks.schemas import CUSTOMER_ID_PATTERN, ScoreRequestBody
from webhooks.service import Submission
from webhooks.state import STATE, AppState
from webhooks.timefmt import utc_now

routes = web.RouteTableDef()

_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY.match(key):
        raise ValidationFailed(
            "the Idempotency-Key header must be 1 to 255 visible ASCII characters",
            errors={"Idempotency-Key": ["must be 1 to 255 visible ASCII characters"]},
        )
    return key


async def _check_callback_host(state: AppState, callback_url: str) -> None:
    """Raise 422 unless the callback host resolves to public addresses only."""
    url = URL(callback_url)
    assert url.raw_host is not None and url.port is not None  # checked by the schema
    try:
        await check_resolved_host(state.policy, state.resolver, url.raw_host, url.port)
    except PolicyViolation as exc:
        raise ValidationFailed(
            "invalid fields: callback_url", errors={"callback_url": [str(exc)]}
        ) from None


def _location(correlation_id: str) -> str:
    return f"/v1/score-requests/{correlation_id}"


@routes.post("/v1/score-requests")
async def submit_score_request(request: web.Request) -> web.Response:
    state = request.app[STATE]
    client = await authenticate_client(request)
    idempotency_key = _idempotency_key(request)
    document = await bodies.read_json(request)
    body = bodies.load(ScoreRequestBody(state.policy), document)
    await _check_callback_host(state, body["callback_url"])

    result = await state.service.submit(
        Submission(
            client_id=client.id,
            customer_id=body["customer_id"],
            callback_url=body["callback_url"],
            metadata=body["metadata"],
            idempotency_key=idempotency_key,
        ),
        utc_now(),
    )
    headers = {"Location": _location(result.request.correlation_id)}
    if result.request.status.value == "pending":
        headers["Retry-After"] = str(state.config.scores.poll_hint_s)
    if result.replayed:
        headers["Idempotent-Replayed"] = "true"
    return web.json_response(
        request_resource(result.request), status=result.status_code, headers=headers
    )


@routes.get("/v1/score-requests/{correlation_id}")
async def get_score_request(request: web.Request) -> web.Response:
    state = request.app[STATE]
    client = await authenticate_client(request)
    correlation_id = request.match_info["correlation_id"]
    record = await state.store.get_score_request(correlation_id, client.id)
    if record is None:
        raise NotFound(f"no score request {correlation_id!r}")
    headers = {}
    if record.status.value == "pending":
        headers["Retry-After"] = str(state.config.scores.poll_hint_s)
    return web.json_response(request_resource(record), headers=headers)


@routes.get("/v1/customers/{customer_id}/score")
async def get_customer_score(request: web.Request) -> web.Response:
    state = request.app[STATE]
    client = await authenticate_client(request)
    customer_id = request.match_info["customer_id"]
    if not re.match(CUSTOMER_ID_PATTERN, customer_id):
        raise ValidationFailed(
            "customer_id must be 1 to 64 characters of A-Z a-z 0-9 . _ : -",
            errors={"customer_id": ["must be 1 to 64 characters of A-Z a-z 0-9 . _ : -"]},
        )
    score = await state.store.latest_valid_score(client.id, customer_id, utc_now())
    if score is None:
        raise NotFound(f"no valid score for customer {customer_id!r}")
    return web.json_response({"customer_id": customer_id, "score": score_resource(score)})
