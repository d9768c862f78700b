#!/usr/bin/env python3
"""Benchmark the service end to end on 127.0.0.1 and print a table of figures.

One run starts, each as its own process: ``webhooks serve`` on a fresh store,
a webhook receiver that returns 204 at once, a receiver that never responds,
and a stand-in for the scoring backend (see bench_peers.py). It then runs the
scenarios below in order and prints each figure beside the ceiling measured
in the same run:

ceiling              the receiver driven directly by a plain aiohttp client
                     that signs each request (v1 HMAC and v1a Ed25519)
submission           POST /v1/score-requests per second, 64 clients
delivery throughput  webhooks per second once the backend posts N results
latency              backend result call returned -> webhook arrived
isolation            healthy-host p99 while deliveries hang on another host
recovery             restart after SIGKILL -> first and last webhook
backlog              a large due backlog to a refusing port: memory, disk,
                     and the time to deliver it once the receiver is up

See docs/benchmarks.md for what each figure means and the latest results.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from bench_system import (
    CpuAccount,
    PostgresCluster,
    find_postgres_binaries,
    free_port,
    machine_facts,
    rss_mib,
    sqlite_bytes,
)
from store import open_store
from store.records import NewDelivery
from store.sqlite import path_from_url
from webhooks import credentials, ids
from webhooks.clients import create_client
from webhooks.credentials import SecretBox
from webhooks.timefmt import utc_now

SCRIPTS = Path(__file__).resolve().parent
PEERS = SCRIPTS / "bench_peers.py"
CONCURRENCY = 64  # requests in flight for the ceiling, submissions and results
SEED_CHUNK = 50_000  # deliveries per store transaction when seeding
RSS_SAMPLE_S = 0.5
POLL_S = 0.1


class BenchError(Exception):
    """A step of the benchmark failed; the message names the step and the cause."""


class StopRun(Exception):
    """The scenario named by ``--stop-after`` has run."""


@dataclass(frozen=True, kw_only=True)
class Sizes:
    requests: int  # score requests whose results are posted flat out
    ceiling_requests: int
    light_rate_per_s: float
    light_results: int  # results posted at the light rate
    heavy_load_share: float  # of the measured delivery throughput
    heavy_duration_s: float
    hanging: int  # deliveries to the host that never responds
    isolation_results: int  # healthy results posted while they hang
    recovery: int  # due deliveries when the service is killed
    backlog: int
    backlog_retry_s: float  # how long the backlog is retried before the receiver is up
    rss_early_s: float  # the "a minute in" sample of the backlog's memory
    circuit_cooldown_s: float  # cool-down of an open circuit


FULL = Sizes(
    requests=20_000,
    ceiling_requests=20_000,
    light_rate_per_s=50,
    light_results=1_000,
    heavy_load_share=0.8,
    heavy_duration_s=10,
    hanging=500,
    isolation_results=500,
    recovery=10_000,
    backlog=1_000_000,
    backlog_retry_s=90,
    rss_early_s=60,
    circuit_cooldown_s=10,
)
QUICK = Sizes(
    requests=1_000,
    ceiling_requests=2_000,
    light_rate_per_s=50,
    light_results=100,
    heavy_load_share=0.8,
    heavy_duration_s=1,
    hanging=50,
    isolation_results=100,
    recovery=1_000,
    backlog=10_000,
    backlog_retry_s=3,
    rss_early_s=2,
    circuit_cooldown_s=2,
)

# Delivery settings of the benchmarked service; the rest are the defaults.
# One receiver host gets as many attempts in flight as the ceiling's client,
# and a hanging host cannot take the slots of the healthy one. The retry
# schedule and the circuit cool-down (Sizes.circuit_cooldown_s) are shorter
# than the defaults so that the time to drain a backlog measures the
# dispatcher rather than the waits.
DELIVERY_SETTINGS: dict[str, object] = {
    "max_in_flight": 128,
    "max_in_flight_per_host": 64,
    "retry_schedule": [2.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0],
    "allow_http": True,
    "allow_private_networks": True,
}

TARGETS = {
    "delivery_ratio_min": 0.5,
    "latency_light_p99_ms_max": 25.0,
    "latency_heavy_p99_ms_max": 250.0,
    "backlog_rss_mib_max": 150.0,
    "isolation_ratio_max": 2.0,
    "recovery_first_s_max": 2.0,
}


# Processes


class Process:
    """A child process whose output goes to a log file in the run's folder."""

    def __init__(self, name: str, command: list[str], log_path: Path) -> None:
        self.name = name
        self.command = command
        self.log_path = log_path
        self.popen: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def check_alive(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise BenchError(
                f"{self.name} exited unexpectedly; end of its log:\n{tail}"
            )

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait()

    def terminate(self, timeout_s: float = 20) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()


def write_service_config(
    path: Path,
    port: int,
    store_url: str,
    backend_url: str,
    secrets_: dict[str, str],
    sizes: Sizes,
) -> None:
    lines = [
        "[server]",
        'host = "127.0.0.1"',
        f"port = {port}",
        f'public_url = "http://127.0.0.1:{port}"',
        "[store]",
        f'url = "{store_url}"',
        "[backend]",
        f'url = "{backend_url}"',
        f'token = "{secrets_["backend_token"]}"',
        f'signing_secret = "{secrets_["backend_signing_secret"]}"',
        "[admin]",
        f'token = "{secrets_["admin_token"]}"',
        "[security]",
        f'master_key = "{secrets_["master_key"]}"',
        "[delivery]",
    ]
    for key, value in DELIVERY_SETTINGS.items():
        rendered = str(value).lower() if isinstance(value, bool) else repr(value)
        lines.append(f"{key} = {rendered}")
    lines.append(f"circuit_cooldown = {sizes.circuit_cooldown_s!r}")
    # The benchmark is one client sending as fast as it can: lift its rate limit.
    lines += ["[limits]", "submissions_per_second = 1000000.0", "burst = 1000000"]
    path.write_text("\n".join(lines) + "\n")


# Measurements


def percentile(values: list[float], share: float) -> float:
    """Return the nearest-rank percentile of ``values`` (``share`` in 0..1)."""
    ordered = sorted(values)
    rank = max(1, round(share * len(ordered) + 0.5))
    return ordered[min(rank, len(ordered)) - 1]


def latency_figures(
    returned: dict[str, float], arrived: dict[str, float]
) -> dict[str, Any]:
    missing = [cid for cid in returned if cid not in arrived]
    if missing:
        raise BenchError(f"{len(missing)} webhooks never arrived, such as {missing[0]}")
    latencies_ms = [(arrived[cid] - returned[cid]) * 1000 for cid in returned]
    return {
        "webhooks": len(latencies_ms),
        "p50_ms": round(percentile(latencies_ms, 0.50), 2),
        "p95_ms": round(percentile(latencies_ms, 0.95), 2),
        "p99_ms": round(percentile(latencies_ms, 0.99), 2),
        "max_ms": round(max(latencies_ms), 2),
        # A webhook can arrive before the 200 of its result call is read.
        "before_return": sum(1 for value in latencies_ms if value < 0),
    }


class RssSampler:
    """Samples a process's VmRSS in the background."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, float]] = []  # (monotonic time, MiB)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._sample())

    async def _sample(self) -> None:
        while True:
            value = rss_mib(self.pid)
            if value is not None:
                self.samples.append((time.monotonic(), value))
            await asyncio.sleep(RSS_SAMPLE_S)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def peak(self, since: float, until: float) -> float:
        window = [mib for at, mib in self.samples if since <= at <= until]
        return round(max(window), 1) if window else 0.0

    def first(self) -> float:
        return round(self.samples[0][1], 1) if self.samples else 0.0

    def at(self, moment: float) -> float:
        before = [mib for at, mib in self.samples if at <= moment]
        return round(before[-1], 1) if before else 0.0


async def wait_until(
    check: Callable[[], Awaitable[bool]], timeout_s: float, what: str
) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(POLL_S)


def delivery_timeout_s(count: int) -> float:
    """Return how long to wait for ``count`` webhooks: 60 s plus 10 ms each."""
    return 60 + count / 100


# The run


class Bench:
    def __init__(self, args: argparse.Namespace, sizes: Sizes, folder: Path) -> None:
        self.args = args
        self.sizes = sizes
        self.folder = folder
        self.session: aiohttp.ClientSession
        self.secrets = {
            "backend_token": credentials.new_token(),
            "backend_signing_secret": credentials.new_signing_secret(),
            "admin_token": credentials.new_token(),
            "master_key": credentials.new_master_key(),
        }
        self.service_port = free_port()
        self.receiver_port = free_port()
        self.hang_port = free_port()
        self.backend_port = free_port()
        self.closed_port = free_port()
        self.processes: list[Process] = []
        self.service: Process | None = None
        self.client: dict[str, str] = {}
        self.public_keys: list[str] = []
        self.cluster: PostgresCluster | None = None
        self.store_kind = "sqlite"
        self.base_url = ""
        self.databases: list[str] = []
        self.results: dict[str, Any] = {}
        self.cpu = CpuAccount([os.getpid()])
        self.batch = 0  # numbers each submission's customer IDs apart
        self.events_expected = 0  # score.requested events sent to the backend so far
        self.server_version: str | None = None

    # URLs and HTTP

    def url(self, port: int, path: str) -> str:
        return f"http://127.0.0.1:{port}{path}"

    @property
    def service_url(self) -> str:
        return self.url(self.service_port, "")

    async def get_json(self, url: str) -> Any:
        async with self.session.get(url) as response:
            if response.status != 200:
                raise BenchError(f"GET {url} returned HTTP {response.status}")
            return await response.json()

    async def post_json(self, url: str, document: Any) -> Any:
        async with self.session.post(url, json=document) as response:
            if response.status not in (200, 202):
                text = await response.text()
                raise BenchError(f"POST {url} returned HTTP {response.status}: {text}")
            return await response.json()

    # Stores

    async def new_store_url(self, name: str) -> str:
        if self.store_kind == "sqlite":
            return f"sqlite:///{self.folder / name}.sqlite3"
        database = f"bench_{name}_{secrets.token_hex(4)}"
        admin = await asyncpg.connect(self.base_url)
        try:
            await admin.execute(f"CREATE DATABASE {database}")
        finally:
            await admin.close()
        self.databases.append(database)
        return self._database_url(database)

    def _database_url(self, database: str) -> str:
        head, _, _ = self.base_url.rpartition("/")
        return f"{head}/{database}"

    async def drop_databases(self) -> None:
        if not self.databases:
            return
        admin = await asyncpg.connect(self.base_url)
        try:
            for database in self.databases:
                await admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        finally:
            await admin.close()

    async def store_bytes(self, store_url: str) -> int:
        if self.store_kind == "sqlite":
            return sqlite_bytes(path_from_url(store_url))
        connection = await asyncpg.connect(store_url)
        try:
            return await connection.fetchval(
                "SELECT pg_database_size(current_database())"
            )
        finally:
            await connection.close()

    async def seed(
        self, store_url: str, client_id: str, url: str, count: int, tag: str
    ) -> float:
        """Insert ``count`` due deliveries to ``url``; return the seconds it took."""
        started = time.monotonic()
        store = await open_store(store_url)
        host = url.split("/")[2]
        try:
            for first in range(0, count, SEED_CHUNK):
                now = utc_now()
                chunk = [
                    NewDelivery(
                        id=ids.delivery_id(),
                        message_id=ids.message_id(),
                        client_id=client_id,
                        correlation_id=f"{tag}-{number}",
                        event_type="score.ready",
                        url=url,
                        host=host,
                        payload=_webhook_body(f"{tag}-{number}"),
                        next_attempt_at=now,
                    )
                    for number in range(first, min(count, first + SEED_CHUNK))
                ]
                async with store.transaction() as transaction:
                    await transaction.insert_deliveries(chunk)
        finally:
            await store.close()
        return time.monotonic() - started

    # Processes

    def peer(self, name: str, *args: str) -> Process:
        command = [sys.executable, str(PEERS), *args]
        process = Process(name, command, self.folder / f"{name}.log")
        self.processes.append(process)
        process.spawn()
        return process

    def service_process(self, config_path: Path) -> Process:
        command = [
            sys.executable,
            "-m",
            "webhooks",
            "serve",
            "--config",
            str(config_path),
        ]
        process = Process("service", command, self.folder / "service.log")
        self.processes.append(process)
        return process

    async def wait_http(
        self, process: Process, url: str, timeout_s: float = 30
    ) -> None:
        async def answers() -> bool:
            process.check_alive()
            try:
                async with self.session.get(url) as response:
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await wait_until(answers, timeout_s, f"{process.name} at {url}")

    async def start_service(self) -> float:
        """Start the service; return the monotonic time of the spawn."""
        assert self.service is not None
        spawned_at = time.monotonic()
        self.service.spawn()
        await self.wait_http(self.service, self.url(self.service_port, "/readyz"))
        return spawned_at

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            process.terminate(timeout_s=10)

    # Scenario helpers

    async def receiver_stats(self, port: int) -> dict[str, Any]:
        return await self.get_json(self.url(port, "/_bench/stats"))

    async def configure_receivers(self) -> None:
        document = {
            "secrets": [self.client["signing_secret"]],
            "public_keys": self.public_keys,
        }
        for port in (self.receiver_port, self.hang_port):
            await self.post_json(self.url(port, "/_bench/configure"), document)

    async def submit(self, count: int, callback_port: int) -> tuple[list[str], float]:
        """Create ``count`` score requests; return their IDs and the seconds taken."""
        self.batch += 1
        callback = self.url(callback_port, "/hooks")
        headers = {"Authorization": f"Bearer {self.client['api_key']}"}
        numbers = iter(range(count))
        created: list[str] = [""] * count

        async def worker() -> None:
            for number in numbers:
                body = {
                    "customer_id": f"b{self.batch}-{number}",
                    "callback_url": callback,
                }
                url = f"{self.service_url}/v1/score-requests"
                async with self.session.post(
                    url, json=body, headers=headers
                ) as response:
                    if response.status != 202:
                        raise BenchError(
                            f"submission returned HTTP {response.status}: "
                            f"{await response.text()}"
                        )
                    created[number] = (await response.json())["correlation_id"]

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return created, time.monotonic() - started

    async def wait_backend_events(self, total: int) -> None:
        async def arrived() -> bool:
            stats = await self.get_json(self.url(self.backend_port, "/_bench/stats"))
            return stats["distinct"] >= total

        await wait_until(
            arrived, delivery_timeout_s(total), f"{total} score.requested events"
        )

    async def post_results(
        self, correlation_ids: list[str], rate_per_s: float = 0
    ) -> dict[str, Any]:
        """Have the backend stand-in post results and wait for its last call."""
        document = {
            "service_url": self.service_url,
            "token": self.secrets["backend_token"],
            "correlation_ids": correlation_ids,
            "concurrency": CONCURRENCY,
            "rate_per_s": rate_per_s,
        }
        await self.post_json(
            self.url(self.backend_port, "/_bench/post-results"), document
        )
        results_url = self.url(self.backend_port, "/_bench/results")
        expected_s = len(correlation_ids) / rate_per_s if rate_per_s else 0

        async def finished() -> bool:
            return (await self.get_json(results_url))["done"]

        await wait_until(
            finished,
            expected_s + delivery_timeout_s(len(correlation_ids)),
            "result calls",
        )
        report = await self.get_json(results_url + "?times=1")
        if report["failures"]:
            raise BenchError(
                f"{report['failures']} result calls failed, such as "
                f"{report['first_failures']}"
            )
        return report

    async def wait_webhooks(self, port: int, count: int) -> dict[str, Any]:
        async def arrived() -> bool:
            return (await self.receiver_stats(port))["distinct"] >= count

        await wait_until(arrived, delivery_timeout_s(count), f"{count} webhooks")
        return await self.receiver_stats(port)

    async def reset_receiver(self, port: int) -> None:
        await self.post_json(self.url(port, "/_bench/reset"), {})

    async def measure_latency(self, count: int, rate_per_s: float) -> dict[str, Any]:
        correlation_ids, _ = await self.submit(count, self.receiver_port)
        await self.wait_backend_events_for(correlation_ids)
        await self.reset_receiver(self.receiver_port)
        report = await self.post_results(correlation_ids, rate_per_s)
        await self.wait_webhooks(self.receiver_port, count)
        arrived = await self.get_json(self.url(self.receiver_port, "/_bench/arrivals"))
        figures = latency_figures(report["returned_at"], arrived)
        return {"rate_per_s": round(rate_per_s, 1), **figures}

    async def wait_backend_events_for(self, correlation_ids: list[str]) -> None:
        self.events_expected += len(correlation_ids)
        await self.wait_backend_events(self.events_expected)

    # Scenarios

    async def scenario(
        self, name: str, body: Callable[[], Awaitable[dict[str, Any]]]
    ) -> None:
        print(f"... {name}", file=sys.stderr, flush=True)
        started = time.monotonic()
        self.cpu.start()
        figures = await body()
        elapsed_s = time.monotonic() - started
        figures["elapsed_s"] = round(elapsed_s, 1)
        figures["cpu"] = self.cpu.stop(elapsed_s)
        self.results[name] = figures
        if name == self.args.stop_after:
            raise StopRun

    async def ceiling(self) -> dict[str, Any]:
        """Drive the receiver with signed POSTs from a plain aiohttp client."""
        secret = credentials.new_signing_secret()
        private_key = Ed25519PrivateKey.generate()
        public_key = private_key.public_key().public_bytes(
            Encoding.Raw, PublicFormat.Raw
        )
        await self.post_json(
            self.url(self.receiver_port, "/_bench/configure"),
            {
                "secrets": [secret],
                "public_keys": [base64.b64encode(public_key).decode()],
            },
        )
        await self.reset_receiver(self.receiver_port)
        key = credentials.decode_signing_secret(secret)
        url = self.url(self.receiver_port, "/hooks")
        count = self.sizes.ceiling_requests
        numbers = iter(range(count))

        async def worker() -> None:
            for number in numbers:
                body = _webhook_body(f"ceiling-{number}")
                message_id = ids.message_id()
                timestamp = str(int(time.time()))
                content = f"{message_id}.{timestamp}.".encode() + body
                v1 = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest())
                v1a = base64.b64encode(private_key.sign(content))
                headers = {
                    "Content-Type": "application/json",
                    "webhook-id": message_id,
                    "webhook-timestamp": timestamp,
                    "webhook-signature": f"v1,{v1.decode()} v1a,{v1a.decode()}",
                }
                async with self.session.post(
                    url, data=body, headers=headers
                ) as response:
                    await response.read()
                    if response.status != 204:
                        raise BenchError(
                            f"the receiver returned HTTP {response.status}"
                        )

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        elapsed_s = time.monotonic() - started
        stats = await self.receiver_stats(self.receiver_port)
        return {
            "requests": count,
            "concurrency": CONCURRENCY,
            "requests_per_s": round(count / elapsed_s, 1),
            "signatures_checked": stats["signatures_checked"],
            "signature_failures": stats["signature_failures"],
        }

    async def submission_and_throughput(self) -> None:
        count = self.sizes.requests
        correlation_ids: list[str] = []

        async def submission() -> dict[str, Any]:
            created, elapsed_s = await self.submit(count, self.receiver_port)
            correlation_ids.extend(created)
            await self.wait_backend_events_for(created)
            return self._with_ratio(
                {
                    "requests": count,
                    "concurrency": CONCURRENCY,
                    "requests_per_s": round(count / elapsed_s, 1),
                }
            )

        async def throughput() -> dict[str, Any]:
            await self.reset_receiver(self.receiver_port)
            report = await self.post_results(correlation_ids)
            stats = await self.wait_webhooks(self.receiver_port, count)
            arrived = await self.get_json(
                self.url(self.receiver_port, "/_bench/arrivals")
            )
            last = max(arrived[cid] for cid in correlation_ids)
            elapsed_s = last - report["started_at"]
            results_s = report["finished_at"] - report["started_at"]
            return self._with_ratio(
                {
                    "webhooks": count,
                    "requests_per_s": round(count / elapsed_s, 1),
                    "results_per_s": round(count / results_s, 1),
                    "duplicates": stats["duplicates"],
                    "signatures_checked": stats["signatures_checked"],
                    "signature_failures": stats["signature_failures"],
                }
            )

        await self.scenario("submission", submission)
        await self.profiled(lambda: self.scenario("delivery_throughput", throughput))

    def _with_ratio(self, figures: dict[str, Any]) -> dict[str, Any]:
        ceiling = self.results["ceiling"]["requests_per_s"]
        figures["ratio_to_ceiling"] = round(figures["requests_per_s"] / ceiling, 3)
        return figures

    async def profiled(self, run: Callable[[], Awaitable[None]]) -> None:
        """Run a scenario, under py-spy if ``--py-spy`` names an output file."""
        if not self.args.py_spy:
            await run()
            return
        assert self.service is not None
        beside_python = Path(sys.executable).parent / "py-spy"
        py_spy = str(beside_python) if beside_python.exists() else "py-spy"
        profiler = subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(self.service.pid),
                "--rate",
                "200",
                "--format",
                self.args.py_spy_format,
                "--output",
                self.args.py_spy,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await asyncio.sleep(1)  # py-spy attaches before the load starts
        try:
            await run()
        finally:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(60)

    async def latencies(self) -> None:
        sizes = self.sizes

        async def light() -> dict[str, Any]:
            return await self.measure_latency(
                sizes.light_results, sizes.light_rate_per_s
            )

        async def heavy() -> dict[str, Any]:
            throughput = self.results["delivery_throughput"]["requests_per_s"]
            rate_per_s = sizes.heavy_load_share * throughput
            count = max(50, round(rate_per_s * sizes.heavy_duration_s))
            figures = await self.measure_latency(count, rate_per_s)
            return {"share_of_throughput": sizes.heavy_load_share, **figures}

        await self.scenario("latency_light", light)
        if "delivery_throughput" in self.results:
            await self.scenario("latency_heavy", heavy)

    async def isolation(self) -> dict[str, Any]:
        sizes = self.sizes
        baseline = await self.measure_latency(
            sizes.isolation_results, sizes.light_rate_per_s
        )
        hanging_ids, _ = await self.submit(sizes.hanging, self.hang_port)
        healthy_ids, _ = await self.submit(sizes.isolation_results, self.receiver_port)
        await self.wait_backend_events_for(hanging_ids + healthy_ids)
        await self.post_results(hanging_ids)
        per_host = int(DELIVERY_SETTINGS["max_in_flight_per_host"])  # type: ignore[call-overload]
        held = min(per_host, sizes.hanging)

        async def hanging() -> bool:
            return (await self.receiver_stats(self.hang_port))["in_flight"] >= held

        await wait_until(hanging, 30, f"{held} requests held by the hanging receiver")
        await self.reset_receiver(self.receiver_port)
        report = await self.post_results(healthy_ids, sizes.light_rate_per_s)
        await self.wait_webhooks(self.receiver_port, len(healthy_ids))
        held_at_end = (await self.receiver_stats(self.hang_port))["in_flight"]
        arrived = await self.get_json(self.url(self.receiver_port, "/_bench/arrivals"))
        with_hanging = latency_figures(report["returned_at"], arrived)
        return {
            "hanging": sizes.hanging,
            "held_at_start": held,
            "held_at_end": held_at_end,
            "rate_per_s": sizes.light_rate_per_s,
            "p99_baseline_ms": baseline["p99_ms"],
            "p99_with_hanging_ms": with_hanging["p99_ms"],
            "p50_with_hanging_ms": with_hanging["p50_ms"],
            "ratio": round(with_hanging["p99_ms"] / max(baseline["p99_ms"], 0.001), 2),
        }

    async def recovery(self, store_url: str) -> dict[str, Any]:
        assert self.service is not None
        count = self.sizes.recovery
        self.service.kill()
        url = self.url(self.receiver_port, "/hooks")
        await self.seed(store_url, self.client["client_id"], url, count, "recovery")
        await self.reset_receiver(self.receiver_port)
        spawned_at = await self.start_service()
        ready_s = time.monotonic() - spawned_at
        stats = await self.wait_webhooks(self.receiver_port, count)
        return {
            "deliveries": count,
            "ready_s": round(ready_s, 2),
            "first_webhook_s": round(stats["first_at"] - spawned_at, 2),
            "last_webhook_s": round(stats["last_at"] - spawned_at, 2),
            "duplicates": stats["duplicates"],
        }

    async def backlog(self) -> dict[str, Any]:
        assert self.service is not None
        count = self.sizes.backlog
        # The isolation scenario leaves attempts hanging, which a graceful
        # stop would wait for; this store is not used again.
        self.service.kill()
        store_url = await self.new_store_url("backlog")
        store = await open_store(store_url)
        try:
            box = SecretBox(credentials.decode_master_key(self.secrets["master_key"]))
            client = await create_client(store, box, "backlog")
        finally:
            await store.close()
        closed = self.url(self.closed_port, "/hooks")
        seed_s = await self.seed(store_url, client.record.id, closed, count, "backlog")
        seeded_bytes = await self.store_bytes(store_url)

        config_path = self.folder / "backlog.toml"
        write_service_config(
            config_path,
            self.service_port,
            store_url,
            self.url(self.backend_port, "/score-requests"),
            self.secrets,
            self.sizes,
        )
        self.service = self.service_process(config_path)
        spawned_at = await self.start_service()
        # A new store generates a new v1a key pair.
        await self.fetch_public_keys()
        sampler = RssSampler(self.service.pid)
        sampler.start()
        try:
            await asyncio.sleep(self.sizes.backlog_retry_s)
            retry_end = time.monotonic()
            receiver = self.peer(
                "backlog-receiver",
                "receiver",
                "--port",
                str(self.closed_port),
                "--no-arrivals",
                "--sample-every",
                "1000",
            )
            await self.wait_http(receiver, self.url(self.closed_port, "/_bench/stats"))
            await self.post_json(
                self.url(self.closed_port, "/_bench/configure"),
                {"secrets": [client.signing_secret], "public_keys": self.public_keys},
            )
            up_at = time.monotonic()
            stats = await self.wait_webhooks(self.closed_port, count)
            drained_at = time.monotonic()
        finally:
            await sampler.stop()
        return {
            "deliveries": count,
            "seed_s": round(seed_s, 1),
            "seed_rows_per_s": round(count / seed_s),
            "retry_phase_s": self.sizes.backlog_retry_s,
            "rss_ready_mib": sampler.first(),
            "rss_early_at_s": self.sizes.rss_early_s,
            "rss_early_mib": sampler.at(spawned_at + self.sizes.rss_early_s),
            "rss_end_of_retries_mib": sampler.at(retry_end),
            "rss_peak_retries_mib": sampler.peak(spawned_at, retry_end),
            "rss_peak_drain_mib": sampler.peak(up_at, drained_at),
            "rss_end_mib": sampler.at(drained_at),
            "store_bytes_seeded": seeded_bytes,
            "store_bytes_end": await self.store_bytes(store_url),
            "first_webhook_after_up_s": round(stats["first_at"] - up_at, 2),
            "drain_s": round(stats["last_at"] - up_at, 1),
            "drain_per_s": round(
                count / max(stats["last_at"] - stats["first_at"], 0.001), 1
            ),
            "duplicates": stats["duplicates"],
            "signature_failures": stats["signature_failures"],
        }

    # The whole run

    async def prepare_store(self) -> str:
        if self.args.postgres:
            binaries = find_postgres_binaries()
            if binaries is None:
                raise BenchError(
                    "PostgreSQL server binaries (initdb, pg_ctl) not found; install "
                    "them with `apt-get install postgresql` or pass --store URL"
                )
            self.cluster = PostgresCluster(binaries)
            self.cluster.start()
            server_pid = self.cluster.server_pid()
            if server_pid is not None:
                self.cpu.roots.append(server_pid)
            self.store_kind = "postgresql"
            self.base_url = self.cluster.url()
        elif self.args.store:
            self.store_kind = "postgresql"
            self.base_url = self.args.store
        if self.store_kind == "postgresql":
            self.server_version = await _server_version(self.base_url)
        return await self.new_store_url("main")

    async def start_peers(self) -> None:
        backend = self.peer("backend", "backend", "--port", str(self.backend_port))
        receiver = self.peer("receiver", "receiver", "--port", str(self.receiver_port))
        hang = self.peer(
            "hanging-receiver", "receiver", "--port", str(self.hang_port), "--hang"
        )
        started = (
            (backend, self.backend_port),
            (receiver, self.receiver_port),
            (hang, self.hang_port),
        )
        for process, port in started:
            await self.wait_http(process, self.url(port, "/_bench/stats"))
        await self.post_json(
            self.url(self.backend_port, "/_bench/configure"),
            {"secrets": [self.secrets["backend_signing_secret"]]},
        )

    async def create_bench_client(self, config_path: Path) -> None:
        output = subprocess.run(
            [
                sys.executable,
                "-m",
                "webhooks",
                "clients",
                "create",
                "bench",
                "--config",
                str(config_path),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        self.client = json.loads(output)
        await self.fetch_public_keys()

    async def fetch_public_keys(self) -> None:
        """Read the service's v1a public keys, if it publishes them."""
        async with self.session.get(
            f"{self.service_url}/v1/webhooks/signing-keys"
        ) as response:
            if response.status == 200:
                document = await response.json()
                self.public_keys = [key["public_key"] for key in document["keys"]]

    async def run(self) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=120)
        connector = aiohttp.TCPConnector(limit=CONCURRENCY * 2)
        async with aiohttp.ClientSession(
            timeout=timeout, connector=connector
        ) as session:
            self.session = session
            try:
                await self._run_scenarios()
            except StopRun:
                pass
        return self.results

    async def _run_scenarios(self) -> None:
        store_url = await self.prepare_store()
        config_path = self.folder / "service.toml"
        write_service_config(
            config_path,
            self.service_port,
            store_url,
            self.url(self.backend_port, "/score-requests"),
            self.secrets,
            self.sizes,
        )
        await self.start_peers()
        await self.scenario("ceiling", self.ceiling)

        self.service = self.service_process(config_path)
        await self.start_service()
        await self.create_bench_client(config_path)
        await self.configure_receivers()
        chosen = self.args.only
        if chosen is None or chosen & {"submission", "delivery_throughput"}:
            await self.submission_and_throughput()
        if chosen is None or chosen & {"latency_light", "latency_heavy"}:
            await self.latencies()
        if chosen is None or "recovery" in chosen:
            await self.scenario("recovery", lambda: self.recovery(store_url))
        if chosen is None or "isolation" in chosen:
            await self.scenario("isolation", self.isolation)
        if chosen is None or "backlog" in chosen:
            await self.scenario("backlog", self.backlog)


def _webhook_body(correlation_id: str) -> bytes:
    """Return a body the size and shape of a score.ready webhook."""
    event = {
        "type": "score.ready",
        "timestamp": "2026-12-04T10:02:13.000Z",
        "data": {
            "correlation_id": correlation_id,
            "customer_id": "cust-1042",
            "status": "ready",
            "score_url": f"http://127.0.0.1:8080/v1/score-requests/{correlation_id}",
        },
    }
    return json.dumps(event, separators=(",", ":")).encode()


# Report


@dataclass(frozen=True)
class Row:
    scenario: str
    figure: str
    value: str
    ceiling: str = ""
    target: str = ""
    met: bool | None = None


def _rows(results: dict[str, Any], quick: bool) -> Iterator[Row]:
    """Yield the table rows of the scenarios that ran, in the order they ran."""
    ceiling_per_s = results["ceiling"]["requests_per_s"]
    for name, figures in results.items():
        yield from ROWS[name](figures, ceiling_per_s, quick)


def _judged(quick: bool, ok: bool) -> bool | None:
    return None if quick else ok


def _ceiling_rows(
    figures: dict[str, Any], ceiling: float, quick: bool
) -> Iterator[Row]:
    yield Row("ceiling", "signed POSTs/s, 64 in flight", f"{ceiling:,.0f}")


def _submission_rows(
    figures: dict[str, Any], ceiling: float, quick: bool
) -> Iterator[Row]:
    yield Row(
        "submission",
        "POST /v1/score-requests/s, 64 clients",
        f"{figures['requests_per_s']:,.0f}",
        f"{figures['ratio_to_ceiling']:.0%}",
    )


def _throughput_rows(
    figures: dict[str, Any], ceiling: float, quick: bool
) -> Iterator[Row]:
    ratio = figures["ratio_to_ceiling"]
    minimum = TARGETS["delivery_ratio_min"]
    yield Row(
        "delivery throughput",
        f"webhooks/s ({figures['webhooks']:,} results)",
        f"{figures['requests_per_s']:,.0f}",
        f"{ratio:.0%}",
        f">= {minimum:.0%}",
        _judged(quick, ratio >= minimum),
    )


def _latency_rows(label: str, limit: float) -> RowsOf:
    def rows(figures: dict[str, Any], ceiling: float, quick: bool) -> Iterator[Row]:
        yield Row(
            f"latency, {label}",
            f"p50 / p95 ms at {figures['rate_per_s']:,.0f}/s",
            f"{figures['p50_ms']:.1f} / {figures['p95_ms']:.1f}",
        )
        yield Row(
            f"latency, {label}",
            "p99 ms",
            f"{figures['p99_ms']:.1f}",
            "",
            f"<= {limit:g}",
            _judged(quick, figures["p99_ms"] <= limit),
        )

    return rows


def _isolation_rows(
    figures: dict[str, Any], ceiling: float, quick: bool
) -> Iterator[Row]:
    maximum = TARGETS["isolation_ratio_max"]
    yield Row(
        "isolation",
        f"p99 ms, {figures['hanging']} hanging vs none",
        f"{figures['p99_with_hanging_ms']:.1f} / {figures['p99_baseline_ms']:.1f}",
    )
    yield Row(
        "isolation",
        "p99 ratio",
        f"{figures['ratio']:.2f}",
        "",
        f"<= {maximum:g}",
        _judged(quick, figures["ratio"] <= maximum),
    )


def _recovery_rows(
    figures: dict[str, Any], ceiling: float, quick: bool
) -> Iterator[Row]:
    maximum = TARGETS["recovery_first_s_max"]
    yield Row(
        "recovery",
        f"first webhook s ({figures['deliveries']:,} due)",
        f"{figures['first_webhook_s']:.2f}",
        "",
        f"<= {maximum:g}",
        _judged(quick, figures["first_webhook_s"] <= maximum),
    )
    yield Row("recovery", "last webhook s", f"{figures['last_webhook_s']:.2f}")


def _backlog_rows(
    figures: dict[str, Any], ceiling: float, quick: bool
) -> Iterator[Row]:
    maximum = TARGETS["backlog_rss_mib_max"]
    early = figures["rss_early_mib"]
    late = figures["rss_end_of_retries_mib"]
    yield Row(
        "backlog",
        f"peak RSS MiB while retried ({figures['deliveries']:,})",
        f"{figures['rss_peak_retries_mib']:.0f}",
        "",
        f"<= {maximum:g}",
        _judged(quick, figures["rss_peak_retries_mib"] <= maximum),
    )
    yield Row(
        "backlog",
        f"RSS MiB at {figures['rss_early_at_s']:g} s / end of retries",
        f"{early:.0f} / {late:.0f}",
        "",
        "not growing",
        _judged(quick, late - early <= 0.1 * early),
    )
    yield Row(
        "backlog",
        "store MiB seeded / at end",
        f"{figures['store_bytes_seeded'] / 2**20:,.0f} / "
        f"{figures['store_bytes_end'] / 2**20:,.0f}",
    )
    yield Row(
        "backlog",
        "s to deliver all once receiver up",
        f"{figures['drain_s']:,.1f}",
        f"{figures['drain_per_s'] / ceiling:.0%}",
    )


RowsOf = Callable[[dict[str, Any], float, bool], Iterator[Row]]
ROWS: dict[str, RowsOf] = {
    "ceiling": _ceiling_rows,
    "submission": _submission_rows,
    "delivery_throughput": _throughput_rows,
    "latency_light": _latency_rows("light", TARGETS["latency_light_p99_ms_max"]),
    "latency_heavy": _latency_rows("80 %", TARGETS["latency_heavy_p99_ms_max"]),
    "recovery": _recovery_rows,
    "isolation": _isolation_rows,
    "backlog": _backlog_rows,
}


def format_table(report: dict[str, Any]) -> str:
    rows = list(_rows(report["scenarios"], report["quick"]))
    header = Row("scenario", "figure", "value", "vs ceiling", "target")
    widths = [
        max(len(getattr(row, name)) for row in [header, *rows])
        for name in ("scenario", "figure", "value", "ceiling", "target")
    ]

    def line(row: Row) -> str:
        cells = [row.scenario, row.figure, row.value, row.ceiling, row.target]
        text = "  ".join(
            cell.rjust(width) if index in (2, 3) else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )
        mark = {True: "met", False: "MISSED", None: ""}[row.met]
        return f"{text}  {mark}".rstrip()

    machine = report["machine"]
    size = "quick" if report["quick"] else "full"
    title = (
        f"store {report['store']}, {machine['cpu_count']} CPUs "
        f"({machine['cpu_model']}), Python {machine['python']}, {size} run"
    )
    lines = [title, line(header), *(line(row) for row in rows)]
    disturbed = report["disturbed_scenarios"]
    if disturbed:
        lines.append(
            "other load on the host above 0.25 cores during: " + ", ".join(disturbed)
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See docs/benchmarks.md for the scenarios and the latest figures.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--store",
        metavar="URL",
        help="PostgreSQL server URL (postgresql://USER@HOST:PORT/DB); the run creates "
        "and drops its own databases there, so USER needs CREATEDB (default: SQLite "
        "in a temp folder)",
    )
    where.add_argument(
        "--postgres",
        action="store_true",
        help="start a throwaway PostgreSQL cluster (initdb, pg_ctl) for the run",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="every scenario at a small size, in well under a minute; judges no target",
    )
    parser.add_argument(
        "--requests",
        type=int,
        help="score requests for delivery throughput (default 20000)",
    )
    parser.add_argument(
        "--backlog",
        type=int,
        help="due deliveries in the backlog scenario (default 1000000)",
    )
    parser.add_argument(
        "--stop-after",
        choices=list(ROWS),
        help="end the run after this scenario, for profiling one of them",
    )
    parser.add_argument(
        "--only",
        type=_scenario_names,
        metavar="NAME[,NAME...]",
        help="run only these scenarios after the ceiling; latency_heavy needs "
        "delivery_throughput, which needs submission (default: all)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument(
        "--keep", action="store_true", help="keep the run's folder of logs and stores"
    )
    parser.add_argument(
        "--py-spy",
        metavar="PATH",
        help="profile the service with py-spy during delivery throughput, to PATH",
    )
    parser.add_argument(
        "--py-spy-format",
        default="flamegraph",
        choices=["flamegraph", "speedscope", "raw"],
        help="py-spy output format (default: flamegraph, an SVG)",
    )
    return parser


def _scenario_names(text: str) -> set[str]:
    names = {name.strip() for name in text.split(",") if name.strip()}
    unknown = names - set(ROWS)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown scenario {', '.join(sorted(unknown))}; "
            f"choose from {', '.join(ROWS)}"
        )
    if "latency_heavy" in names:
        names.add("delivery_throughput")
    if "delivery_throughput" in names:
        names.add("submission")
    return names


def disturbed_scenarios(results: dict[str, Any]) -> list[str]:
    return [
        name
        for name, figures in results.items()
        if figures["cpu"]["other_cores"] > 0.25
    ]


async def main_async(args: argparse.Namespace) -> int:
    sizes = QUICK if args.quick else FULL
    if args.requests:
        sizes = replace(sizes, requests=args.requests)
    if args.backlog:
        sizes = replace(sizes, backlog=args.backlog)

    folder = Path(tempfile.mkdtemp(prefix="webhooks-bench-"))
    bench = Bench(args, sizes, folder)
    machine = machine_facts()
    started_at = utc_now()

    try:
        results = await bench.run()
    except BenchError as error:
        print(f"bench: {error}\nlogs are in {folder}", file=sys.stderr)
        args.keep = True
        return 1
    finally:
        bench.stop_all()
        await bench.drop_databases()
        if bench.cluster is not None:
            bench.cluster.stop()
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)

    if bench.server_version is not None:
        machine["postgresql"] = bench.server_version
    report = {
        "started_at": started_at.isoformat(),
        "quick": args.quick,
        "store": bench.store_kind,
        "machine": machine,
        "sizes": asdict(sizes),
        "delivery_settings": {
            **DELIVERY_SETTINGS,
            "circuit_cooldown": sizes.circuit_cooldown_s,
        },
        "targets": TARGETS,
        "scenarios": results,
        "disturbed_scenarios": disturbed_scenarios(results),
    }
    print(format_table(report))

    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


async def _server_version(url: str) -> str:
    connection = await asyncpg.connect(url)
    try:
        return await connection.fetchval("SHOW server_version")
    finally:
        await connection.close()


def main() -> int:
    args = build_parser().parse_args()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
