"""State shared by the request handlers, stored on the aiohttp application."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from aiohttp.abc import AbstractResolver

from store import Store
from webhooks.config import Config
from webhooks.credentials import SecretBox
from webhooks.dispatcher import Dispatcher
from webhooks.keyring import Keyring
from webhooks.netpolicy import NetworkPolicy
from webhooks.ratelimit import TokenBuckets
from webhooks.service import ScoreService


@dataclass(frozen=True, kw_only=True)
class AppState:
    config: Config
    store: Store
    service: ScoreService
    box: SecretBox
    policy: NetworkPolicy
    resolver: AbstractResolver  # looks up callback hosts at submission
    keyring: Keyring
    submission_limits: TokenBuckets  # per client ID
    dispatcher: Dispatcher
    backend_token_hash: str
    admin_token_hash: str


STATE = web.AppKey("state", AppState)
