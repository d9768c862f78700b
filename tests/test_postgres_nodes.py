"""Several service processes on one PostgreSQL database."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from conftest import wait_for
from processes import ServiceProcess, free_port, new_secrets, seed_deliveries, write_config

pytestmark = pytest.mark.slow


@pytest.fixture
def processes() -> Iterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    yield started
    for process in started:
        process.stop()


def _nodes(
    tmp_path: Path, store_url: str, count: int, secrets: dict[str, str], **delivery: object
) -> list[ServiceProcess]:
    nodes = []
    for number in range(count):
        port = free_port()
        path = write_config(
            tmp_path / f"node{number}.toml", port, store_url, secrets=secrets, **delivery
        )
        nodes.append(ServiceProcess(path, port))
    return nodes


async def test_three_nodes_deliver_each_webhook_once(
    tmp_path: Path, aiohttp_server, postgres_url: str, processes: list[ServiceProcess]
) -> None:
    requested: list[str] = []
    webhooks: Counter[str] = Counter()

    async def backend_handle(request: web.Request) -> web.Response:
        requested.append((await request.json())["data"]["correlation_id"])
        return web.Response(status=202)

    async def receiver_handle(request: web.Request) -> web.Response:
        webhooks[request.headers["webhook-id"]] += 1
        return web.Response(status=204)

    backend_app = web.Application()
    backend_app.router.add_post("/score-requests", backend_handle)
    backend = await aiohttp_server(backend_app)
    receiver_app = web.Application()
    receiver_app.router.add_post("/hooks", receiver_handle)
    receiver = await aiohttp_server(receiver_app)

    secrets = new_secrets(str(backend.make_url("/score-requests")))
    nodes = _nodes(tmp_path, postgres_url, 3, secrets)
    processes.extend(nodes)
    for node in nodes:
        node.spawn()
    for node in nodes:
        await node.wait_ready()

    client = await _create_client(nodes[0])
    total = 2000
    async with aiohttp.ClientSession() as session:
        semaphore = asyncio.Semaphore(32)

        async def submit(number: int) -> str:
            node = nodes[number % 3]
            async with semaphore, session.post(
                f"{node.url}/v1/score-requests",
                json={"customer_id": f"c-{number}", "callback_url": str(receiver.make_url("/hooks"))},
                headers={"Authorization": f"Bearer {client['api_key']}"},
            ) as response:
                assert response.status == 202
                return (await response.json())["correlation_id"]

        correlation_ids = await asyncio.gather(*(submit(n) for n in range(total)))
        await wait_for(lambda: len(requested) == total, 60)

        async def post_result(number: int, correlation_id: str) -> None:
            node = random.choice(nodes)
            async with semaphore, session.put(
                f"{node.url}/v1/backend/score-requests/{correlation_id}/result",
                json={"outcome": "ready", "score": 600 + number % 200},
                headers={"Authorization": f"Bearer {secrets['backend_token']}"},
            ) as response:
                assert response.status == 200

        await asyncio.gather(*(post_result(n, c) for n, c in enumerate(correlation_ids)))

    await wait_for(lambda: len(webhooks) == total, 60)
    assert max(webhooks.values()) == 1
    assert len(set(requested)) == total


async def _create_client(node: ServiceProcess) -> dict[str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "webhooks", "clients", "create", "nodes",
        "--config", str(node.config_path),
        stdout=asyncio.subprocess.PIPE,
    )
    output, _ = await process.communicate()
    assert process.returncode == 0
    return json.loads(output)


async def test_killed_node_deliveries_taken_over(
    tmp_path: Path, aiohttp_server, postgres_url: str, processes: list[ServiceProcess]
) -> None:
    hold = asyncio.Event()
    answered: Counter[str] = Counter()
    received: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        message_id = request.headers["webhook-id"]
        received.append(message_id)
        await hold.wait()
        answered[message_id] += 1
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hooks", handle)
    receiver = await aiohttp_server(app)

    secrets = new_secrets()
    # Leases end 2 s after a claim: a 1 s attempt timeout plus a 1 s margin.
    nodes = _nodes(
        tmp_path, postgres_url, 3, secrets,
        attempt_timeout=1.0, lease_margin=1.0, retry_schedule=[0.2] * 20,
        max_in_flight=20, max_in_flight_per_host=20,
        # Held attempts time out; the circuit must stay closed for this test.
        circuit_failure_threshold=100_000,
    )
    processes.extend(nodes)
    total = 150
    await seed_deliveries(nodes[0].config_path, str(receiver.make_url("/hooks")), total)
    victim = nodes[0]
    await victim.start()
    await wait_for(lambda: len(received) >= 20, 15)
    held_by_victim = len(received)
    for node in nodes[1:]:
        await node.start()
    victim.signal(signal.SIGKILL)
    assert victim.process is not None
    await asyncio.to_thread(victim.process.wait)
    hold.set()

    await wait_for(lambda: len(answered) == total, 30)
    assert held_by_victim == 20

    async def all_delivered() -> bool:
        connection = await asyncpg.connect(postgres_url)
        try:
            statuses = dict(
                await connection.fetch(
                    "SELECT status, COUNT(*) FROM deliveries GROUP BY status"
                )
            )
        finally:
            await connection.close()
        return statuses == {"delivered": total}

    await wait_for(all_delivered, 15)


async def test_simultaneous_starts_migrate_once(
    tmp_path: Path, postgres_url: str, processes: list[ServiceProcess]
) -> None:
    nodes = _nodes(tmp_path, postgres_url, 3, new_secrets())
    processes.extend(nodes)
    for node in nodes:
        node.spawn()
    for node in nodes:
        await node.wait_ready()

    connection = await asyncpg.connect(postgres_url)
    try:
        versions = await connection.fetch(
            "SELECT version, COUNT(*) AS count FROM schema_migrations GROUP BY version"
        )
    finally:
        await connection.close()
    assert versions
    assert all(row["count"] == 1 for row in versions)
