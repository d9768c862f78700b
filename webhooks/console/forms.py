"""The delivery filters of the console's forms, read from a query string.

HTML forms send every field, empty or not, so an empty value means "any".
Times come from ``datetime-local`` inputs, which carry no offset, and are
read as UTC; a time with an offset is converted to UTC.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from urllib.parse import urlencode

from store.records import DeliveryFilter, DeliveryStatus
from webhooks import events

PAGE_SIZES = (25, 50, 100, 200)
DEFAULT_PAGE_SIZE = 50
FILTER_FIELDS = ("status", "client_id", "event_type", "host", "since", "until")
_MAX_TEXT = 255
_MAX_CURSOR = 200


@dataclass(frozen=True, kw_only=True)
class FilterForm:
    """A filter as the operator typed it, with what it means to the store."""

    values: dict[str, str]  # field name to the text, echoed back into the form
    errors: dict[str, str] = field(default_factory=dict)  # field name to message
    filter: DeliveryFilter = field(default_factory=DeliveryFilter)
    limit: int = DEFAULT_PAGE_SIZE
    cursor: str | None = None

    def query(self, **changes: str | None) -> str:
        """Return this form's query string with ``changes``; None drops a field."""
        values: dict[str, str | None] = {**self.values, **changes}
        return urlencode({name: text for name, text in values.items() if text})


def _parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _check_choice(text: str, choices: tuple[str, ...]) -> str | None:
    return None if text in choices else f"choose one of {', '.join(choices)}"


def _text_error(text: str, max_length: int) -> str | None:
    if len(text) > max_length:
        return f"at most {max_length} characters"
    return None


def parse_filters(
    query: Mapping[str, str], *, status: DeliveryStatus | None = None
) -> FilterForm:
    """Read the filter fields of a query string.

    ``status`` fixes the status, as the bulk replay does for failed
    deliveries, and then the query's own status is ignored.
    """
    values = {name: query.get(name, "").strip() for name in FILTER_FIELDS}
    values["limit"] = query.get("limit", "").strip()
    values["cursor"] = query.get("cursor", "").strip()
    if status is not None:
        values["status"] = status.value
    errors: dict[str, str] = {}
    statuses = tuple(item.value for item in DeliveryStatus)
    checks = {
        "status": lambda text: _check_choice(text, statuses),
        "event_type": lambda text: _check_choice(text, events.EVENT_TYPES),
        "client_id": lambda text: _text_error(text, 64),
        "host": lambda text: _text_error(text, _MAX_TEXT),
        "cursor": lambda text: _text_error(text, _MAX_CURSOR),
    }
    for name, check in checks.items():
        message = check(values[name]) if values[name] else None
        if message is not None:
            errors[name] = message

    times: dict[str, datetime] = {}
    for name in ("since", "until"):
        if not values[name]:
            continue
        try:
            times[name] = _parse_time(values[name])
        except ValueError:
            errors[name] = "enter a date and time such as 2026-12-04T10:00"
            continue
        # A datetime-local input accepts only this form, shown here in UTC.
        values[name] = times[name].strftime("%Y-%m-%dT%H:%M:%S")
    if "since" in times and "until" in times and times["since"] >= times["until"]:
        errors["until"] = "must be later than the start of the window"

    limit = DEFAULT_PAGE_SIZE
    if values["limit"]:
        if values["limit"].isdigit() and int(values["limit"]) in PAGE_SIZES:
            limit = int(values["limit"])
        else:
            errors["limit"] = f"choose one of {', '.join(map(str, PAGE_SIZES))}"

    form = FilterForm(values=values, errors=errors, limit=limit)
    if errors:
        return form
    return replace(
        form,
        filter=DeliveryFilter(
            status=DeliveryStatus(values["status"]) if values["status"] else None,
            client_id=values["client_id"] or None,
            event_type=values["event_type"] or None,
            host=values["host"] or None,
            since=times.get("since"),
            until=times.get("until"),
        ),
        cursor=values["cursor"] or None,
    )
