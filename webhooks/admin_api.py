"""Operator endpoints: clients, and the deliveries with their attempts and replay."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from marshmallow import RAISE, Schema, ValidationError, fields, validate

from store.records import DeliveryFilter, DeliveryStatus
from webhooks import bodies, events
from webhooks.auth import require_admin
from webhooks.clients import create_client
from webhooks.erasure import ClientNotFound, erase_customer, erasure_resource
from webhooks.problems import Conflict, NotFound, ValidationFailed
from webhooks.resource_schemas import CreatedClientResource
from webhooks.resources import (
    delivery_detail_resource,
    delivery_page_resource,
    delivery_resource,
)
from webhooks.schemas import CUSTOMER_ID_PATTERN, ClientBody
from webhooks.state import STATE
from webhooks.timefmt import utc_now

routes = web.RouteTableDef()

MAX_PAGE_SIZE = 500


class DeliveryQuery(Schema):
    class Meta:
        unknown = RAISE

    status = fields.String(validate=validate.OneOf([s.value for s in DeliveryStatus]))
    client_id = fields.String(validate=validate.Length(min=1, max=64))
    event_type = fields.String(validate=validate.OneOf(events.EVENT_TYPES))
    host = fields.String(validate=validate.Length(min=1, max=255))  # host:port
    since = fields.AwareDateTime(format="iso")
    until = fields.AwareDateTime(format="iso")
    limit = fields.Integer(
        load_default=100, validate=validate.Range(min=1, max=MAX_PAGE_SIZE)
    )
    cursor = fields.String(validate=validate.Length(min=1, max=200))


def _query(request: web.Request) -> dict[str, Any]:
    try:
        return DeliveryQuery().load(dict(request.query))
    except ValidationError as exc:
        names = ", ".join(sorted(str(name) for name in exc.messages))
        raise ValidationFailed(f"invalid query parameters: {names}", errors=exc.messages) from None


@routes.post("/v1/admin/clients")
async def post_client(request: web.Request) -> web.Response:
    """Create a client; the API key and signing secret are shown only here."""
    require_admin(request)
    state = request.app[STATE]
    body = bodies.load(ClientBody(), await bodies.read_json(request))
    created = await create_client(state.store, state.box, body["name"])
    resource = {
        "client_id": created.record.id,
        "name": created.record.name,
        "api_key": created.api_key,
        "signing_secret": created.signing_secret,
    }
    return web.json_response(CreatedClientResource().dump(resource), status=201)


@routes.get("/v1/admin/deliveries")
async def list_deliveries(request: web.Request) -> web.Response:
    require_admin(request)
    query = _query(request)
    filter = DeliveryFilter(
        status=DeliveryStatus(query["status"]) if "status" in query else None,
        client_id=query.get("client_id"),
        event_type=query.get("event_type"),
        host=query.get("host"),
        since=query.get("since"),
        until=query.get("until"),
    )
    try:
        page = await request.app[STATE].store.list_deliveries(
            filter, query["limit"], query.get("cursor")
        )
    except ValueError:
        raise ValidationFailed(
            "the cursor is not valid; pass next_cursor from the previous page",
            errors={"cursor": ["Not a valid cursor."]},
        ) from None
    return web.json_response(delivery_page_resource(page))


@routes.get("/v1/admin/deliveries/{delivery_id}")
async def get_delivery(request: web.Request) -> web.Response:
    require_admin(request)
    store = request.app[STATE].store
    delivery_id = request.match_info["delivery_id"]
    delivery = await store.get_delivery(delivery_id)
    if delivery is None:
        raise NotFound(f"no delivery {delivery_id!r}")
    attempts = await store.list_attempts(delivery_id)
    return web.json_response(delivery_detail_resource(delivery, attempts))


@routes.post("/v1/admin/deliveries/{delivery_id}/replay")
async def replay_delivery(request: web.Request) -> web.Response:
    """Make a failed or delivered delivery due now, keeping its webhook-id."""
    require_admin(request)
    store = request.app[STATE].store
    delivery_id = request.match_info["delivery_id"]
    delivery = await store.get_delivery(delivery_id)
    if delivery is None:
        raise NotFound(f"no delivery {delivery_id!r}")
    replayed = await store.replay_deliveries([delivery_id], utc_now())
    if not replayed:
        raise Conflict(
            f"delivery {delivery_id!r} is {delivery.status.value}; only failed or "
            "delivered deliveries can be replayed"
        )
    updated = await store.get_delivery(delivery_id)
    assert updated is not None
    return web.json_response(delivery_resource(updated), status=202)


@routes.delete("/v1/admin/clients/{client_id}/customers/{customer_id}")
async def erase_client_customer(request: web.Request) -> web.Response:
    """Erase a client's customer and return the rows changed per table."""
    require_admin(request)
    state = request.app[STATE]
    client_id = request.match_info["client_id"]
    customer_id = request.match_info["customer_id"]
    if not re.match(CUSTOMER_ID_PATTERN, customer_id):
        message = "must be 1 to 64 characters of A-Z a-z 0-9 . _ : -"
        raise ValidationFailed(
            f"customer_id {message}", errors={"customer_id": [message]}
        )
    try:
        erasure = await erase_customer(
            state.store,
            state.config.master_key,
            client_id,
            customer_id,
            requested_by="admin-api",
            now=utc_now(),
        )
    except ClientNotFound:
        raise NotFound(f"no client {client_id!r}") from None
    return web.json_response(erasure_resource(erasure))
