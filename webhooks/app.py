"""The aiohttp application: routes, middleware, and the start and stop order."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractResolver
from yarl import URL

import webhooks
from store import Store, open_store
from webhooks import (
    admin_api,
    backend_api,
    client_api,
    credentials,
    keys_api,
    service_keys,
    tracking_api,
)
from webhooks.config import Config
from webhooks.console import add_console
from webhooks.credentials import SecretBox
from webhooks.dispatcher import Dispatcher
from webhooks.handshake import CallbackHandshake
from webhooks.keyring import Keyring
from webhooks.metrics import METRICS, Metrics, metrics_middleware, serve_metrics
from webhooks.netpolicy import NetworkPolicy
from webhooks.openapi import add_openapi_document
from webhooks.problems import problem_middleware
from webhooks.ratelimit import TokenBuckets
from webhooks.resolver import policy_connector
from webhooks.retention import RetentionSweep
from webhooks.service import ScoreService
from webhooks.state import STATE, AppState

log = logging.getLogger("webhooks.app")

_READY_TIMEOUT_S = 2.0


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app.get(STATE)
    if state is None:
        return web.json_response({"status": "starting"}, status=503)
    try:
        async with asyncio.timeout(_READY_TIMEOUT_S):
            version = await state.store.schema_version()
    except Exception as exc:  # any failure of the store means not ready
        reason = "store timed out" if isinstance(exc, TimeoutError) else "store failed"
        log.warning(
            "readiness check failed: %s (%s: %s)",
            reason,
            type(exc).__name__,
            exc,
            extra={"event": "readiness_failed", "reason": reason, "error": repr(exc)},
        )
        return _unavailable(reason)
    if version.applied < version.latest:
        return _unavailable(
            f"migrations pending: schema at {version.applied}, code needs {version.latest}"
        )
    if version.applied > version.latest:
        return _unavailable(
            f"schema at {version.applied} is newer than this code ({version.latest})"
        )
    if not state.dispatcher.running:
        return _unavailable("dispatcher not running")
    return web.json_response(
        {"status": "ok", "schema_version": version.applied, "migrations": "done"}
    )


def _unavailable(reason: str) -> web.Response:
    return web.json_response({"status": "unavailable", "reason": reason}, status=503)


def _log_start(config: Config, store: Store) -> None:
    switches = []
    if config.delivery.allow_http:
        switches.append("allow_http")
    if config.delivery.allow_private_networks:
        switches.append("allow_private_networks")
    log.info(
        "score webhooks %s starting: store %s, listening on %s:%d, config %s",
        webhooks.__version__,
        store.kind,
        config.server.host,
        config.server.port,
        config.source,
        extra={
            "event": "service_starting",
            "version": webhooks.__version__,
            "store_kind": store.kind,
            "listen": f"{config.server.host}:{config.server.port}",
            "safety_switches": switches,
        },
    )
    if switches:
        log.warning(
            "safety switches on (for development and tests only): %s",
            ", ".join(switches),
            extra={"event": "safety_switches_on", "switches": switches},
        )


def create_app(
    config: Config,
    *,
    store: Store | None = None,
    connector: aiohttp.BaseConnector | None = None,
    resolver: AbstractResolver | None = None,
) -> web.Application:
    """Build the application; the store, client session and dispatcher start with it.

    ``store`` and ``connector`` let tests supply their own; a given store is
    not closed when the application stops. ``resolver`` answers the DNS
    lookups of callback hosts, at submission and on connect (default:
    aiohttp's DefaultResolver). A given ``connector`` replaces the one that
    applies the network policy on connect.
    """
    app = web.Application(
        middlewares=[metrics_middleware, problem_middleware],
        client_max_size=config.server.max_body_bytes,
    )
    metrics = Metrics()
    app[METRICS] = metrics
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", serve_metrics)
    app.add_routes(client_api.routes)
    app.add_routes(backend_api.routes)
    app.add_routes(admin_api.routes)
    app.add_routes(tracking_api.routes)
    app.add_routes(keys_api.routes)
    add_console(app, config)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        own_store = store is None
        active_store = store or await open_store(
            config.store.url,
            synchronous=config.store.synchronous,
            pool_size=config.store.pool_size,
        )
        _log_start(config, active_store)
        box = SecretBox(config.master_key)
        keyring = Keyring(active_store, box, config.backend.signing_secret)
        try:
            if active_store.kind == "sqlite":
                # One dispatcher per SQLite file; a second service stops here.
                active_store.lock_for_dispatch()
            # A wrong master key stops the start here, before any write.
            await service_keys.verify_master_key(active_store, box)
            await keyring.service_keys()  # creates the Ed25519 key on first start
        except BaseException:
            if own_store:
                await active_store.close()
            raise
        delivery = config.delivery
        policy = NetworkPolicy(
            allow_http=delivery.allow_http,
            allow_private_networks=delivery.allow_private_networks,
        )
        dns = resolver or aiohttp.DefaultResolver()
        limits = {
            "limit": delivery.max_in_flight,
            "limit_per_host": delivery.max_in_flight_per_host,
        }
        user_agent = {"User-Agent": f"score-webhooks/{webhooks.__version__}"}
        session = aiohttp.ClientSession(
            connector=connector or policy_connector(policy, dns, **limits),
            headers=user_agent,
        )
        # The backend URL is operator configuration, so its events bypass the
        # network policy through a connector of their own.
        backend_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(**limits), headers=user_agent
        )
        handshake = None
        if delivery.verify_callback_origin:
            handshake = CallbackHandshake(
                active_store,
                session,
                request_origin=URL(config.server.public_url).host or "score-webhooks",
                connect_timeout_s=delivery.connect_timeout_s,
                total_timeout_s=delivery.attempt_timeout_s,
                recheck_after=timedelta(seconds=delivery.handshake_recheck_s),
            )
        dispatcher = Dispatcher(
            active_store,
            session,
            delivery,
            keyring.signers_for,
            backend_session=backend_session,
            metrics=metrics,
            handshake=handshake,
        )
        metrics.watch_circuits(dispatcher.open_circuit_count)
        app[STATE] = AppState(
            config=config,
            store=active_store,
            service=ScoreService(
                active_store,
                public_url=config.server.public_url,
                backend_url=config.backend.url,
                default_validity=timedelta(seconds=config.scores.default_validity_s),
                idempotency_window=timedelta(seconds=config.scores.idempotency_window_s),
            ),
            box=box,
            policy=policy,
            resolver=dns,
            keyring=keyring,
            submission_limits=TokenBuckets(
                config.limits.submissions_per_second, config.limits.burst
            ),
            dispatcher=dispatcher,
            backend_token_hash=credentials.hash_token(config.backend.token),
            admin_token_hash=credentials.hash_token(config.admin.token),
        )
        if active_store.kind == "sqlite":
            # This process holds the file's dispatch lock, so leases left by
            # a killed process are its to take back at once.
            released = await active_store.release_all_leases()
            metrics.leases_recovered.inc(released)
            if released:
                log.info(
                    "took back %d leases left by a previous run",
                    released,
                    extra={"event": "leases_recovered", "count": released},
                )
        retention = RetentionSweep(
            active_store,
            config.retention,
            idempotency_window_s=config.scores.idempotency_window_s,
            metrics=metrics,
        )
        await dispatcher.start()
        retention.start()
        try:
            yield
        finally:
            await retention.stop()
            await dispatcher.stop()
            await session.close()
            await backend_session.close()
            if resolver is None:
                await dns.close()
            if own_store:
                await active_store.close()
            log.info("score webhooks stopped", extra={"event": "service_stopped"})

    app.cleanup_ctx.append(lifecycle)
    add_openapi_document(app, config)
    return app
