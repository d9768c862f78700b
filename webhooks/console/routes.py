"""The console's pages: overview, deliveries, one delivery, one request."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from functools import cache
from importlib import resources

from aiohttp import web

from store.records import DeliveryFilter, DeliveryRecord, DeliveryStatus
from webhooks import events
from webhooks.console.access import error_page, see_other
from webhooks.console.forms import PAGE_SIZES, parse_filters
from webhooks.console.render import CONSOLE, render
from webhooks.state import STATE
from webhooks.timefmt import utc_now

log = logging.getLogger("webhooks.console")

routes = web.RouteTableDef()

# Statuses that replay_deliveries makes due again.
REPLAYABLE = (DeliveryStatus.FAILED, DeliveryStatus.DELIVERED, DeliveryStatus.HELD)
_STATIC_TYPES = {".css": "text/css", ".js": "text/javascript"}


def is_in_flight(delivery: DeliveryRecord, now: datetime) -> bool:
    return delivery.lease_expires_at is not None and delivery.lease_expires_at > now


def _filter_choices() -> dict[str, object]:
    return {
        "statuses": [status.value for status in DeliveryStatus],
        "event_types": events.EVENT_TYPES,
        "page_sizes": PAGE_SIZES,
    }


@routes.get("/")
async def overview(request: web.Request) -> web.Response:
    state = request.config_dict[STATE]
    now = utc_now()
    counts = await state.store.count_deliveries_by_state(now)
    schema = await state.store.schema_version()
    states = [
        ("Pending", counts.get("pending", 0), "pending"),
        ("In flight", counts.get("in_flight", 0), None),
        ("Held", counts.get("held", 0), "held"),
        ("Failed", counts.get("failed", 0), "failed"),
    ]
    fetch_within = timedelta(seconds=state.config.scores.fetch_expected_within_s)
    context = {
        "section": "overview",
        "states": states,
        "unfetched": await state.store.count_unfetched_requests(now - fetch_within),
        "fetch_within": fetch_within,
        "open_circuit_count": state.dispatcher.open_circuit_count(),
        "open_circuits": state.dispatcher.open_circuits(),
        "store_kind": state.store.kind,
        "schema_version": schema.applied,
        "counted_at": now,
    }
    return render(request, "overview.html", context)


@routes.get("/deliveries")
async def list_deliveries(request: web.Request) -> web.Response:
    form = parse_filters(request.query)
    page = None
    if not form.errors:
        try:
            page = await request.config_dict[STATE].store.list_deliveries(
                form.filter, form.limit, form.cursor
            )
        except ValueError:
            form.errors["cursor"] = (
                "not a valid page link; start again from the first page"
            )
    context = {
        "section": "deliveries",
        "form": form,
        "page": page,
        "now": utc_now(),
        "is_in_flight": is_in_flight,
        **_filter_choices(),
    }
    return render(
        request, "deliveries.html", context, status=400 if form.errors else 200
    )


async def _delivery_page(
    request: web.Request, delivery_id: str, *, notice: str | None, error: str | None
) -> web.Response:
    store = request.config_dict[STATE].store
    delivery = await store.get_delivery(delivery_id)
    if delivery is None:
        message = f"There is no delivery {delivery_id}."
        return error_page(request, 404, "Delivery not found", message)
    attempts = await store.list_attempts(delivery_id)
    now = utc_now()
    context = {
        "section": "deliveries",
        "delivery": delivery,
        "attempts": attempts,
        "in_flight": is_in_flight(delivery, now),
        "replayable": delivery.status in REPLAYABLE,
        "notice": notice,
        "error": error,
    }
    return render(
        request, "delivery.html", context, status=409 if error is not None else 200
    )


@routes.get("/deliveries/{delivery_id}")
async def show_delivery(request: web.Request) -> web.Response:
    notice = None
    if request.query.get("replayed"):
        notice = "Replay queued: the delivery is due now and keeps its webhook-id."
    return await _delivery_page(
        request, request.match_info["delivery_id"], notice=notice, error=None
    )


@routes.post("/deliveries/{delivery_id}/replay")
async def replay_delivery(request: web.Request) -> web.Response:
    """Make one failed, held or delivered delivery due now, keeping its webhook-id."""
    delivery_id = request.match_info["delivery_id"]
    store = request.config_dict[STATE].store
    replayed = await store.replay_deliveries([delivery_id], utc_now())
    if not replayed:
        error = "Only failed, held or delivered deliveries can be replayed."
        return await _delivery_page(request, delivery_id, notice=None, error=error)
    log.info(
        "replayed delivery %s from the console",
        delivery_id,
        extra={"event": "console_replay", "delivery_id": delivery_id},
    )
    return see_other(f"{CONSOLE}/deliveries/{delivery_id}?replayed=1")


@routes.get("/requests")
async def show_request(request: web.Request) -> web.Response:
    """Find a score request by correlation ID and show it with its timeline."""
    correlation_id = request.query.get("correlation_id", "").strip()
    context: dict[str, object] = {
        "section": "requests",
        "correlation_id": correlation_id,
        "record": None,
        "timeline": [],
        "deliveries": [],
        "now": utc_now(),
        "is_in_flight": is_in_flight,
    }
    if not correlation_id:
        return render(request, "request.html", context)

    store = request.config_dict[STATE].store
    record = await store.get_score_request(correlation_id)
    if record is None:
        return render(request, "request.html", context, status=404)
    # Operators see every step, the backend's side included.
    timeline = await store.list_timeline(correlation_id, None)
    delivery_ids = {
        str(entry.detail["delivery_id"])
        for entry in timeline
        if entry.detail and entry.detail.get("delivery_id")
    }
    deliveries = []
    if delivery_ids:
        page = await store.list_deliveries(
            DeliveryFilter(delivery_ids=tuple(sorted(delivery_ids))),
            len(delivery_ids),
            None,
        )
        deliveries = page.deliveries
    context.update(record=record, timeline=timeline, deliveries=deliveries)
    return render(request, "request.html", context)


@cache
def _static_file(name: str) -> bytes:
    return resources.files("webhooks.console").joinpath("static", name).read_bytes()


@routes.get("/static/{name}")
async def static_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    suffix = name[name.rfind(".") :] if "." in name else ""
    if "/" in name or suffix not in _STATIC_TYPES:
        raise web.HTTPNotFound()
    try:
        body = _static_file(name)
    except FileNotFoundError:
        raise web.HTTPNotFound() from None
    return web.Response(
        body=body,
        content_type=_STATIC_TYPES[suffix],
        charset="utf-8",
        headers={"Cache-Control": "public, max-age=86400"},
    )
