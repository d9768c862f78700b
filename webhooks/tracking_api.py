"""Request progress: timelines, fetch tracking, and a client's own deliveries."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from aiohttp import web
from marshmallow import RAISE, Schema, ValidationError, fields, validate

from store.records import Audience, DeliveryFilter, DeliveryStatus
from webhooks.auth import authenticate_client, require_admin
from webhooks.problems import NotFound, ValidationFailed
from webhooks.resource_schemas import (
    ClientDeliveryPageResource,
    ClientHealthResource,
    TimelineResource,
)
from webhooks.resources import request_resource
from webhooks.state import STATE
from webhooks.timefmt import utc_now

routes = web.RouteTableDef()

MAX_PAGE_SIZE = 500
_MAX_ID_LENGTH = 64
_DURATION = re.compile(r"^(\d{1,9})([smhd]?)$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_MAX_DURATION_S = 3650 * 86400

_TIMELINE = TimelineResource()
_CLIENT_DELIVERY_PAGE = ClientDeliveryPageResource()
_CLIENT_HEALTH = ClientHealthResource()


def parse_duration(text: str) -> timedelta:
    """Parse ``90``, ``90s``, ``15m``, ``2h`` or ``3d``; raise ValueError otherwise."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValueError("a duration is a whole number with s, m, h or d, such as 2h")
    seconds = int(match[1]) * _UNIT_SECONDS[match[2]]
    if seconds > _MAX_DURATION_S:
        raise ValueError("a duration is at most 3650d")
    return timedelta(seconds=seconds)


class Duration(fields.Field):
    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> timedelta:
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            raise ValidationError(str(exc)) from None


class UnfetchedQuery(Schema):
    class Meta:
        unknown = RAISE

    delivered_not_fetched_for = Duration(required=True)
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=MAX_PAGE_SIZE))
    cursor = fields.String(validate=validate.Length(min=1, max=200))


class ClientDeliveryQuery(Schema):
    class Meta:
        unknown = RAISE

    status = fields.String(
        validate=validate.OneOf([s.value for s in DeliveryStatus]), load_default=None
    )
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=MAX_PAGE_SIZE))
    cursor = fields.String(validate=validate.Length(min=1, max=200))


def _load_query(schema: Schema, request: web.Request) -> dict[str, Any]:
    try:
        return schema.load(dict(request.query))
    except ValidationError as exc:
        names = ", ".join(sorted(str(name) for name in exc.messages))
        raise ValidationFailed(
            f"invalid query parameters: {names}", errors=exc.messages
        ) from None


def _invalid_cursor() -> ValidationFailed:
    return ValidationFailed(
        "the cursor is not valid; pass next_cursor from the previous page",
        errors={"cursor": ["Not a valid cursor."]},
    )


async def _timeline(
    request: web.Request, client_id: str | None, audience: Audience | None
) -> web.Response:
    store = request.app[STATE].store
    correlation_id = request.match_info["correlation_id"]
    found = None
    if len(correlation_id) <= _MAX_ID_LENGTH:
        found = await store.get_score_request(correlation_id, client_id)
    if found is None:
        raise NotFound(f"no score request {correlation_id!r}")
    steps = await store.list_timeline(correlation_id, audience)
    return web.json_response(
        _TIMELINE.dump({"correlation_id": correlation_id, "steps": steps})
    )


@routes.get("/v1/score-requests/{correlation_id}/timeline")
async def get_client_timeline(request: web.Request) -> web.Response:
    """Return the steps of one of the client's own requests, without the backend's side."""
    client = await authenticate_client(request)
    return await _timeline(request, client.id, Audience.CLIENT)


@routes.get("/v1/admin/score-requests/{correlation_id}/timeline")
async def get_admin_timeline(request: web.Request) -> web.Response:
    """Return the steps of any request, the attempts of the backend event included."""
    require_admin(request)
    return await _timeline(request, None, None)


@routes.get("/v1/admin/score-requests")
async def list_unfetched(request: web.Request) -> web.Response:
    """List requests whose webhook was accepted but whose result was not read in time."""
    require_admin(request)
    query = _load_query(UnfetchedQuery(), request)
    delivered_before = utc_now() - query["delivered_not_fetched_for"]
    try:
        found, next_cursor = await request.app[STATE].store.list_unfetched_requests(
            delivered_before, query["limit"], query.get("cursor")
        )
    except ValueError:
        raise _invalid_cursor() from None
    # request_resource already dumps each request through its schema.
    return web.json_response(
        {"requests": [request_resource(r) for r in found], "next_cursor": next_cursor}
    )


@routes.get("/v1/clients/me/deliveries")
async def list_own_deliveries(request: web.Request) -> web.Response:
    """List the client's deliveries, such as those held or failed during an outage."""
    client = await authenticate_client(request)
    query = _load_query(ClientDeliveryQuery(), request)
    status = DeliveryStatus(query["status"]) if query["status"] else None
    try:
        page = await request.app[STATE].store.list_deliveries(
            DeliveryFilter(client_id=client.id, status=status),
            query["limit"],
            query.get("cursor"),
        )
    except ValueError:
        raise _invalid_cursor() from None
    return web.json_response(
        _CLIENT_DELIVERY_PAGE.dump(
            {"deliveries": page.deliveries, "next_cursor": page.next_cursor}
        )
    )


@routes.get("/v1/clients/me/health")
async def get_own_health(request: web.Request) -> web.Response:
    """Return the health of the client's receivers: failing since, last error, held count."""
    client = await authenticate_client(request)
    store = request.app[STATE].store
    receivers = await store.list_receiver_health(client.id)
    failing = [r for r in receivers if r.failing_since is not None]
    latest_error = max(
        (r for r in receivers if r.last_error_at is not None),
        key=lambda r: r.last_error_at,
        default=None,
    )
    held = await store.count_deliveries(
        DeliveryFilter(client_id=client.id, status=DeliveryStatus.HELD)
    )
    failed = await store.count_deliveries(
        DeliveryFilter(client_id=client.id, status=DeliveryStatus.FAILED)
    )
    return web.json_response(
        _CLIENT_HEALTH.dump(
            {
                "failing_since": min((r.failing_since for r in failing), default=None),
                "last_error": latest_error.last_error if latest_error else None,
                "held_count": held,
                "failed_count": failed,
                "receivers": receivers,
            }
        )
    )
