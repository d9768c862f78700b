"""Service processes for functional tests: config files, start, signals."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp

from conftest import wait_for
from store import open_store
from store.records import NewDelivery
from webhooks import credentials, ids
from webhooks.clients import NewClient, create_client
from webhooks.config import load_config
from webhooks.credentials import SecretBox
from webhooks.timefmt import utc_now


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_config(
    path: Path,
    port: int,
    store_url: str,
    *,
    secrets: dict[str, str] | None = None,
    **delivery: object,
) -> Path:
    """Write a config file for a service on ``port``; ``delivery`` overrides keys.

    Processes that share a store must share ``secrets`` (see ``new_secrets``).
    """
    secrets = secrets or new_secrets()
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
        f'url = "{store_url}"',
        "pool_size = 4",
        "[backend]",
        f'url = "{secrets["backend_url"]}"',
        f'token = "{secrets["backend_token"]}"',
        f'signing_secret = "{secrets["backend_signing_secret"]}"',
        "[admin]",
        f'token = "{secrets["admin_token"]}"',
        "[security]",
        f'master_key = "{secrets["master_key"]}"',
        # Load tests submit thousands of requests from one client at once.
        "[limits]",
        "submissions_per_second = 100000.0",
        "burst = 100000",
        "[delivery]",
    ]
    for key, value in settings.items():
        rendered = str(value).lower() if isinstance(value, bool) else repr(value)
        lines.append(f"{key} = {rendered}")
    path.write_text("\n".join(lines) + "\n")
    return path


def new_secrets(backend_url: str = "http://127.0.0.1:9/unused") -> dict[str, str]:
    return {
        "backend_url": backend_url,
        "backend_token": credentials.new_token(),
        "backend_signing_secret": credentials.new_signing_secret(),
        "admin_token": credentials.new_token(),
        "master_key": credentials.new_master_key(),
    }


class ServiceProcess:
    """``webhooks serve`` in a subprocess, logging to a file beside its config."""

    def __init__(self, config_path: Path, port: int) -> None:
        self.config_path = config_path
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self) -> None:
        log = open(self.config_path.with_suffix(".log"), "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "webhooks", "serve", "--config", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        log.close()

    async def wait_ready(self, timeout_s: float = 20) -> None:
        async def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                log = self.config_path.with_suffix(".log").read_text()
                raise AssertionError(f"service exited with {self.process.returncode}:\n{log}")
            try:
                async with aiohttp.ClientSession() as session:
                    async with session.get(f"{self.url}/readyz") as response:
                        return response.status == 200
            except aiohttp.ClientError:
                return False

        await wait_for(ready, timeout_s)

    async def start(self) -> None:
        self.spawn()
        await self.wait_ready()

    def signal(self, number: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, number)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


async def seed_deliveries(config_path: Path, url: str, count: int) -> NewClient:
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
