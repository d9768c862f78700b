"""Erasure of one customer of one client, for the CLI and the admin API.

The store replaces the customer ID by a keyed hash and keeps the hash in an
audit record. An operator who is asked again about the same customer can
compute the hash from the ID and the master key and find the record.
Without the master key the hash cannot be computed, so guessed IDs cannot
be tested against it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from store import Store
from store.records import ErasureRecord
from webhooks import ids
from webhooks.resource_schemas import ErasureResource

log = logging.getLogger("webhooks.erasure")

_HKDF_INFO = b"customer-erasure"


class ClientNotFound(Exception):
    """No client has this ID."""


def customer_hash(master_key: bytes, client_id: str, customer_id: str) -> str:
    """Return the keyed hash that replaces a customer ID: HMAC-SHA256, in hex.

    The HMAC key is derived from the master key with HKDF-SHA256 (no salt,
    info ``customer-erasure``), so it differs from the key that encrypts
    signing secrets. The message is the client ID, a NUL byte and the
    customer ID; neither ID can contain NUL, so no two pairs share a message.
    """
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(
        master_key
    )
    message = f"{client_id}\0{customer_id}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


async def erase_customer(
    store: Store,
    master_key: bytes,
    client_id: str,
    customer_id: str,
    *,
    requested_by: str,
    now: datetime,
) -> ErasureRecord:
    """Erase the customer's data from the store and return the audit record.

    ``requested_by`` names the channel, such as "cli" or "admin-api".
    Raises ClientNotFound, changing nothing, if the client does not exist.
    """
    if await store.get_client(client_id) is None:
        raise ClientNotFound(f"no client {client_id!r}")
    erasure = ErasureRecord(
        id=ids.new_id("era"),
        client_id=client_id,
        customer_hash=customer_hash(master_key, client_id, customer_id),
        requested_by=requested_by,
        erased_at=now,
        rows_changed=0,
        detail={},
    )
    counts = await store.erase_customer(client_id, customer_id, erasure)
    total = sum(counts.values())
    # The customer ID is not logged: the hash names the customer here.
    log.info(
        "erased customer %s of client %s: %d rows changed",
        erasure.customer_hash,
        client_id,
        total,
        extra={
            "event": "customer_erased",
            "erasure_id": erasure.id,
            "client_id": client_id,
            "customer_hash": erasure.customer_hash,
            "requested_by": requested_by,
            "rows_changed": counts,
        },
    )
    return ErasureRecord(
        id=erasure.id,
        client_id=client_id,
        customer_hash=erasure.customer_hash,
        requested_by=requested_by,
        erased_at=now,
        rows_changed=total,
        detail=counts,
    )


def erasure_resource(erasure: ErasureRecord) -> dict[str, Any]:
    """Return the JSON summary that the CLI prints and the admin API returns."""
    resource = {
        "erasure_id": erasure.id,
        "client_id": erasure.client_id,
        "customer_hash": erasure.customer_hash,
        "requested_by": erasure.requested_by,
        "erased_at": erasure.erased_at,
        "rows_changed": erasure.detail,
        "total_rows_changed": erasure.rows_changed,
    }
    return ErasureResource().dump(resource)
