"""Fixtures of the throwaway PostgreSQL cluster, one per test session."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from postgres_cluster import INSTALL_HINT, Cluster, find_binaries

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
