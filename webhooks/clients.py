"""Client systems: creation, API-key authentication and their signing secrets."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from store import Store
from store.records import ClientRecord
from webhooks import credentials, ids
from webhooks.credentials import SecretBox
from webhooks.timefmt import format_time, parse_time, utc_now


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
