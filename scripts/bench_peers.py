#!/usr/bin/env python3
"""The peers of the service in a benchmark run, each run as its own process.

``receiver`` is a webhook receiver that returns 204 at once (or, with
``--hang``, never within the attempt timeout) and records when each webhook
arrived. ``backend`` is a stand-in for the scoring backend: it acknowledges
``score.requested`` events at once and posts results to the service only
when the benchmark tells it to, recording when each result call returned.

Both record times with ``time.monotonic()``. On Linux that clock is
CLOCK_MONOTONIC, one clock for every process of the host, so times taken in
different processes can be subtracted. Both are driven through ``/_bench/``
routes and listen on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import time
from typing import Any

import aiohttp
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

log = logging.getLogger("bench.peers")

# A hanging receiver responds after this long, so that a forgotten process
# still ends its requests. The service's attempt timeout is far shorter.
HANG_S = 600.0
# Result calls in flight at once when the backend posts at a fixed rate.
MAX_PACED_IN_FLIGHT = 512
RESULT_CALL_TIMEOUT_S = 60.0

STATS = web.AppKey("stats", dict)


class SignatureChecker:
    """Verifies the signatures of every ``sample_every``-th request it is shown.

    ``v1`` entries are checked with the ``standardwebhooks`` package and the
    shared secrets. ``v1a`` entries are checked with the Ed25519 public keys,
    because that package (1.3.0) verifies only ``v1``.
    """

    def __init__(self, sample_every: int) -> None:
        self.sample_every = sample_every
        self.webhooks: list[Webhook] = []
        self.public_keys: list[Ed25519PublicKey] = []
        self.seen = 0
        self.checked = 0
        self.v1a_checked = 0
        self.failures = 0

    def configure(self, secrets: list[str], public_keys: list[str]) -> None:
        self.webhooks = [Webhook(secret) for secret in secrets]
        self.public_keys = [
            Ed25519PublicKey.from_public_bytes(
                base64.b64decode(key.removeprefix("whpk_"))
            )
            for key in public_keys
        ]

    def maybe_check(self, body: bytes, headers: dict[str, str]) -> None:
        self.seen += 1
        if not self.webhooks or self.seen % self.sample_every:
            return
        self.checked += 1
        if not self._v1_valid(body, headers) or not self._v1a_valid(body, headers):
            self.failures += 1

    def _v1_valid(self, body: bytes, headers: dict[str, str]) -> bool:
        for webhook in self.webhooks:
            try:
                webhook.verify(body, headers)
                return True
            except WebhookVerificationError:
                continue
        return False

    def _v1a_valid(self, body: bytes, headers: dict[str, str]) -> bool:
        entries = headers.get("webhook-signature", "").split()
        signatures = [entry[4:] for entry in entries if entry.startswith("v1a,")]
        if not signatures or not self.public_keys:
            return True  # nothing to check: v1 alone was sent or no key is known
        self.v1a_checked += 1
        content = (
            f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
        )
        for key in self.public_keys:
            for signature in signatures:
                try:
                    key.verify(base64.b64decode(signature), content)
                    return True
                except (InvalidSignature, ValueError):
                    continue
        return False

    def summary(self) -> dict[str, int]:
        return {
            "signatures_checked": self.checked,
            "v1a_checked": self.v1a_checked,
            "signature_failures": self.failures,
        }


# Receiver


def _correlation_id(body: bytes) -> str | None:
    try:
        data = json.loads(body).get("data", {})
    except (ValueError, AttributeError):
        return None
    return data.get("correlation_id") if isinstance(data, dict) else None


class ReceiverState:
    def __init__(self, sample_every: int, record_arrivals: bool) -> None:
        self.checker = SignatureChecker(sample_every)
        self.record_arrivals = record_arrivals
        self.in_flight = 0
        self.reset()

    def reset(self) -> None:
        """Forget what arrived so far; the signing keys stay configured."""
        self.checker.seen = self.checker.checked = 0
        self.checker.v1a_checked = self.checker.failures = 0
        self.count = 0
        self.message_ids: set[str] = set()
        self.arrivals: dict[str, float] = {}  # correlation ID -> first arrival
        self.first_at: float | None = None
        self.last_at: float | None = None

    def record(self, body: bytes, headers: dict[str, str]) -> None:
        now = time.monotonic()
        self.count += 1
        self.message_ids.add(headers.get("webhook-id", ""))
        if self.first_at is None:
            self.first_at = now
        self.last_at = now
        if self.record_arrivals:
            correlation_id = _correlation_id(body)
            if correlation_id is not None:
                self.arrivals.setdefault(correlation_id, now)
        self.checker.maybe_check(body, headers)

    def stats(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "distinct": len(self.message_ids),
            "duplicates": self.count - len(self.message_ids),
            "in_flight": self.in_flight,
            "first_at": self.first_at,
            "last_at": self.last_at,
            **self.checker.summary(),
        }


RECEIVER = web.AppKey("receiver", ReceiverState)


async def receive(request: web.Request) -> web.Response:
    state = request.app[RECEIVER]
    body = await request.read()
    headers = {name.lower(): value for name, value in request.headers.items()}
    state.record(body, headers)
    return web.Response(status=204)


async def receive_and_hang(request: web.Request) -> web.Response:
    state = request.app[RECEIVER]
    body = await request.read()
    headers = {name.lower(): value for name, value in request.headers.items()}
    state.record(body, headers)
    state.in_flight += 1
    try:
        await asyncio.sleep(HANG_S)
    finally:
        state.in_flight -= 1
    return web.Response(status=204)


async def receiver_configure(request: web.Request) -> web.Response:
    document = await request.json()
    state = request.app[RECEIVER]
    state.checker.configure(
        document.get("secrets", []), document.get("public_keys", [])
    )
    return web.json_response({"configured": True})


async def receiver_reset(request: web.Request) -> web.Response:
    request.app[RECEIVER].reset()
    return web.json_response({"reset": True})


async def receiver_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[RECEIVER].stats())


async def receiver_arrivals(request: web.Request) -> web.Response:
    return web.json_response(request.app[RECEIVER].arrivals)


def receiver_app(
    hang: bool, sample_every: int, record_arrivals: bool
) -> web.Application:
    app = web.Application(client_max_size=1024 * 1024)
    app[RECEIVER] = ReceiverState(sample_every, record_arrivals)
    app.router.add_post("/hooks", receive_and_hang if hang else receive)
    app.router.add_post("/_bench/configure", receiver_configure)
    app.router.add_post("/_bench/reset", receiver_reset)
    app.router.add_get("/_bench/stats", receiver_stats)
    app.router.add_get("/_bench/arrivals", receiver_arrivals)
    return app


# Backend stand-in


class BackendState:
    def __init__(self, sample_every: int) -> None:
        self.checker = SignatureChecker(sample_every)
        self.events = 0
        self.correlation_ids: set[str] = set()
        self.run: ResultRun | None = None


class ResultRun:
    """One batch of result calls: as fast as ``concurrency`` allows, or paced."""

    def __init__(
        self,
        service_url: str,
        token: str,
        correlation_ids: list[str],
        concurrency: int,
        rate_per_s: float,
    ) -> None:
        self.service_url = service_url
        self.token = token
        self.correlation_ids = correlation_ids
        self.concurrency = concurrency
        self.rate_per_s = rate_per_s
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.returned: dict[str, float] = {}  # correlation ID -> when the 200 came back
        self.failures: list[str] = []

    async def execute(self) -> None:
        timeout = aiohttp.ClientTimeout(total=RESULT_CALL_TIMEOUT_S)
        connector = aiohttp.TCPConnector(
            limit=max(self.concurrency, MAX_PACED_IN_FLIGHT)
        )
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout
        ) as session:
            self.started_at = time.monotonic()
            if self.rate_per_s > 0:
                await self._paced(session)
            else:
                await self._flat_out(session)
            self.finished_at = time.monotonic()

    async def _flat_out(self, session: aiohttp.ClientSession) -> None:
        queue = iter(enumerate(self.correlation_ids))

        async def worker() -> None:
            for number, correlation_id in queue:
                await self._post(session, number, correlation_id)

        await asyncio.gather(*(worker() for _ in range(self.concurrency)))

    async def _paced(self, session: aiohttp.ClientSession) -> None:
        slots = asyncio.Semaphore(MAX_PACED_IN_FLIGHT)
        assert self.started_at is not None

        async def one(number: int, correlation_id: str) -> None:
            async with slots:
                await self._post(session, number, correlation_id)

        tasks = []
        for number, correlation_id in enumerate(self.correlation_ids):
            delay_s = self.started_at + number / self.rate_per_s - time.monotonic()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            tasks.append(asyncio.create_task(one(number, correlation_id)))
        await asyncio.gather(*tasks)

    async def _post(
        self, session: aiohttp.ClientSession, number: int, correlation_id: str
    ) -> None:
        url = f"{self.service_url}/v1/backend/score-requests/{correlation_id}/result"
        body = {"outcome": "ready", "score": 300 + number % 551}
        headers = {"Authorization": f"Bearer {self.token}"}
        try:
            async with session.put(url, json=body, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    self.failures.append(f"{correlation_id}: HTTP {response.status}")
                    return
        except (aiohttp.ClientError, TimeoutError) as error:
            self.failures.append(f"{correlation_id}: {type(error).__name__}: {error}")
            return
        self.returned[correlation_id] = time.monotonic()

    def report(self, with_times: bool) -> dict[str, Any]:
        report: dict[str, Any] = {
            "done": self.finished_at is not None,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "returned": len(self.returned),
            "failures": len(self.failures),
            "first_failures": self.failures[:5],
        }
        if with_times:
            report["returned_at"] = self.returned
        return report


BACKEND = web.AppKey("backend", BackendState)
RUN_TASKS = web.AppKey("run_tasks", set)


async def backend_event(request: web.Request) -> web.Response:
    state = request.app[BACKEND]
    body = await request.read()
    headers = {name.lower(): value for name, value in request.headers.items()}
    state.events += 1
    correlation_id = _correlation_id(body)
    if correlation_id is not None:
        state.correlation_ids.add(correlation_id)
    state.checker.maybe_check(body, headers)
    return web.Response(status=204)


async def backend_configure(request: web.Request) -> web.Response:
    document = await request.json()
    request.app[BACKEND].checker.configure(document.get("secrets", []), [])
    return web.json_response({"configured": True})


async def backend_stats(request: web.Request) -> web.Response:
    state = request.app[BACKEND]
    return web.json_response(
        {
            "events": state.events,
            "distinct": len(state.correlation_ids),
            **state.checker.summary(),
        }
    )


async def backend_post_results(request: web.Request) -> web.Response:
    state = request.app[BACKEND]
    if state.run is not None and state.run.finished_at is None:
        raise web.HTTPConflict(text="a result run is still going")
    document = await request.json()
    state.run = ResultRun(
        document["service_url"],
        document["token"],
        list(document["correlation_ids"]),
        int(document.get("concurrency", 64)),
        float(document.get("rate_per_s", 0)),
    )
    task = asyncio.create_task(state.run.execute())
    request.app[RUN_TASKS].add(task)
    task.add_done_callback(request.app[RUN_TASKS].discard)
    return web.json_response({"started": True}, status=202)


async def backend_results(request: web.Request) -> web.Response:
    run = request.app[BACKEND].run
    if run is None:
        raise web.HTTPNotFound(text="no result run yet")
    return web.json_response(run.report(request.query.get("times") == "1"))


def backend_app(sample_every: int) -> web.Application:
    app = web.Application(client_max_size=1024 * 1024 * 64)
    app[BACKEND] = BackendState(sample_every)
    app[RUN_TASKS] = set()
    app.router.add_post("/score-requests", backend_event)
    app.router.add_post("/_bench/configure", backend_configure)
    app.router.add_get("/_bench/stats", backend_stats)
    app.router.add_post("/_bench/post-results", backend_post_results)
    app.router.add_get("/_bench/results", backend_results)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=["receiver", "backend"])
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument(
        "--hang", action="store_true", help="receiver: hold every request unanswered"
    )
    parser.add_argument(
        "--sample-every",
        type=int,
        default=20,
        help="verify the signatures of every Nth request (default: 20)",
    )
    parser.add_argument(
        "--no-arrivals",
        action="store_true",
        help="receiver: count webhooks without recording each arrival time",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.role == "receiver":
        app = receiver_app(args.hang, args.sample_every, not args.no_arrivals)
    else:
        app = backend_app(args.sample_every)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
