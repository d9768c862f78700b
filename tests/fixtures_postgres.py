"""Fixtures of the throwaway PostgreSQL cluster, one per test session."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from postgres_cluster import INSTALL_HINT, Cluster, find_binaries

from store import Store, open_store

# Set by .ci/run: there a missing server is a failure, not a skip.
REQUIRED = os.environ.get("WEBHOOKS_REQUIRE_POSTGRES") == "1"


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    binaries = find_binaries()
    if binaries is None:
        if REQUIRED:
            pytest.fail(INSTALL_HINT)
        pytest.skip(INSTALL_HINT)
    cluster = Cluster(binaries)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
async def postgres_url(postgres_cluster: Cluster) -> AsyncIterator[str]:
    """Return the URL of a new, empty database, dropped after the test."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(postgres_cluster.url())
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    yield postgres_cluster.url(name)
    admin = await asyncpg.connect(postgres_cluster.url())
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """Open an empty store of each kind; PostgreSQL gets a database of its own."""
    if request.param == "sqlite":
        opened = await open_store(f"sqlite:///{tmp_path / 'store.sqlite3'}")
        try:
            yield opened
        finally:
            await opened.close()
        return

    # postgres_url is async, and pytest-asyncio cannot request an async
    # fixture from inside another one, so the database is made here.
    cluster = request.getfixturevalue("postgres_cluster")
    name = f"test_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(cluster.url())
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        opened = await open_store(cluster.url(name))
        try:
            yield opened
        finally:
            await opened.close()
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()
