"""Crash safety and graceful stop of a real service process."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from conftest import wait_for
from processes import (
    ServiceProcess,
    free_port,
    new_secrets,
    seed_deliveries,
    write_config,
)

pytestmark = pytest.mark.slow


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
    port = free_port()
    config_path = write_config(
        tmp_path / "config.toml", port, f"sqlite:///{tmp_path / 'store.sqlite3'}"
    )
    await seed_deliveries(config_path, str(receiver.make_url("/hooks")), 100)

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
    port = free_port()
    config_path = write_config(
        tmp_path / "config.toml",
        port,
        f"sqlite:///{tmp_path / 'store.sqlite3'}",
        max_in_flight=4,
        max_in_flight_per_host=4,
    )
    await seed_deliveries(config_path, str(receiver.make_url("/hooks")), 40)

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


async def test_second_service_on_same_file_refused(
    tmp_path: Path, processes: list[ServiceProcess]
) -> None:
    store_url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    secrets = new_secrets()
    first = ServiceProcess(
        write_config(tmp_path / "first.toml", free_port(), store_url, secrets=secrets),
        0,
    )
    first.port = int(first.config_path.read_text().split("port = ")[1].split()[0])
    processes.append(first)
    await first.start()

    same_port = write_config(tmp_path / "same-port.toml", first.port, store_url, secrets=secrets)
    same_file = write_config(tmp_path / "same-file.toml", free_port(), store_url, secrets=secrets)
    for path, expected in ((same_port, "cannot listen"), (same_file, "another process")):
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "webhooks", "serve", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 1, path.name
        assert expected in result.stderr, path.name
        assert "Traceback" not in result.stderr, path.name
    assert first.process is not None
    assert first.process.poll() is None
