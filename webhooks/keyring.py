"""The signers of each delivery: client or backend secrets, and the service keys.

Decrypted secrets and keys are cached for a few seconds, so a burst of
deliveries reads the store once. A rotation through this process takes
effect at once because the handler invalidates the cache. Another process
sharing the store reads the rotation once its cached copy expires.
"""

from __future__ import annotations

import time
from datetime import datetime

from store import Store
from store.records import DeliveryRecord
from webhooks import credentials
from webhooks.clients import open_secrets
from webhooks.credentials import SecretBox
from webhooks.service_keys import ServiceSigningKey, load_signing_keys
from webhooks.signing import HmacSigner, Signer
from webhooks.timefmt import utc_now

# How long decrypted secrets and keys are reused before the store is read
# again.
_CACHE_TTL_S = 5.0


class Keyring:
    def __init__(
        self, store: Store, box: SecretBox, backend_signing_secret: str
    ) -> None:
        self._store = store
        self._box = box
        self._backend_signers: list[Signer] = [
            HmacSigner(credentials.decode_signing_secret(backend_signing_secret))
        ]
        # Per client: when the secrets were read, and each signer with the
        # time its secret expires (None: the current secret).
        self._cache: dict[str, tuple[float, list[tuple[datetime | None, Signer]]]] = {}
        self._service_keys: tuple[float, list[ServiceSigningKey]] | None = None

    async def service_keys(self) -> list[ServiceSigningKey]:
        """Return the service's unexpired Ed25519 keys, creating the first one."""
        cached = self._service_keys
        if cached is None or time.monotonic() - cached[0] >= _CACHE_TTL_S:
            keys = await load_signing_keys(self._store, self._box, utc_now())
            cached = self._service_keys = (time.monotonic(), keys)
        now = utc_now()
        return [key for key in cached[1] if key.is_active(now)]

    async def signers_for(self, delivery: DeliveryRecord) -> list[Signer]:
        """Return the signers for a delivery; raise KeyError for an unknown client."""
        service_signers = [key.signer() for key in await self.service_keys()]
        if delivery.client_id is None:
            return self._backend_signers + service_signers
        return await self._client_signers(delivery.client_id) + service_signers

    async def _client_signers(self, client_id: str) -> list[Signer]:
        cached = self._cache.get(client_id)
        if cached is None or time.monotonic() - cached[0] >= _CACHE_TTL_S:
            sealed = await self._store.get_signing_secrets([client_id])
            secrets = open_secrets(self._box, client_id, sealed[client_id])
            signers = [
                (
                    item.expires_at,
                    HmacSigner(credentials.decode_signing_secret(item.secret)),
                )
                for item in secrets
            ]
            cached = self._cache[client_id] = (time.monotonic(), signers)
        now = utc_now()
        return [
            signer
            for expires_at, signer in cached[1]
            if expires_at is None or expires_at > now
        ]

    def forget_client(self, client_id: str) -> None:
        """Drop a client's cached secrets, after a rotation."""
        self._cache.pop(client_id, None)

    def forget_service_keys(self) -> None:
        """Drop the cached service keys, after a rotation."""
        self._service_keys = None
