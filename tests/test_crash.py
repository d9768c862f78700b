"""Crash safety and graceful stop of a real service process."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from conftest import wait_for
from store import open_store
from store.records import NewDelivery
from webhooks import credentials, ids
from webhooks.clients import NewClient, create_client
from webhooks.config import load_config
from webhooks.credentials import SecretBox
from webhooks.timefmt import utc_now

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _write_config(tmp_path: Path, port: int, **delivery: object) -> Path:
    settings = {
        "retry_schedule": [0.2, 0.2, 0.2],
        "jitter": 0.0,
        "attempt_timeout": 30.0,
        "max_in_flight": 128,
        "max_in_flight_per_host": 128,
        "poll_interval": 0.2,
        "allow_http": True,
        "allow_private_networks": True,
        **delivery,
    }
    lines = [
        "[server]",
        'host = "127.0.0.1"',
        f"port = {port}",
        f'public_url = "http://127.0.0.1:{port}"',
        "[store]",
        f'url = "sqlite:///{tmp_path / "store.sqlite3"}"',
        "[backend]",
        'url = "http://127.0.0.1:9/unused"',
        f'token = "{credentials.new_token()}"',
        f'signing_secret = "{credentials.new_signing_secret()}"',
        "[admin]",
        f'token = "{credentials.new_token()}"',
        "[security]",
        f'master_key = "{credentials.new_master_key()}"',
        "[delivery]",
    ]
    for key, value in settings.items():
        rendered = str(value).lower() if isinstance(value, bool) else repr(value)
        lines.append(f"{key} = {rendered}")
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def _seed(config_path: Path, url: str, count: int) -> NewClient:
    """Create a client and ``count`` due deliveries to ``url`` in the store."""
    config = load_config(config_path)
    store = await open_store(config.store.url)
    try:
        client = await create_client(store, SecretBox(config.master_key), "crash")
        async with store.transaction() as transaction:
            for number in range(count):
                await transaction.insert_delivery(
                    NewDelivery(
                        id=ids.delivery_id(),
                        message_id=ids.message_id(),
                        client_id=client.record.id,
                        correlation_id=ids.correlation_id(),
                        event_type="score.ready",
                        url=url,
                        host=url.split("/")[2],
                        payload=b'{"type":"score.ready","number":%d}' % number,
                        next_attempt_at=utc_now(),
                    )
                )
    finally:
        await store.close()
    return client


class ServiceProcess:
    def __init__(self, config_path: Path, port: int) -> None:
        self.config_path = config_path
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "webhooks", "serve", "--config", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.config_path.with_suffix(".log"), "ab"),
        )

        async def healthy() -> bool:
            try:
                async with aiohttp.ClientSession() as session:
                    async with session.get(f"http://127.0.0.1:{self.port}/readyz") as r:
                        return r.status == 200
            except aiohttp.ClientError:
                return False

        await wait_for(healthy, 15)

    def signal(self, number: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, number)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def processes() -> Iterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    yield started
    for process in started:
        process.stop()


def _statuses(store_path: Path) -> dict[str, int]:
    with sqlite3.connect(store_path) as db:
        return dict(db.execute("SELECT status, COUNT(*) FROM deliveries GROUP BY status"))


def _leases_held(store_path: Path) -> int:
    with sqlite3.connect(store_path) as db:
        return db.execute(
            "SELECT COUNT(*) FROM deliveries WHERE lease_owner IS NOT NULL"
        ).fetchone()[0]


async def test_sigkill_in_flight_loses_nothing(
    tmp_path: Path, aiohttp_server, processes: list[ServiceProcess]
) -> None:
    hold = True
    release = asyncio.Event()
    answered: Counter[str] = Counter()
    received: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        message_id = request.headers["webhook-id"]
        received.append(message_id)
        if hold:
            await release.wait()
            return web.Response(status=200)
        answered[message_id] += 1
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hooks", handle)
    receiver = await aiohttp_server(app)
    port = _free_port()
    config_path = _write_config(tmp_path, port)
    await _seed(config_path, str(receiver.make_url("/hooks")), 100)

    first = ServiceProcess(config_path, port)
    processes.append(first)
    await first.start()
    await wait_for(lambda: len(received) == 100, 15)
    in_flight = len(received)
    first.signal(signal.SIGKILL)
    first.process.wait()

    hold = False
    release.set()
    second = ServiceProcess(config_path, port)
    processes.append(second)
    await second.start()
    await wait_for(lambda: len(answered) == 100, 15)

    duplicates = len(received) - 100
    assert len(set(received)) == 100
    assert duplicates <= in_flight
    await wait_for(lambda: _statuses(tmp_path / "store.sqlite3") == {"delivered": 100})


async def test_sigterm_exits_cleanly_without_leases(
    tmp_path: Path, aiohttp_server, processes: list[ServiceProcess]
) -> None:
    received: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        received.append(request.headers["webhook-id"])
        await asyncio.sleep(0.5)
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hooks", handle)
    receiver = await aiohttp_server(app)
    port = _free_port()
    config_path = _write_config(tmp_path, port, max_in_flight=4, max_in_flight_per_host=4)
    await _seed(config_path, str(receiver.make_url("/hooks")), 40)

    service = ServiceProcess(config_path, port)
    processes.append(service)
    await service.start()
    await wait_for(lambda: len(received) >= 4, 10)
    service.signal(signal.SIGTERM)
    assert service.process is not None
    exit_code = await asyncio.to_thread(service.process.wait, 15)

    assert exit_code == 0
    assert _leases_held(tmp_path / "store.sqlite3") == 0
    with sqlite3.connect(tmp_path / "store.sqlite3") as db:
        delivered = db.execute(
            "SELECT COUNT(*) FROM deliveries WHERE status = 'delivered'"
        ).fetchone()[0]
    # Attempts in flight at the signal finished and their outcomes were kept.
    assert delivered >= 4
    assert delivered < 40
