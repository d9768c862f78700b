"""The signers of each delivery: the client's secrets, or the backend's."""

from __future__ import annotations

import time

from store import Store
from store.records import DeliveryRecord
from webhooks import credentials
from webhooks.clients import open_secrets
from webhooks.credentials import SecretBox
from webhooks.signing import HmacSigner, Signer
from webhooks.timefmt import utc_now

# How long decrypted client secrets are reused before the store is read
# again; a rotation reaches the webhooks within this time.
_CACHE_TTL_S = 5.0


class Keyring:
    def __init__(self, store: Store, box: SecretBox, backend_signing_secret: str) -> None:
        self._store = store
        self._box = box
        self._backend_signers: list[Signer] = [
            HmacSigner(credentials.decode_signing_secret(backend_signing_secret))
        ]
        self._cache: dict[str, tuple[float, list[Signer]]] = {}

    async def signers_for(self, delivery: DeliveryRecord) -> list[Signer]:
        """Return the signers for a delivery; raise KeyError for an unknown client."""
        if delivery.client_id is None:
            return self._backend_signers
        cached = self._cache.get(delivery.client_id)
        if cached is not None and time.monotonic() - cached[0] < _CACHE_TTL_S:
            return cached[1]
        sealed = await self._store.get_signing_secrets([delivery.client_id])
        secrets = open_secrets(self._box, delivery.client_id, sealed[delivery.client_id])
        now = utc_now()
        signers: list[Signer] = [
            HmacSigner(credentials.decode_signing_secret(item.secret))
            for item in secrets
            if item.expires_at is None or item.expires_at > now
        ]
        self._cache[delivery.client_id] = (time.monotonic(), signers)
        return signers
