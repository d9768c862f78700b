"""Endpoints of client systems: requests, scores and their signing secret."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import timedelta

from aiohttp import web
from yarl import URL

from webhooks import bodies, clients
from webhooks.auth import authenticate_client
from webhooks.netpolicy import PolicyViolation
from webhooks.problems import Conflict, NotFound, TooManyRequests, ValidationFailed
from webhooks.ratelimit import retry_after_header
from webhooks.resolver import check_resolved_host
from webhooks.resources import request_resource, score_resource
from webhooks.schemas import CUSTOMER_ID_PATTERN, ScoreRequestBody
from webhooks.service import Submission
from webhooks.state import STATE, AppState
from webhooks.timefmt import format_time, utc_now

routes = web.RouteTableDef()

_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
# Correlation IDs are 30 characters; a longer path segment gets 404
# without a lookup and without echoing it.
_MAX_ID_LENGTH = 64


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


def _limit_submissions(state: AppState, client_id: str) -> None:
    """Raise 429 with Retry-After when the client's token bucket is empty."""
    wait_s = state.submission_limits.take(client_id)
    if wait_s > 0:
        retry_after = retry_after_header(wait_s)
        raise TooManyRequests(
            f"more than {state.config.limits.submissions_per_second:g} submissions "
            f"per second; retry after {retry_after} s",
            headers={"Retry-After": retry_after},
        )


def _location(correlation_id: str) -> str:
    return f"/v1/score-requests/{correlation_id}"


@routes.post("/v1/score-requests")
async def submit_score_request(request: web.Request) -> web.Response:
    state = request.app[STATE]
    client = await authenticate_client(request)
    _limit_submissions(state, client.id)
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
    if len(correlation_id) > _MAX_ID_LENGTH:
        raise NotFound(
            f"no score request with an ID of {len(correlation_id)} characters"
        )
    record = await state.store.get_score_request(correlation_id, client.id)
    if record is None:
        raise NotFound(f"no score request {correlation_id!r}")
    headers = {}
    if record.status.value == "pending":
        headers["Retry-After"] = str(state.config.scores.poll_hint_s)
    else:
        now = utc_now()
        await state.service.record_reads([correlation_id], "request", now)
        if record.fetched_at is None:
            record = replace(record, fetched_at=now)
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
    now = utc_now()
    score = await state.store.latest_valid_score(client.id, customer_id, now)
    if score is None:
        raise NotFound(f"no valid score for customer {customer_id!r}")
    await state.service.record_customer_read(client.id, score.id, now)
    return web.json_response({"customer_id": customer_id, "score": score_resource(score)})


@routes.post("/v1/clients/me/signing-secret/rotate")
async def rotate_signing_secret(request: web.Request) -> web.Response:
    """Give the client a new signing secret, shown only in this response.

    The previous secrets keep signing beside it for security.rotation_overlap.
    """
    state = request.app[STATE]
    client = await authenticate_client(request)
    overlap = timedelta(seconds=state.config.security.rotation_overlap_s)
    try:
        rotated = await clients.rotate_signing_secret(
            state.store, state.box, client.id, utc_now(), overlap
        )
    except clients.RotationConflict as exc:
        raise Conflict(f"{exc}; try again") from None
    state.keyring.forget_client(client.id)
    return web.json_response(
        {
            "signing_secret": rotated.signing_secret,
            "previous_secrets_expire_at": format_time(rotated.previous_expire_at),
        },
        status=201,
        headers={"Cache-Control": "no-store"},
    )
