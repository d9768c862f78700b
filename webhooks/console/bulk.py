"""Bulk replay of the failed deliveries that a filter selects.

The operator picks the filter, reviews a confirmation page that states how
many deliveries will be replayed, and only the POST from that page replays
them. If the set changed in between, the POST replays nothing and shows the
new count for another confirmation.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from aiohttp import web

from store import Store
from store.records import DeliveryFilter, DeliveryStatus
from webhooks import events
from webhooks.console.access import see_other
from webhooks.console.forms import FilterForm, parse_filters
from webhooks.console.render import CONSOLE, render
from webhooks.console.routes import is_in_flight
from webhooks.state import STATE
from webhooks.timefmt import utc_now

log = logging.getLogger("webhooks.console")

routes = web.RouteTableDef()

# Deliveries one bulk replay may take; scripts/replay.py handles larger sets.
BULK_REPLAY_MAX = 10_000
_PAGE_SIZE = 500  # rows per list_deliveries call, and IDs per replay call
_SAMPLE_SIZE = 50  # deliveries listed on the selection page


async def _failed_ids(store: Store, filter: DeliveryFilter) -> list[str]:
    """Return the IDs the filter selects, newest first, stopping once there
    are more than BULK_REPLAY_MAX of them."""
    found: list[str] = []
    cursor = None
    while len(found) <= BULK_REPLAY_MAX:
        page = await store.list_deliveries(filter, _PAGE_SIZE, cursor)
        found.extend(delivery.id for delivery in page.deliveries)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    return found


def _read_form(query: Mapping[str, str]) -> FilterForm:
    form = parse_filters(query, status=DeliveryStatus.FAILED)
    # Bulk replay takes the whole set, so page fields do not apply.
    form.values.pop("cursor")
    form.values.pop("limit")
    return form


def _context(form: FilterForm, count: int) -> dict[str, object]:
    return {
        "section": "replay",
        "form": form,
        "count": min(count, BULK_REPLAY_MAX),
        "too_many": count > BULK_REPLAY_MAX,
        "limit": BULK_REPLAY_MAX,
        "event_types": events.EVENT_TYPES,
        "now": utc_now(),
        "is_in_flight": is_in_flight,
    }


@routes.get("/replay")
async def select_failed(request: web.Request) -> web.Response:
    """Show the failed deliveries a filter selects, before any replay."""
    form = _read_form(request.query)
    context = _context(form, 0)
    context.update(sample=[], replayed=request.query.get("replayed"))
    if form.errors:
        return render(request, "replay.html", context, status=400)

    store = request.config_dict[STATE].store
    count = await store.count_deliveries(form.filter)
    sample = await store.list_deliveries(form.filter, _SAMPLE_SIZE, None)
    context.update(_context(form, count))
    context["sample"] = sample.deliveries
    return render(request, "replay.html", context)


@routes.get("/replay/confirm")
async def confirm_replay(request: web.Request) -> web.Response:
    form = _read_form(request.query)
    if form.errors:
        return see_other(f"{CONSOLE}/replay?{form.query()}")
    count = await request.config_dict[STATE].store.count_deliveries(form.filter)
    context = _context(form, count)
    context["changed_from"] = None
    return render(request, "replay_confirm.html", context)


@routes.post("/replay")
async def replay_failed(request: web.Request) -> web.Response:
    """Replay the selected failed deliveries if they are still the confirmed count."""
    posted = await request.post()
    form = _read_form({name: str(value) for name, value in posted.items()})
    expected = str(posted.get("expected_count", ""))
    if form.errors or not expected.isdigit():
        return see_other(f"{CONSOLE}/replay?{form.query()}")

    store = request.config_dict[STATE].store
    ids = await _failed_ids(store, form.filter)
    if len(ids) != int(expected) or len(ids) > BULK_REPLAY_MAX:
        context = _context(form, len(ids))
        context["changed_from"] = int(expected)
        return render(request, "replay_confirm.html", context, status=409)

    replayed = 0
    for start in range(0, len(ids), _PAGE_SIZE):
        chunk = ids[start : start + _PAGE_SIZE]
        # Only failed ones: a delivery replayed meanwhile by someone else is
        # left alone.
        done = await store.replay_deliveries(
            chunk, utc_now(), statuses=(DeliveryStatus.FAILED,)
        )
        replayed += len(done)
    log.info(
        "replayed %d failed deliveries from the console",
        replayed,
        extra={"event": "console_bulk_replay", "count": replayed},
    )
    return see_other(f"{CONSOLE}/replay?{form.query(replayed=str(replayed))}")
