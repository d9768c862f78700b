"""Service-wide keys kept in the store: the master-key check and the Ed25519 keys.

Both are sealed with the master key (AES-256-GCM through ``SecretBox``).
The check value lets a start with another master key fail before it
changes anything. The Ed25519 keys sign every webhook with ``v1a``; their
public halves are published so receivers can verify without a secret.

Rotation keeps the previous key signing beside the new one until its
``expires_at``, so a receiver that still has only the old public key keeps
verifying during the overlap.
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from store import Store, StoreError
from webhooks import ids
from webhooks.config import ConfigError
from webhooks.credentials import SecretBox
from webhooks.signing import Ed25519Signer
from webhooks.timefmt import format_time, parse_time

log = logging.getLogger("webhooks.keys")

MASTER_KEY_CHECK = "master_key_check"
SIGNING_KEYS = "signing_keys"
PUBLIC_KEY_PREFIX = "whpk_"

# Rotated-out keys kept at most, newest first, so that repeated rotations
# within one overlap cannot grow every webhook-signature header unbounded.
MAX_PREVIOUS_KEYS = 3

_CHECK_PLAINTEXT = "score-webhooks master key check"
# Compare-and-swap runs before a rotation gives up against concurrent ones.
_MAX_SWAP_RUNS = 5


class MasterKeyMismatch(ConfigError):
    """The master key does not match the one the store was created with."""


@dataclass(frozen=True, kw_only=True)
class ServiceSigningKey:
    id: str  # key_...
    private_key: Ed25519PrivateKey
    created_at: datetime
    expires_at: datetime | None  # set when a newer key replaces this one

    @property
    def public_key(self) -> str:
        """The public key as ``whpk_`` and the base64 of its 32 raw bytes."""
        raw = self.private_key.public_key().public_bytes_raw()
        return PUBLIC_KEY_PREFIX + base64.b64encode(raw).decode()

    def is_active(self, now: datetime) -> bool:
        return self.expires_at is None or self.expires_at > now

    def signer(self) -> Ed25519Signer:
        return Ed25519Signer(self.private_key)

    def resource(self) -> dict[str, Any]:
        """Return the published form, without the private key."""
        return {
            "id": self.id,
            "algorithm": "ed25519",
            "public_key": self.public_key,
            "created_at": format_time(self.created_at),
            "expires_at": format_time(self.expires_at) if self.expires_at else None,
        }


async def verify_master_key(store: Store, box: SecretBox) -> None:
    """Check the master key against the store's check value, stored on first start.

    Raises MasterKeyMismatch, having written nothing, when the store was
    created with another key.

    NOTE: a store created before the check value existed has none, so its
    first start after the upgrade stores one for whatever key it was given.
    """
    sealed = await store.get_setting(MASTER_KEY_CHECK)
    if sealed is None:
        check = box.encrypt(_CHECK_PLAINTEXT, context=MASTER_KEY_CHECK)
        if await store.put_setting(MASTER_KEY_CHECK, check, expected=None):
            log.info(
                "stored the check value of the master key",
                extra={"event": "master_key_check_stored"},
            )
            return
        sealed = await store.get_setting(MASTER_KEY_CHECK)  # another process won
        assert sealed is not None
    try:
        box.decrypt(sealed, context=MASTER_KEY_CHECK)
    except (InvalidTag, ValueError):
        raise MasterKeyMismatch(
            "security.master_key (or $WEBHOOKS_MASTER_KEY) does not match the master "
            "key the store was created with; start with the original key. Nothing "
            "was changed."
        ) from None


def _seal(box: SecretBox, keys: list[ServiceSigningKey]) -> bytes:
    document = [
        {
            "id": key.id,
            "private_key": base64.b64encode(
                key.private_key.private_bytes_raw()
            ).decode(),
            "created_at": format_time(key.created_at),
            "expires_at": format_time(key.expires_at) if key.expires_at else None,
        }
        for key in keys
    ]
    return box.encrypt(json.dumps(document), context=SIGNING_KEYS)


def _open(box: SecretBox, sealed: bytes) -> list[ServiceSigningKey]:
    document = json.loads(box.decrypt(sealed, context=SIGNING_KEYS))
    return [
        ServiceSigningKey(
            id=item["id"],
            private_key=Ed25519PrivateKey.from_private_bytes(
                base64.b64decode(item["private_key"])
            ),
            created_at=parse_time(item["created_at"]),
            expires_at=parse_time(item["expires_at"]) if item["expires_at"] else None,
        )
        for item in document
    ]


def _new_key(now: datetime) -> ServiceSigningKey:
    return ServiceSigningKey(
        id=ids.new_id("key"),
        private_key=Ed25519PrivateKey.generate(),
        created_at=now,
        expires_at=None,
    )


async def load_signing_keys(
    store: Store, box: SecretBox, now: datetime
) -> list[ServiceSigningKey]:
    """Return the unexpired signing keys, newest first; create one on first start."""
    for _ in range(_MAX_SWAP_RUNS):
        sealed = await store.get_setting(SIGNING_KEYS)
        if sealed is not None:
            return [key for key in _open(box, sealed) if key.is_active(now)]
        key = _new_key(now)
        if await store.put_setting(SIGNING_KEYS, _seal(box, [key]), expected=None):
            log.info(
                "created the service signing key %s",
                key.id,
                extra={"event": "signing_key_created", "key_id": key.id},
            )
            return [key]
    raise StoreError("the service signing keys kept changing while being read")


async def rotate_signing_keys(
    store: Store, box: SecretBox, now: datetime, overlap: timedelta
) -> ServiceSigningKey:
    """Create a new signing key; the current ones keep signing until ``now + overlap``.

    Expired keys are dropped, and at most MAX_PREVIOUS_KEYS are kept.
    """
    until = now + overlap
    for _ in range(_MAX_SWAP_RUNS):
        await load_signing_keys(store, box, now)  # the first start may not have run
        sealed = await store.get_setting(SIGNING_KEYS)
        assert sealed is not None
        previous = [
            replace(key, expires_at=min(key.expires_at or until, until))
            for key in _open(box, sealed)
            if key.is_active(now)
        ][:MAX_PREVIOUS_KEYS]
        key = _new_key(now)
        replacement = _seal(box, [key, *previous])
        if await store.put_setting(SIGNING_KEYS, replacement, expected=sealed):
            log.info(
                "rotated the service signing key to %s; %d previous keys sign until %s",
                key.id,
                len(previous),
                format_time(until),
                extra={"event": "signing_key_rotated", "key_id": key.id},
            )
            return key
    raise StoreError("the service signing keys kept changing during the rotation")
