"""Client systems: creation, API-key authentication and their signing secrets."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from store import Store
from store.records import ClientRecord
from webhooks import credentials, ids
from webhooks.credentials import SecretBox
from webhooks.timefmt import format_time, parse_time, utc_now

log = logging.getLogger("webhooks.clients")

# Rotated-out secrets kept at most, newest first, so that repeated rotations
# within one overlap cannot grow every webhook-signature header unbounded.
MAX_PREVIOUS_SECRETS = 3
# Compare-and-swap runs before a rotation gives up against concurrent ones.
_MAX_ROTATION_RUNS = 5


class RotationConflict(Exception):
    """Concurrent rotations of one client's secret kept replacing each other."""


@dataclass(frozen=True, kw_only=True)
class NewClient:
    """A client just created, with the credentials shown this once."""

    record: ClientRecord
    api_key: str
    signing_secret: str


@dataclass(frozen=True, kw_only=True)
class SigningSecret:
    secret: str  # whsec_...
    expires_at: datetime | None  # set on a secret being rotated out


def seal_secrets(box: SecretBox, client_id: str, secrets: list[SigningSecret]) -> bytes:
    document = [
        {
            "secret": item.secret,
            "expires_at": format_time(item.expires_at) if item.expires_at else None,
        }
        for item in secrets
    ]
    return box.encrypt(json.dumps(document), context=f"client:{client_id}")


def open_secrets(box: SecretBox, client_id: str, sealed: bytes) -> list[SigningSecret]:
    """Decrypt a client's secrets; raise InvalidTag if the master key is wrong."""
    document = json.loads(box.decrypt(sealed, context=f"client:{client_id}"))
    return [
        SigningSecret(
            secret=item["secret"],
            expires_at=parse_time(item["expires_at"]) if item["expires_at"] else None,
        )
        for item in document
    ]


async def create_client(store: Store, box: SecretBox, name: str) -> NewClient:
    client_id = ids.client_id()
    api_key = credentials.new_api_key()
    signing_secret = credentials.new_signing_secret()
    record = ClientRecord(
        id=client_id,
        name=name,
        api_key_hash=credentials.hash_token(api_key),
        signing_secrets=seal_secrets(
            box, client_id, [SigningSecret(secret=signing_secret, expires_at=None)]
        ),
        created_at=utc_now(),
    )
    await store.insert_client(record)
    return NewClient(record=record, api_key=api_key, signing_secret=signing_secret)


@dataclass(frozen=True, kw_only=True)
class RotatedSecret:
    """A client's new signing secret, shown this once."""

    signing_secret: str
    previous_expire_at: datetime  # the old secrets sign until then


async def rotate_signing_secret(
    store: Store, box: SecretBox, client_id: str, now: datetime, overlap: timedelta
) -> RotatedSecret:
    """Give a client a new signing secret; the current ones sign until now + overlap.

    Expired secrets are dropped, and at most MAX_PREVIOUS_SECRETS are kept.
    Raises RotationConflict if concurrent rotations keep winning the swap.
    """
    until = now + overlap
    for _ in range(_MAX_ROTATION_RUNS):
        sealed = (await store.get_signing_secrets([client_id]))[client_id]
        previous = [
            SigningSecret(
                secret=item.secret, expires_at=min(item.expires_at or until, until)
            )
            for item in open_secrets(box, client_id, sealed)
            if item.expires_at is None or item.expires_at > now
        ][:MAX_PREVIOUS_SECRETS]
        new_secret = credentials.new_signing_secret()
        current = SigningSecret(secret=new_secret, expires_at=None)
        replacement = seal_secrets(box, client_id, [current, *previous])
        if await store.swap_signing_secrets(client_id, sealed, replacement):
            log.info(
                "client %s rotated its signing secret; %d previous ones sign until %s",
                client_id,
                len(previous),
                format_time(until),
                extra={"event": "signing_secret_rotated", "client_id": client_id},
            )
            return RotatedSecret(signing_secret=new_secret, previous_expire_at=until)
    raise RotationConflict(
        f"the signing secret of {client_id} is being rotated concurrently"
    )
