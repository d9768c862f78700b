"""The CloudEvents webhook validation handshake, asked once per client and origin.

Before the first delivery to an origin (scheme, host and port) for a client,
an ``OPTIONS`` request names this service in ``WebHook-Request-Origin``. The
receiver agrees by answering 2xx with ``WebHook-Allowed-Origin`` set to that
name or ``*``. The answer is stored, so a service restart does not ask again.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import aiohttp
from yarl import URL

from store import Store
from store.records import CallbackOrigin
from webhooks.attempts import describe_error
from webhooks.timefmt import utc_now

log = logging.getLogger("webhooks.dispatcher")


def origin_of(url: str) -> str:
    parsed = URL(url)
    return f"{parsed.scheme}://{parsed.host}:{parsed.port}"


class CallbackHandshake:
    def __init__(
        self,
        store: Store,
        session: aiohttp.ClientSession,
        *,
        request_origin: str,
        connect_timeout_s: float,
        total_timeout_s: float,
        recheck_after: timedelta,
    ) -> None:
        self._store = store
        self._session = session
        self._request_origin = request_origin
        self._connect_timeout_s = connect_timeout_s
        self._total_timeout_s = total_timeout_s
        self._recheck_after = recheck_after
        self._allowed: set[tuple[str, str]] = set()  # answers that never change

    async def refusal(self, client_id: str, url: str) -> tuple[str | None, bool]:
        """Return why the client's origin of ``url`` refuses webhooks, or None.

        The second value is True when this call found the origin newly
        allowed after an earlier refusal, so held deliveries can go again.
        """
        origin = origin_of(url)
        if (client_id, origin) in self._allowed:
            return None, False
        now = utc_now()
        stored = await self._store.get_callback_origin(client_id, origin)
        if stored is not None and stored.allowed:
            self._allowed.add((client_id, origin))
            return None, False
        if stored is not None and now - stored.checked_at < self._recheck_after:
            return stored.reason, False

        reason = await self._ask(url)
        await self._store.save_callback_origin(
            CallbackOrigin(
                client_id=client_id,
                origin=origin,
                allowed=reason is None,
                reason=reason,
                checked_at=now,
            )
        )
        if reason is None:
            self._allowed.add((client_id, origin))
            log.info(
                "callback origin %s accepted webhooks for client %s",
                origin,
                client_id,
                extra={"event": "handshake_accepted", "client_id": client_id},
            )
            return None, stored is not None
        log.warning(
            "callback origin %s rejected webhooks for client %s: %s",
            origin,
            client_id,
            reason,
            extra={"event": "handshake_refused", "client_id": client_id},
        )
        return reason, False

    async def _ask(self, url: str) -> str | None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout_s)
        try:
            async with asyncio.timeout(self._total_timeout_s):
                async with self._session.options(
                    url,
                    headers={"WebHook-Request-Origin": self._request_origin},
                    allow_redirects=False,
                    timeout=timeout,
                ) as response:
                    allowed = response.headers.get("WebHook-Allowed-Origin")
                    status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            return "handshake failed: " + describe_error(
                error, self._connect_timeout_s, self._total_timeout_s
            )
        if not 200 <= status < 300:
            return f"handshake refused: OPTIONS answered HTTP {status}"
        if allowed not in ("*", self._request_origin):
            return "handshake refused: WebHook-Allowed-Origin does not name this service"
        return None
