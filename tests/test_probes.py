"""GET /healthz and GET /readyz, with a store that fails, hangs or lags behind."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from conftest import make_config
from store import Store, open_store
from store.records import SchemaVersion
from webhooks import app as app_module
from webhooks.app import create_app


class BrokenStore:
    """A real store whose ``schema_version`` method is the given coroutine function."""

    def __init__(
        self, store: Store, schema_version: Callable[[], Awaitable[SchemaVersion]]
    ) -> None:
        self._store = store
        self.schema_version = schema_version

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store(make_config(tmp_path).store.url)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def start(
    store: Store, aiohttp_client: Any, tmp_path: Path
) -> Callable[[Any], Awaitable[TestClient]]:
    """Start the app on the given store, which it does not close.

    It depends on ``store`` so that the app stops before the store closes.
    """

    async def start_with(store: Any) -> TestClient:
        return await aiohttp_client(create_app(make_config(tmp_path), store=store))

    return start_with


async def test_healthz_ok(start: Any, store: Store) -> None:
    http = await start(store)

    response = await http.get("/healthz")

    assert response.status == 200
    assert await response.json() == {"status": "ok"}


async def test_readyz_reports_migrations(start: Any, store: Store) -> None:
    http = await start(store)

    response = await http.get("/readyz")

    assert response.status == 200
    body = await response.json()
    assert body["status"] == "ok"
    assert body["migrations"] == "done"
    assert body["schema_version"] >= 1


async def test_readyz_503_on_closed_store(
    start: Any, store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    closed = await open_store(make_config(tmp_path).store.url)
    await closed.close()
    http = await start(BrokenStore(store, closed.schema_version))

    with caplog.at_level(logging.WARNING, logger="webhooks.app"):
        response = await http.get("/readyz")

    assert response.status == 503
    assert await response.json() == {"status": "unavailable", "reason": "store failed"}
    failed = [
        r for r in caplog.records if getattr(r, "event", None) == "readiness_failed"
    ]
    assert len(failed) == 1


async def test_readyz_503_on_hanging_store(
    start: Any, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app_module, "_READY_TIMEOUT_S", 0.2)

    async def hang() -> SchemaVersion:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    http = await start(BrokenStore(store, hang))

    response = await asyncio.wait_for(http.get("/readyz"), timeout=5)

    assert response.status == 503
    assert await response.json() == {
        "status": "unavailable",
        "reason": "store timed out",
    }


async def test_readyz_503_on_pending_migrations(start: Any, store: Store) -> None:
    async def behind() -> SchemaVersion:
        return SchemaVersion(applied=1, latest=2)

    http = await start(BrokenStore(store, behind))

    response = await http.get("/readyz")

    assert response.status == 503
    body = await response.json()
    assert body["reason"] == "migrations pending: schema at 1, code needs 2"
