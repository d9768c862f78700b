"""Walk through the score flow against a running service and check every step.

Start the service, then run the demo from the same directory, so that both
read the tokens and keys that ``webhooks serve`` generated in ./var/::

    webhooks serve &
    python scripts/demo.py

The demo starts two helper processes on the loopback interface: a scoring
backend where the service's ``backend.url`` points, and a webhook receiver on
a free port. Both verify every signed request with the ``standardwebhooks``
package. The demo then creates a client with ``webhooks clients create``,
submits four score requests, waits for the webhooks, reads the results back
and prints one line per step.

Exit status: 0 when every check passed, 1 when a check failed, 2 when the
demo could not start (no service, port in use, invalid configuration).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import queue
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from webhooks.config import (
    EMBEDDED_SECRETS_FILE,
    Config,
    ConfigError,
    embedded_config,
    load_config,
)

try:
    from standardwebhooks import Webhook
    from standardwebhooks.webhooks import WebhookVerificationError
except ImportError:  # the package comes with the test extra
    Webhook = None  # type: ignore[assignment,misc]

EXIT_PASSED = 0
EXIT_CHECK_FAILED = 1
EXIT_SETUP_FAILED = 2

RESULT_DELAY_S = 1.0  # the demo backend's computation time before it posts a result
CALLBACK_PATH = "/hooks/score"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
HELPER_STOP_TIMEOUT_S = 3.0


class SetupError(Exception):
    """The demo could not start. The message states the cause and the fix."""


class CheckFailed(Exception):
    """A step of the walk-through had an outcome other than the expected one."""


# --- helper processes -------------------------------------------------------
#
# Each helper runs an aiohttp server in its own process and reports to the
# demo through a multiprocessing queue, one dict per message with a "source"
# ("backend" or "receiver") and a "kind".


@dataclass(frozen=True, kw_only=True)
class BackendSettings:
    host: str
    port: int
    path: str
    signing_secret: str  # whsec_ secret the service signs score.requested with
    token: str  # bearer token for the result endpoint
    service_url: str
    failing_customer_id: str  # the customer whose computation fails
    score_min: int
    score_max: int


def demo_score(customer_id: str, score_min: int, score_max: int) -> int:
    """Return the score the demo backend computes: a hash of the customer ID."""
    digest = hashlib.sha256(customer_id.encode()).digest()
    return score_min + int.from_bytes(digest[:4], "big") % (score_max - score_min + 1)


class DemoBackend:
    """A scoring backend that acknowledges each event and posts a result later."""

    def __init__(self, settings: BackendSettings, reports: Any) -> None:
        self._settings = settings
        self._reports = reports
        self._verifier = Webhook(settings.signing_secret)
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    def create_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(self._settings.path, self.handle_event)
        app.cleanup_ctx.append(self._client_session)
        return app

    async def _client_session(self, app: web.Application) -> AsyncIterator[None]:
        self._session = aiohttp.ClientSession()
        yield
        for task in self._tasks:
            task.cancel()
        await self._session.close()

    async def handle_event(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            event = self._verifier.verify(body, dict(request.headers))
        except WebhookVerificationError as exc:
            self._report_event(body, verified=False, error=str(exc))
            return web.Response(status=401)

        data = event["data"]
        self._report_event(body, verified=True, error=None)
        task = asyncio.create_task(
            self._post_result(data["correlation_id"], data["customer_id"])
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.Response(status=202)

    def _report_event(self, body: bytes, *, verified: bool, error: str | None) -> None:
        report = {"source": "backend", "kind": "event", **_summarize(body)}
        self._reports.put(report | {"verified": verified, "error": error})

    def _result_for(self, customer_id: str) -> dict[str, Any]:
        settings = self._settings
        if customer_id == settings.failing_customer_id:
            return {"outcome": "failed", "reason": "customer not found at the bureau"}
        score = demo_score(customer_id, settings.score_min, settings.score_max)
        return {"outcome": "ready", "score": score}

    async def _post_result(self, correlation_id: str, customer_id: str) -> None:
        await asyncio.sleep(RESULT_DELAY_S)
        result = self._result_for(customer_id)
        url = (
            f"{self._settings.service_url.rstrip('/')}"
            f"/v1/backend/score-requests/{correlation_id}/result"
        )
        report = {"source": "backend", "kind": "result"}
        report |= {"correlation_id": correlation_id, "result": result}
        assert self._session is not None
        try:
            async with self._session.put(
                url,
                json=result,
                headers={"Authorization": f"Bearer {self._settings.token}"},
            ) as response:
                report |= {"status": response.status, "body": await response.text()}
        except aiohttp.ClientError as exc:
            report |= {"status": None, "body": f"request failed: {exc!r}"}
        self._reports.put(report)


class DemoReceiver:
    """A client's webhook receiver that verifies and reports every delivery."""

    def __init__(self, signing_secret: str, reports: Any) -> None:
        self._verifier = Webhook(signing_secret)
        self._reports = reports

    def create_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(CALLBACK_PATH, self.handle_webhook)
        return app

    async def handle_webhook(self, request: web.Request) -> web.Response:
        body = await request.read()
        error = None
        try:
            self._verifier.verify(body, dict(request.headers))
        except WebhookVerificationError as exc:
            error = str(exc)
        report = {"source": "receiver", "kind": "webhook", **_summarize(body)}
        report["webhook_id"] = request.headers.get("webhook-id")
        self._reports.put(report | {"verified": error is None, "error": error})
        # A 400 makes the service retry, which the demo notices as a failure.
        return web.Response(status=204 if error is None else 400)


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _summarize(body: bytes) -> dict[str, Any]:
    """Return the type, IDs and data of an event body, tolerating any JSON."""
    event = _object(_parse_json(body))
    data = _object(event.get("data"))
    return {
        "type": event.get("type"),
        "correlation_id": data.get("correlation_id"),
        "customer_id": data.get("customer_id"),
        "data": data,
    }


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


async def _wait_for_parent_exit() -> None:
    """Return when the demo process ends, even when it was killed outright."""
    parent = multiprocessing.parent_process()
    assert parent is not None
    ended = asyncio.Event()
    asyncio.get_running_loop().add_reader(parent.sentinel, ended.set)
    await ended.wait()


async def _serve_helper(
    source: str, app: web.Application, host: str, port: int, reports: Any
) -> None:
    try:
        sock = _listen(host, port)
    except OSError as exc:
        message = f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        reports.put({"source": source, "kind": "error", "error": message})
        return

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    reports.put({"source": source, "kind": "listening", "port": sock.getsockname()[1]})
    try:
        await _wait_for_parent_exit()
    finally:
        await runner.cleanup()


def run_backend(settings: BackendSettings, reports: Any) -> None:
    """Run the demo backend until the demo process stops it (a process target)."""
    # Ctrl-C signals the whole process group. The helpers ignore it and let
    # the demo process stop them, which spares a traceback from each.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    app = DemoBackend(settings, reports).create_app()
    asyncio.run(_serve_helper("backend", app, settings.host, settings.port, reports))


def run_receiver(signing_secret: str, reports: Any) -> None:
    """Run the demo receiver on a free port until the demo process stops it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    app = DemoReceiver(signing_secret, reports).create_app()
    asyncio.run(_serve_helper("receiver", app, "127.0.0.1", 0, reports))


# --- the demo process -------------------------------------------------------


@dataclass(frozen=True)
class ServiceResponse:
    status: int
    headers: Mapping[str, str]
    document: Any


class ServiceClient:
    """Blocking JSON calls to the service, never through a proxy."""

    def __init__(self, base_url: str, timeout_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout_s = timeout_s
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def call(
        self, method: str, path: str, token: str | None = None, body: Any = None
    ) -> ServiceResponse:
        """Send one request and return the response.

        Raise CheckFailed when no response arrives.
        """
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with self._opener.open(request, timeout=self._timeout_s) as http_response:
                return ServiceResponse(
                    http_response.status,
                    http_response.headers,
                    _parse_json(http_response.read()),
                )
        except urllib.error.HTTPError as error:
            with error:
                return ServiceResponse(
                    error.code, error.headers, _parse_json(error.read())
                )
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CheckFailed(
                f"{method} {self.base_url}{path} failed: {reason}"
            ) from None


@dataclass
class Reports:
    """Reports from the helper processes, each printed as it arrives."""

    inbox: Any  # the multiprocessing queue the helpers put their reports on
    processes: list[BaseProcess]
    ports: dict[str, int] = field(default_factory=dict)
    backend_events: list[dict[str, Any]] = field(default_factory=list)
    backend_results: list[dict[str, Any]] = field(default_factory=list)
    webhooks: list[dict[str, Any]] = field(default_factory=list)

    def wait_until(
        self, condition: Callable[[], bool], timeout_s: float, waiting_for: str
    ) -> None:
        """Collect reports until ``condition`` holds; raise CheckFailed on timeout."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                raise CheckFailed(
                    f"timed out after {timeout_s:g} s waiting for {waiting_for}"
                )
            try:
                message = self.inbox.get(timeout=min(remaining_s, 0.5))
            except queue.Empty:
                self._check_helpers_alive()
                continue
            self._record(message)

    def webhooks_for(self, correlation_id: str) -> list[dict[str, Any]]:
        return [w for w in self.webhooks if w["correlation_id"] == correlation_id]

    def events_for(self, customer_id: str) -> list[dict[str, Any]]:
        return [e for e in self.backend_events if e["customer_id"] == customer_id]

    def _check_helpers_alive(self) -> None:
        for process in self.processes:
            if not process.is_alive():
                raise CheckFailed(
                    f"the demo {process.name} exited with {process.exitcode}"
                )

    def _record(self, message: dict[str, Any]) -> None:
        source, kind = message["source"], message["kind"]
        if kind == "error":
            raise SetupError(f"the demo {source} {message['error']}")
        if kind == "listening":
            self.ports[source] = message["port"]
        elif kind == "event":
            self.backend_events.append(message)
            _print_backend_event(message)
        elif kind == "result":
            self.backend_results.append(message)
            _print_backend_result(message)
            _raise_for_rejected_result(message)
        elif kind == "webhook":
            self.webhooks.append(message)
            _print_webhook(message)


def _verified(report: dict[str, Any]) -> str:
    return "verified" if report["verified"] else f"NOT VERIFIED ({report['error']})"


def _print_backend_event(event: dict[str, Any]) -> None:
    print(
        f"      backend  received {event['type']} {event['correlation_id']} "
        f"for {event['customer_id']}: {_verified(event)}"
    )


def _print_backend_result(result: dict[str, Any]) -> None:
    outcome = result["result"]
    detail = outcome.get("score") or outcome.get("reason")
    print(
        f"      backend  PUT result {outcome['outcome']} ({detail}) for "
        f"{result['correlation_id']} -> {result['status']}"
    )


def _raise_for_rejected_result(result: dict[str, Any]) -> None:
    """Raise CheckFailed for a rejected result, because no webhook would follow."""
    if result["status"] == 200:
        return
    message = (
        f"the service answered {result['status']} to the backend's result for "
        f"{result['correlation_id']}: {result['body']}"
    )
    if result["status"] == 401:
        message += (
            ". The demo must read the configuration of the running service: "
            "run it in the same directory or pass the same --config"
        )
    raise CheckFailed(message)


def _print_webhook(webhook: dict[str, Any]) -> None:
    print(
        f"      webhook  {webhook['type']} {webhook['correlation_id']} "
        f"webhook-id {webhook['webhook_id']}: {_verified(webhook)}"
    )


class Walkthrough:
    """The steps of the demo, with a record of every check that failed."""

    def __init__(
        self,
        service: ServiceClient,
        reports: Reports,
        client: dict[str, str],
        backend: BackendSettings,
        timeout_s: float,
    ) -> None:
        self._service = service
        self._reports = reports
        self._api_key = client["api_key"]
        self._backend = backend
        self._timeout_s = timeout_s
        self.callback_url = (
            f"http://127.0.0.1:{reports.ports['receiver']}{CALLBACK_PATH}"
        )
        self.failures: list[str] = []

    def fail(self, message: str) -> None:
        self.failures.append(message)
        print(f"      FAILED   {message}")

    def expect(self, label: str, actual: object, expected: object) -> None:
        if actual != expected:
            self.fail(f"{label}: expected {expected!r}, got {actual!r}")

    def run(self, customer_id: str) -> None:
        backend = self._backend
        failing_id = backend.failing_customer_id
        score = demo_score(customer_id, backend.score_min, backend.score_max)

        first = self.submit(1, "new customer", customer_id, 202, "pending")
        joined = self.submit(2, "same customer, pending", customer_id, 202, "pending")
        if joined == first:
            self.fail("the joined request got the correlation ID of the first")
        self.await_webhooks([first, joined], "score.ready")
        self.check_backend_requested_once(customer_id, first)

        reused = self.submit(3, "same customer, stored", customer_id, 201, "ready")
        self.await_webhooks([reused], "score.ready")
        failed = self.submit(4, "backend fails it", failing_id, 202, "pending")
        self.await_webhooks([failed], "score.failed")
        self.check_backend_requested_once(failing_id, failed)

        for correlation_id in (first, joined, reused):
            self.fetch_request(correlation_id, "ready", score)
        self.fetch_request(failed, "failed", None)
        self.fetch_customer(customer_id, 200, score)
        self.fetch_customer(failing_id, 404, None)
        self.check_signatures()

    def submit(
        self, step: int, title: str, customer_id: str, status: int, state: str
    ) -> str:
        """Submit a score request, check the response and return its correlation ID."""
        body = {
            "customer_id": customer_id,
            "callback_url": self.callback_url,
            "metadata": {"demo_step": step},
        }
        response = self._service.call("POST", "/v1/score-requests", self._api_key, body)
        document = _object(response.document)
        correlation_id = document.get("correlation_id")
        print(
            f"[{step}]  submit   {customer_id} ({title}) -> {response.status} "
            f"{document.get('status')} {correlation_id}"
        )
        if response.status == 401:
            raise CheckFailed(
                "the service rejected the new client's API key (401). Run the demo "
                "with the configuration of the service (same directory or --config)"
            )
        if not isinstance(correlation_id, str):
            raise CheckFailed(f"step {step}: no correlation_id in {response.document}")

        self.expect(f"step {step} HTTP status", response.status, status)
        self.expect(f"step {step} request status", document.get("status"), state)
        location = response.headers.get("Location")
        self.expect(f"step {step} Location", location, _request_path(correlation_id))
        return correlation_id

    def await_webhooks(self, correlation_ids: list[str], event_type: str) -> None:
        def arrived() -> bool:
            return all(self._reports.webhooks_for(c) for c in correlation_ids)

        waiting_for = f"the {event_type} webhooks of {', '.join(correlation_ids)}"
        self._reports.wait_until(arrived, self._timeout_s, waiting_for)
        for correlation_id in correlation_ids:
            webhook = self._reports.webhooks_for(correlation_id)[0]
            self.check_webhook(correlation_id, webhook, event_type)

    def check_webhook(
        self, correlation_id: str, webhook: dict[str, Any], event_type: str
    ) -> None:
        data = webhook["data"]
        label = f"webhook for {correlation_id}"
        if not webhook["verified"]:
            self.fail(f"{label} failed verification: {webhook['error']}")
        self.expect(f"{label} type", webhook["type"], event_type)
        if "score" in data:
            self.fail(f"{label} carries the score; webhooks carry only IDs and a link")
        score_url = str(data.get("score_url"))
        if not score_url.endswith(_request_path(correlation_id)):
            self.fail(f"{label} has an unexpected score_url {score_url!r}")

    def check_backend_requested_once(
        self, customer_id: str, correlation_id: str
    ) -> None:
        events = self._reports.events_for(customer_id)
        requested_ids = [event["correlation_id"] for event in events]
        print(
            f"      check    backend requested {len(events)} time(s) for {customer_id}"
        )
        self.expect(
            f"score.requested events for {customer_id}", requested_ids, [correlation_id]
        )

    def fetch_request(self, correlation_id: str, state: str, score: int | None) -> None:
        response = self._service.call(
            "GET", _request_path(correlation_id), self._api_key
        )
        document = _object(response.document)
        value = _object(document.get("score")).get("value")
        reason = _object(document.get("error")).get("reason")
        detail = f"score {value}" if value is not None else f"error {reason!r}"
        print(
            f"      fetch    {correlation_id} -> {response.status} "
            f"{document.get('status')}, {detail}"
        )
        label = f"GET {correlation_id}"
        self.expect(f"{label} HTTP status", response.status, 200)
        self.expect(f"{label} request status", document.get("status"), state)
        if score is not None:
            self.expect(f"{label} score", value, score)
        elif not reason:
            self.fail(f"{label}: a failed request has no error.reason")

    def fetch_customer(self, customer_id: str, status: int, score: int | None) -> None:
        path = f"/v1/customers/{customer_id}/score"
        response = self._service.call("GET", path, self._api_key)
        document = _object(response.document)
        value = _object(document.get("score")).get("value")
        detail = f"score {value}" if response.status == 200 else document.get("detail")
        print(f"      fetch    customer {customer_id} -> {response.status}, {detail}")
        self.expect(f"GET customer {customer_id} HTTP status", response.status, status)
        if score is not None:
            self.expect(f"GET customer {customer_id} score", value, score)

    def check_signatures(self) -> None:
        reports = self._reports
        unverified = [w for w in reports.webhooks if not w["verified"]]
        unverified += [e for e in reports.backend_events if not e["verified"]]
        if unverified:
            self.fail(f"{len(unverified)} signed requests failed verification")


def _request_path(correlation_id: str) -> str:
    return f"/v1/score-requests/{correlation_id}"


def _load_config(path: str | None) -> Config:
    try:
        if path is not None:
            return load_config(path)
        if not EMBEDDED_SECRETS_FILE.exists():
            raise SetupError(
                f"no {EMBEDDED_SECRETS_FILE} in {Path.cwd()}: run the demo in the "
                "directory where `webhooks serve` runs, or pass --config PATH"
            )
        return embedded_config()
    except ConfigError as exc:
        raise SetupError(f"invalid configuration:\n{exc}") from None


def _backend_settings(
    config: Config, service_url: str, failing_id: str
) -> BackendSettings:
    url = URL(config.backend.url)
    if url.host not in LOOPBACK_HOSTS or url.port is None:
        raise SetupError(
            f"backend.url {config.backend.url} is not on this host; the demo runs its "
            "backend on 127.0.0.1, so point backend.url at a loopback address"
        )
    return BackendSettings(
        host=url.host,
        port=url.port,
        path=url.path or "/",
        signing_secret=config.backend.signing_secret,
        token=config.backend.token,
        service_url=service_url,
        failing_customer_id=failing_id,
        score_min=config.scores.min,
        score_max=config.scores.max,
    )


def _check_port_free(settings: BackendSettings) -> None:
    try:
        _listen(settings.host, settings.port).close()
    except OSError as exc:
        raise SetupError(
            f"port {settings.port} on {settings.host}, where the service's backend.url "
            f"points, is not free ({exc.strerror or exc}): stop the program that "
            "listens there, or change backend.url in the configuration and restart "
            "the service"
        ) from None


def _check_service(service: ServiceClient) -> None:
    try:
        response = service.call("GET", "/readyz")
    except CheckFailed as exc:
        raise SetupError(
            f"no service responds at {service.base_url} ({exc}); start it with "
            "`webhooks serve` in this directory, or pass --service-url"
        ) from None
    if response.status != 200:
        raise SetupError(
            f"the service at {service.base_url} is not ready: {response.document}"
        )


def _create_client(config_path: str | None) -> dict[str, str]:
    command = [sys.executable, "-m", "webhooks", "clients", "create", "demo"]
    if config_path is not None:
        command += ["--config", config_path]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if completed.returncode != 0:
        raise SetupError(
            f"`webhooks clients create` failed:\n{completed.stderr.strip()}"
        )
    return json.loads(completed.stdout)


class Helpers:
    """The helper processes, stopped on every way out of the ``with`` block."""

    def __init__(self) -> None:
        self._context = multiprocessing.get_context("spawn")
        self.queue = self._context.Queue()
        self.processes: list[BaseProcess] = []

    def start(self, name: str, target: Callable[..., None], *args: Any) -> None:
        process = self._context.Process(
            target=target, args=(*args, self.queue), name=name
        )
        process.start()
        self.processes.append(process)

    def __enter__(self) -> Helpers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for process in self.processes:
            if process.is_alive():
                process.terminate()
        for process in self.processes:
            process.join(HELPER_STOP_TIMEOUT_S)
            if process.is_alive():
                process.kill()
                process.join()
        self.queue.close()
        self.queue.join_thread()


def _walk_through(args: argparse.Namespace) -> int:
    config = _load_config(args.config)
    service = ServiceClient(args.service_url or config.server.public_url, args.timeout)
    suffix = secrets.token_hex(3)  # fresh customers on every run against one store
    customer_id = f"demo-{suffix}"
    backend = _backend_settings(config, service.base_url, f"demo-{suffix}-unknown")
    print(f"      service  {service.base_url}, configuration: {config.source}")
    _check_service(service)
    _check_port_free(backend)

    client = _create_client(args.config)
    print(f"      client   created {client['client_id']} (demo)")
    with Helpers() as helpers:
        helpers.start("backend", run_backend, backend)
        helpers.start("receiver", run_receiver, client["signing_secret"])
        reports = Reports(helpers.queue, helpers.processes)
        reports.wait_until(
            lambda: len(reports.ports) == 2, args.timeout, "the helpers to listen"
        )
        print(f"      backend  listening on {config.backend.url}")
        walkthrough = Walkthrough(service, reports, client, backend, args.timeout)
        print(f"      receiver listening on {walkthrough.callback_url}")
        walkthrough.run(customer_id)

    if walkthrough.failures:
        print(f"FAILED: {len(walkthrough.failures)} checks failed")
        return EXIT_CHECK_FAILED
    print(f"PASSED: 4 requests, {len(reports.webhooks)} webhooks verified")
    return EXIT_PASSED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Walk through the score flow against a running service.",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="TOML configuration file of the running service (default: the embedded "
        "default, with secrets from ./var/secrets.toml)",
    )
    parser.add_argument(
        "--service-url",
        metavar="URL",
        help="base URL of the service (default: server.public_url of the "
        "configuration)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="maximum time in seconds to wait for each batch of webhooks and for "
        "the helper processes to start (default: 30)",
    )
    return parser


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through Helpers.__exit__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if Webhook is None:
        print(
            "demo: the standardwebhooks package is missing; install it with "
            "pip install -e '.[test]'",
            file=sys.stderr,
        )
        return EXIT_SETUP_FAILED
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGHUP, _exit_on_signal)
    try:
        return _walk_through(args)
    except SetupError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return EXIT_SETUP_FAILED
    except CheckFailed as exc:
        print(f"FAILED: {exc}")
        return EXIT_CHECK_FAILED
    except KeyboardInterrupt:
        print("demo: interrupted; helper processes stopped", file=sys.stderr)
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
