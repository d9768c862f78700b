"""Bearer-token authentication of clients, the backend and operators."""

from __future__ import annotations

from aiohttp import web

from store.records import ClientRecord
from webhooks import credentials
from webhooks.problems import Unauthorized
from webhooks.state import STATE


def _bearer_token(request: web.Request, what: str) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized(f"send the {what} as 'Authorization: Bearer <token>'")
    # Keys and tokens are printable ASCII; anything else cannot match.
    if not token.isascii() or not token.isprintable():
        raise Unauthorized(f"the {what} is not valid")
    return token


async def authenticate_client(request: web.Request) -> ClientRecord:
    token = _bearer_token(request, "API key")
    key_hash = credentials.hash_token(token)
    client = await request.app[STATE].store.find_client_by_key_hash(key_hash)
    # The lookup is by hash; the constant-time comparison guards the rest.
    if client is None or not credentials.token_matches(token, client.api_key_hash):
        raise Unauthorized("the API key is not valid")
    return client


def require_backend(request: web.Request) -> None:
    token = _bearer_token(request, "backend token")
    if not credentials.token_matches(token, request.app[STATE].backend_token_hash):
        raise Unauthorized("the backend token is not valid")


def require_admin(request: web.Request) -> None:
    token = _bearer_token(request, "admin token")
    if not credentials.token_matches(token, request.app[STATE].admin_token_hash):
        raise Unauthorized("the admin token is not valid")
