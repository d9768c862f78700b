"""Names and helpers that both stores use for retention and erasure."""

from __future__ import annotations

import json
from typing import Any

# Keys of the counts that ``Store.delete_expired`` returns.
RETENTION_KINDS = ("score", "request_metadata", "timeline_entry", "idempotency_key")

# Keys of the counts that ``Store.erase_customer`` returns: rows changed per table.
ERASURE_TABLES = (
    "scores",
    "idempotency_keys",
    "timeline_entries",
    "score_requests",
    "computations",
    "deliveries",
    "attempts",
)

# The failure reason of a request or computation that was still pending
# when its customer was erased.
ERASED_REASON = "the customer's data was erased"

_MEMBER = "customer_id"


def replace_customer_id(
    payload: bytes, customer_id: str, replacement: str
) -> bytes | None:
    """Return a JSON body whose ``customer_id`` members equal to ``customer_id``
    now hold ``replacement``, at any depth.

    Returns None when no member matched or the body is not JSON, so the
    caller leaves that row alone. A changed body is written in compact form
    (no spaces), the form in which the service writes event bodies.
    """
    try:
        document = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not _replace(document, customer_id, replacement):
        return None
    return json.dumps(document, separators=(",", ":")).encode()


def _replace(node: Any, customer_id: str, replacement: str) -> bool:
    changed = False
    if isinstance(node, dict):
        for key, value in node.items():
            if key == _MEMBER and value == customer_id:
                node[key] = replacement
                changed = True
            else:
                changed |= _replace(value, customer_id, replacement)
    elif isinstance(node, list):
        for item in node:
            changed |= _replace(item, customer_id, replacement)
    return changed


def counts_by_table(found: dict[str, int]) -> dict[str, int]:
    """Return ``found`` with a 0 for every erasure table it does not name."""
    return {table: found.get(table, 0) for table in ERASURE_TABLES}
