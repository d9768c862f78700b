"""The service's Ed25519 signing keys: published for receivers, rotated by operators."""

from __future__ import annotations

from datetime import timedelta

from aiohttp import web

from webhooks import service_keys
from webhooks.auth import require_admin
from webhooks.state import STATE
from webhooks.timefmt import utc_now

routes = web.RouteTableDef()

# Every key in an overlap signs each webhook, so a receiver whose cached
# copy lacks the newest key still verifies; a short cache is safe.
_CACHE_CONTROL = "public, max-age=60"


@routes.get("/v1/webhooks/signing-keys")
async def list_signing_keys(request: web.Request) -> web.Response:
    """Publish the public halves of the keys that sign ``v1a``, newest first."""
    keys = await request.app[STATE].keyring.service_keys()
    return web.json_response(
        {"keys": [key.resource() for key in keys]},
        headers={"Cache-Control": _CACHE_CONTROL},
    )


@routes.post("/v1/admin/signing-keys/rotate")
async def rotate_signing_keys(request: web.Request) -> web.Response:
    """Create a new signing key; the previous one signs until the overlap ends."""
    require_admin(request)
    state = request.app[STATE]
    overlap = timedelta(seconds=state.config.security.rotation_overlap_s)
    key = await service_keys.rotate_signing_keys(
        state.store, state.box, utc_now(), overlap
    )
    state.keyring.forget_service_keys()
    keys = await state.keyring.service_keys()
    return web.json_response(
        {"key": key.resource(), "keys": [item.resource() for item in keys]},
        status=201,
    )
