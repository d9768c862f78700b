"""Shared fixtures: a real SQLite file, the real app, and real receivers."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from standardwebhooks import Webhook

from store.sqlite import path_from_url
from webhooks import credentials
from webhooks.app import create_app
from webhooks.clients import NewClient, create_client
from webhooks.config import (
    AdminConfig,
    BackendConfig,
    Config,
    DeliveryConfig,
    ScoresConfig,
    SecurityConfig,
    ServerConfig,
    StoreConfig,
)
from webhooks.credentials import SecretBox
from webhooks.state import STATE

pytest_plugins = ["fixtures_postgres"]

BACKEND_TOKEN = "backend-token-for-tests-0123456789"
ADMIN_TOKEN = "admin-token-for-tests-0123456789"


# The store URL of each running test, by its tmp_path; see the store_url fixture.
_STORE_URLS: dict[Path, str] = {}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every test that starts the app once per store: SQLite and PostgreSQL.

    A test marked ``sqlite_only`` (it reads the SQLite file itself) runs once.
    """
    if "store_url" not in metafunc.fixturenames:
        return
    kinds = ["sqlite"]
    if metafunc.definition.get_closest_marker("sqlite_only") is None:
        kinds.append("postgresql")
    metafunc.parametrize("store_url", kinds, indirect=True)


@pytest.fixture
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Return the URL of a fresh store for this test; ``make_config`` uses it."""
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
    else:
        url = f"sqlite:///{tmp_path / 'webhooks.sqlite3'}"
    _STORE_URLS[tmp_path] = url
    yield url
    del _STORE_URLS[tmp_path]


def make_config(tmp_path: Path, **sections: Any) -> Config:
    """Return a config on this test's store with fast retries.

    The store is the one the ``store_url`` fixture chose, or else a SQLite
    file in ``tmp_path``. ``sections`` maps a section name to a dict of
    field overrides, for example ``delivery={"retry_schedule_s": (0.1,)}``.
    """
    store_url = _STORE_URLS.get(tmp_path, f"sqlite:///{tmp_path / 'webhooks.sqlite3'}")
    config = Config(
        server=ServerConfig(public_url="http://scores.test"),
        store=StoreConfig(url=store_url, synchronous="normal", pool_size=4),
        backend=BackendConfig(
            url="http://127.0.0.1:9/unused",
            token=BACKEND_TOKEN,
            signing_secret=credentials.new_signing_secret(),
        ),
        admin=AdminConfig(token=ADMIN_TOKEN),
        security=SecurityConfig(master_key=credentials.new_master_key()),
        delivery=DeliveryConfig(
            retry_schedule_s=(0.2, 0.2, 0.2),
            jitter=0.0,
            connect_timeout_s=1.0,
            attempt_timeout_s=2.0,
            allow_http=True,
            allow_private_networks=True,
            poll_interval_s=0.2,
            shutdown_grace_s=2.0,
            # Most tests expect a spent schedule to fail the delivery; the
            # tests of held deliveries turn holding on.
            held_window_s=0.0,
        ),
        scores=ScoresConfig(),
        source="tests",
    )
    for name, overrides in sections.items():
        config = replace(config, **{name: replace(getattr(config, name), **overrides)})
    return config


def config_with_backend(tmp_path: Path, backend: Receiver, **sections: Any) -> Config:
    """Return ``make_config(tmp_path, **sections)`` with the backend URL on ``backend``.

    ``backend`` gets the backend signing secret, so it verifies every
    score.requested event it receives.
    """
    config = make_config(tmp_path, **sections)
    backend.secret = config.backend.signing_secret
    backend_config = replace(config.backend, url=backend.url("/score-requests"))
    return replace(config, backend=backend_config)


def count_rows(config: Config, table: str) -> int:
    """Count the rows of a table in the config's store."""
    if config.store.url.startswith("postgresql:"):
        return _count_postgres_rows(config.store.url, table)
    path = path_from_url(config.store.url)
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    finally:
        db.close()


def _count_postgres_rows(url: str, table: str) -> int:
    async def count() -> int:
        connection = await asyncpg.connect(url)
        try:
            return await connection.fetchval(f"SELECT COUNT(*) FROM {table}")
        finally:
            await connection.close()

    # The caller runs inside the test's event loop, so the query gets its own.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, count()).result()


async def wait_for(
    predicate: Callable[[], bool | Awaitable[bool]], timeout_s: float = 5.0
) -> None:
    """Poll ``predicate`` until it holds; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        outcome = predicate()
        if not isinstance(outcome, bool):
            outcome = await outcome
        if outcome:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.02)


@dataclass
class ReceivedWebhook:
    headers: dict[str, str]
    body: bytes
    received_at: float  # time.monotonic()

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A real aiohttp server that records every webhook it receives.

    ``responses`` lists the statuses to answer in turn; after they run out it
    answers ``default_status``. Verification with the ``standardwebhooks``
    package fails the request with 400 and is recorded in ``invalid``.
    """

    server: TestServer | None = None
    secret: str | None = None
    responses: list[int] = field(default_factory=list)
    default_status: int = 200
    received: list[ReceivedWebhook] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = None

    def url(self, path: str = "/hooks") -> str:
        assert self.server is not None
        return str(self.server.make_url(path))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = dict(request.headers)
        self.received.append(ReceivedWebhook(headers, body, time.monotonic()))
        if self.secret is not None:
            try:
                Webhook(self.secret).verify(body, headers)
            except Exception as exc:  # the library raises its own error types
                self.invalid.append(repr(exc))
                return web.Response(status=400)
        if self.handler is not None:
            return await self.handler(request)
        status = self.responses.pop(0) if self.responses else self.default_status
        return web.Response(status=status)


@pytest.fixture
async def make_receiver(aiohttp_server: Any) -> Callable[..., Awaitable[Receiver]]:
    async def make(**kwargs: Any) -> Receiver:
        receiver = Receiver(**kwargs)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", receiver.handle)
        receiver.server = await aiohttp_server(app)
        return receiver

    return make


@dataclass
class Service:
    """The app under test, with a test client and helpers for its parties."""

    http: TestClient
    config: Config

    @property
    def state(self) -> Any:
        return self.http.app[STATE]

    async def new_client(self, name: str = "client") -> NewClient:
        return await create_client(self.state.store, SecretBox(self.config.master_key), name)

    def client_headers(self, client: NewClient, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {client.api_key}", **extra}

    def backend_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.config.backend.token}"}

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.config.admin.token}"}

    async def submit(self, client: NewClient, **body: Any) -> Any:
        headers = self.client_headers(client)
        if "idempotency_key" in body:
            headers["Idempotency-Key"] = body.pop("idempotency_key")
        return await self.http.post("/v1/score-requests", json=body, headers=headers)

    async def post_result(self, correlation_id: str, **body: Any) -> Any:
        return await self.http.put(
            f"/v1/backend/score-requests/{correlation_id}/result",
            json=body,
            headers=self.backend_headers(),
        )

    async def submit_pending(
        self, client: NewClient, customer_id: str, callback_url: str
    ) -> str:
        """Submit a request that waits for a computation; return its correlation ID."""
        response = await self.submit(
            client, customer_id=customer_id, callback_url=callback_url
        )
        assert response.status == 202, await response.text()
        return (await response.json())["correlation_id"]

    async def get_request(self, client: NewClient, correlation_id: str) -> Any:
        return await self.http.get(
            f"/v1/score-requests/{correlation_id}", headers=self.client_headers(client)
        )

    async def get_customer_score(self, client: NewClient, customer_id: str) -> Any:
        return await self.http.get(
            f"/v1/customers/{customer_id}/score", headers=self.client_headers(client)
        )

    async def list_deliveries(self, **query: str) -> list[dict[str, Any]]:
        """Return the deliveries the admin API lists for ``query``, newest first."""
        response = await self.http.get(
            "/v1/admin/deliveries", params=query, headers=self.admin_headers()
        )
        assert response.status == 200, await response.text()
        return (await response.json())["deliveries"]

    async def get_delivery(self, delivery_id: str) -> dict[str, Any]:
        """Return one delivery with its attempts from the admin API."""
        response = await self.http.get(
            f"/v1/admin/deliveries/{delivery_id}", headers=self.admin_headers()
        )
        assert response.status == 200, await response.text()
        return await response.json()


@pytest.fixture
async def make_service(
    aiohttp_server: Any, aiohttp_client: Any, tmp_path: Path, store_url: str
) -> AsyncIterator[Callable[..., Awaitable[Service]]]:
    """Start the app on a config from ``make_config`` with the given overrides.

    The apps stop before ``aiohttp_server`` closes the receivers. Otherwise an
    attempt in flight to a closing receiver hangs until the attempt timeout
    and delays the teardown by the dispatcher's shutdown grace period.
    """
    services: list[Service] = []

    async def make(config: Config | None = None, **sections: Any) -> Service:
        config = config or make_config(tmp_path, **sections)
        http = await aiohttp_client(create_app(config))
        service = Service(http=http, config=config)
        services.append(service)
        return service

    yield make
    for service in services:
        await service.http.close()


@pytest.fixture
async def backend(make_receiver: Callable[..., Awaitable[Receiver]]) -> Receiver:
    """A scoring-backend stand-in that acknowledges every score.requested event."""
    return await make_receiver(default_status=202)


@pytest.fixture
async def service(
    make_service: Callable[..., Awaitable[Service]], backend: Receiver, tmp_path: Path
) -> Service:
    return await make_service(config_with_backend(tmp_path, backend))
