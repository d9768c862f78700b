"""The operator console through the real app, without a browser.

Access control, CSRF tokens, escaping, cookie flags and the security
headers, checked with aiohttp's test client against the real application
and real receivers on 127.0.0.1.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from http.cookies import SimpleCookie
from pathlib import Path

import pytest
from aiohttp import web
from conftest import ADMIN_TOKEN, Receiver, Service, config_with_backend, wait_for

from store.records import DeliveryStatus, NewDelivery
from webhooks import ids
from webhooks.console import bulk
from webhooks.console.sessions import COOKIE_NAME
from webhooks.timefmt import utc_now

MakeService = Callable[..., Awaitable[Service]]
MakeReceiver = Callable[..., Awaitable[Receiver]]

# Every console page as (method, path). The IDs need not exist, because a
# request without a session never gets as far as looking them up.
CONSOLE_PAGES = [
    ("GET", "/console"),
    ("GET", "/console/"),
    ("GET", "/console/deliveries"),
    ("GET", "/console/deliveries?status=failed"),
    ("GET", "/console/deliveries/dlv_unknown"),
    ("POST", "/console/deliveries/dlv_unknown/replay"),
    ("GET", "/console/requests"),
    ("GET", "/console/requests?correlation_id=req_unknown"),
    ("GET", "/console/replay"),
    ("GET", "/console/replay/confirm"),
    ("POST", "/console/replay"),
    ("POST", "/console/logout"),
    ("GET", "/console/no-such-page"),
]
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


async def _seed(
    service: Service, client_id: str | None, count: int, url: str
) -> list[str]:
    """Insert ``count`` due deliveries to ``url``; return their IDs."""
    delivery_ids = []
    async with service.state.store.transaction() as transaction:
        for _ in range(count):
            delivery_id = ids.delivery_id()
            await transaction.insert_delivery(
                NewDelivery(
                    id=delivery_id,
                    message_id=ids.message_id(),
                    client_id=client_id,
                    correlation_id=ids.correlation_id(),
                    event_type="score.ready",
                    url=url,
                    host=url.split("/")[2],
                    payload=b'{"type":"score.ready"}',
                    next_attempt_at=utc_now(),
                )
            )
            delivery_ids.append(delivery_id)
    return delivery_ids


async def _failed_deliveries(
    service: Service, make_receiver: MakeReceiver, count: int
) -> tuple[Receiver, list[str]]:
    """Seed deliveries to a receiver that returns 410, and wait until they failed."""
    receiver = await make_receiver(default_status=410)
    client = await service.new_client()
    receiver.secret = client.signing_secret
    delivery_ids = await _seed(service, client.record.id, count, receiver.url())
    store = service.state.store

    async def all_failed() -> bool:
        for delivery_id in delivery_ids:
            delivery = await store.get_delivery(delivery_id)
            if delivery.status is not DeliveryStatus.FAILED:
                return False
        return True

    await wait_for(all_failed)
    return receiver, delivery_ids


async def _login(service: Service) -> str:
    """Log the test client in and return the CSRF token of its session."""
    response = await service.http.post(
        "/console/login",
        data={"token": ADMIN_TOKEN, "next": "/console/"},
        allow_redirects=False,
    )
    assert response.status == 303, await response.text()
    page = await service.http.get("/console/")
    assert page.status == 200
    match = CSRF_FIELD.search(await page.text())
    assert match is not None
    return match.group(1)


def _assert_security_headers(response, label: str) -> None:
    policy = response.headers.get("Content-Security-Policy", "")
    assert "default-src 'self'" in policy, label
    assert "script-src 'self'" in policy, label
    assert "unsafe-inline" not in policy, label
    assert "frame-ancestors 'none'" in policy, label
    assert response.headers.get("X-Frame-Options") == "DENY", label


def _set_cookie(response) -> SimpleCookie:
    cookie = SimpleCookie()
    for header in response.headers.getall("Set-Cookie", []):
        cookie.load(header)
    return cookie


# Access without a session


async def test_pages_without_session_redirect_to_login(service: Service) -> None:
    for method, path in CONSOLE_PAGES:
        label = f"{method} {path}"
        response = await service.http.request(method, path, allow_redirects=False)
        assert response.status == 303, label
        assert response.headers["Location"].startswith("/console/login"), label
        _assert_security_headers(response, label)


async def test_forged_cookie_redirects_to_login(service: Service) -> None:
    service.http.session.cookie_jar.update_cookies(
        {COOKIE_NAME: f"abc.{int(time.time()) + 3600}.forged"}
    )
    response = await service.http.get("/console/deliveries", allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"].startswith("/console/login")


async def test_redirect_keeps_page_to_return_to(service: Service) -> None:
    response = await service.http.get(
        "/console/deliveries?status=failed", allow_redirects=False
    )
    login_path = response.headers["Location"]
    assert "next=%2Fconsole%2Fdeliveries%3Fstatus%3Dfailed" in login_path

    response = await service.http.post(
        "/console/login",
        data={"token": ADMIN_TOKEN, "next": "/console/deliveries?status=failed"},
        allow_redirects=False,
    )
    assert response.headers["Location"] == "/console/deliveries?status=failed"


async def test_login_ignores_next_outside_console(service: Service) -> None:
    for target in ["https://attacker.test/", "//attacker.test/", "/v1/admin/clients"]:
        response = await service.http.post(
            "/console/login",
            data={"token": ADMIN_TOKEN, "next": target},
            allow_redirects=False,
        )
        assert response.status == 303, target
        assert response.headers["Location"] == "/console/", target


async def test_posts_without_session_change_nothing(
    service: Service, make_receiver: MakeReceiver
) -> None:
    _, [delivery_id] = await _failed_deliveries(service, make_receiver, 1)

    single = await service.http.post(
        f"/console/deliveries/{delivery_id}/replay", allow_redirects=False
    )
    bulk = await service.http.post(
        "/console/replay", data={"expected_count": "1"}, allow_redirects=False
    )

    assert single.status == 303
    assert bulk.status == 303
    delivery = await service.state.store.get_delivery(delivery_id)
    assert delivery.status is DeliveryStatus.FAILED


async def test_login_page_and_assets_public(service: Service) -> None:
    login = await service.http.get("/console/login")
    stylesheet = await service.http.get("/console/static/console.css")
    script = await service.http.get("/console/static/console.js")

    assert login.status == 200
    assert 'type="password"' in await login.text()
    assert stylesheet.status == 200
    assert stylesheet.content_type == "text/css"
    assert script.status == 200
    assert script.content_type == "text/javascript"
    for response in (login, stylesheet, script):
        _assert_security_headers(response, str(response.url))


# Login


async def test_login_cookie_flags_over_http(service: Service) -> None:
    response = await service.http.post(
        "/console/login", data={"token": ADMIN_TOKEN}, allow_redirects=False
    )
    morsel = _set_cookie(response)[COOKIE_NAME]

    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Strict"
    assert morsel["path"] == "/console/"
    # delivery.allow_http is on in the test config, so the cookie must also
    # work over plain http.
    assert not morsel["secure"]


async def test_login_cookie_secure_by_default(
    make_service: MakeService, backend: Receiver, tmp_path: Path
) -> None:
    config = config_with_backend(tmp_path, backend, delivery={"allow_http": False})
    service = await make_service(config)

    response = await service.http.post(
        "/console/login", data={"token": ADMIN_TOKEN}, allow_redirects=False
    )
    morsel = _set_cookie(response)[COOKIE_NAME]

    assert morsel["secure"] is True
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Strict"


async def test_wrong_token_delayed_and_counted(
    make_service: MakeService, backend: Receiver, tmp_path: Path
) -> None:
    delay_s = 0.3
    config = config_with_backend(
        tmp_path, backend, admin={"console_login_delay_s": delay_s}
    )
    service = await make_service(config)

    started = time.monotonic()
    wrong = await service.http.post(
        "/console/login", data={"token": "not-the-admin-token"}, allow_redirects=False
    )
    wrong_s = time.monotonic() - started
    started = time.monotonic()
    empty = await service.http.post("/console/login", data={}, allow_redirects=False)
    empty_s = time.monotonic() - started
    started = time.monotonic()
    right = await service.http.post(
        "/console/login", data={"token": ADMIN_TOKEN}, allow_redirects=False
    )
    right_s = time.monotonic() - started

    assert wrong.status == 403
    assert "The admin token is not valid." in await wrong.text()
    assert COOKIE_NAME not in _set_cookie(wrong)
    assert wrong_s >= delay_s
    assert empty.status == 403
    assert empty_s >= delay_s
    assert right.status == 303
    assert right_s < delay_s
    metrics = await (await service.http.get("/metrics")).text()
    assert "webhooks_console_login_failures_total 2.0" in metrics


async def test_session_expires(
    make_service: MakeService, backend: Receiver, tmp_path: Path
) -> None:
    config = config_with_backend(
        tmp_path, backend, admin={"console_session_lifetime_s": 1.0}
    )
    service = await make_service(config)
    await _login(service)

    # The expiry has a resolution of one second.
    await wait_for(lambda: _redirects_to_login(service), timeout_s=3.0)


async def _redirects_to_login(service: Service) -> bool:
    response = await service.http.get("/console/", allow_redirects=False)
    return response.status == 303


async def test_logout_ends_session(service: Service) -> None:
    csrf_token = await _login(service)
    cookie = service.http.session.cookie_jar.filter_cookies(
        service.http.make_url("/console/")
    )[COOKIE_NAME].value

    response = await service.http.post(
        "/console/logout", data={"csrf_token": csrf_token}, allow_redirects=False
    )
    assert response.status == 303
    assert response.headers["Location"] == "/console/login"

    # The old cookie value no longer opens a page, even if a browser kept it.
    service.http.session.cookie_jar.update_cookies({COOKIE_NAME: cookie})
    response = await service.http.get("/console/", allow_redirects=False)
    assert response.status == 303


# CSRF


async def test_replay_needs_csrf_token(
    service: Service, make_receiver: MakeReceiver
) -> None:
    receiver, [delivery_id] = await _failed_deliveries(service, make_receiver, 1)
    await _login(service)

    missing = await service.http.post(
        f"/console/deliveries/{delivery_id}/replay", allow_redirects=False
    )
    wrong = await service.http.post(
        f"/console/deliveries/{delivery_id}/replay",
        data={"csrf_token": "x" * 43},
        allow_redirects=False,
    )

    assert missing.status == 403
    assert wrong.status == 403
    _assert_security_headers(missing, "replay without a CSRF token")
    delivery = await service.state.store.get_delivery(delivery_id)
    assert delivery.status is DeliveryStatus.FAILED
    assert len(receiver.received) == 1


async def test_bulk_replay_needs_csrf_token(
    service: Service, make_receiver: MakeReceiver
) -> None:
    _, delivery_ids = await _failed_deliveries(service, make_receiver, 2)
    await _login(service)

    response = await service.http.post(
        "/console/replay", data={"expected_count": "2"}, allow_redirects=False
    )

    assert response.status == 403
    for delivery_id in delivery_ids:
        delivery = await service.state.store.get_delivery(delivery_id)
        assert delivery.status is DeliveryStatus.FAILED


async def test_logout_needs_csrf_token(service: Service) -> None:
    await _login(service)

    response = await service.http.post("/console/logout", allow_redirects=False)

    assert response.status == 403
    overview = await service.http.get("/console/", allow_redirects=False)
    assert overview.status == 200


async def test_other_session_csrf_token_rejected(
    service: Service, make_receiver: MakeReceiver
) -> None:
    _, [delivery_id] = await _failed_deliveries(service, make_receiver, 1)
    old_token = await _login(service)
    service.http.session.cookie_jar.clear()
    new_token = await _login(service)
    assert old_token != new_token

    response = await service.http.post(
        f"/console/deliveries/{delivery_id}/replay",
        data={"csrf_token": old_token},
        allow_redirects=False,
    )

    assert response.status == 403
    delivery = await service.state.store.get_delivery(delivery_id)
    assert delivery.status is DeliveryStatus.FAILED


# Pages


async def test_hostile_response_excerpt_escaped(
    service: Service, make_receiver: MakeReceiver
) -> None:
    async def hostile(request: web.Request) -> web.Response:
        return web.Response(
            status=500, text="<script>alert(1)</script>", content_type="text/html"
        )

    receiver = await make_receiver(handler=hostile)
    client = await service.new_client()
    receiver.secret = client.signing_secret
    [delivery_id] = await _seed(service, client.record.id, 1, receiver.url())
    await wait_for(lambda: len(receiver.received) >= 1)

    async def attempt_recorded() -> bool:
        return bool(await service.state.store.list_attempts(delivery_id))

    await wait_for(attempt_recorded)
    await _login(service)
    response = await service.http.get(f"/console/deliveries/{delivery_id}")
    page = await response.text()

    assert response.status == 200
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>alert(1)" not in page
    _assert_security_headers(response, "delivery page")


async def test_delivery_page_masks_query_string(
    service: Service, make_receiver: MakeReceiver
) -> None:
    receiver = await make_receiver(default_status=200)
    client = await service.new_client()
    receiver.secret = client.signing_secret
    url = receiver.url("/hooks?token=receiver-secret-123")
    [delivery_id] = await _seed(service, client.record.id, 1, url)
    await _login(service)

    page = await (await service.http.get(f"/console/deliveries/{delivery_id}")).text()

    assert "receiver-secret-123" not in page
    assert f"{receiver.url('/hooks')}?***" in page


async def test_replay_with_csrf_token_delivers(
    service: Service, make_receiver: MakeReceiver
) -> None:
    receiver, [delivery_id] = await _failed_deliveries(service, make_receiver, 1)
    csrf_token = await _login(service)
    receiver.default_status = 200

    response = await service.http.post(
        f"/console/deliveries/{delivery_id}/replay",
        data={"csrf_token": csrf_token},
        allow_redirects=False,
    )

    assert response.status == 303
    assert (
        response.headers["Location"] == f"/console/deliveries/{delivery_id}?replayed=1"
    )
    await wait_for(lambda: len(receiver.received) == 2)
    first, second = receiver.received
    assert first.headers["webhook-id"] == second.headers["webhook-id"]


async def test_replay_of_pending_delivery_conflicts(service: Service) -> None:
    # Nothing listens on port 9, so the delivery stays pending between retries.
    [delivery_id] = await _seed(service, None, 1, "http://127.0.0.1:9/hooks")
    csrf_token = await _login(service)

    response = await service.http.post(
        f"/console/deliveries/{delivery_id}/replay",
        data={"csrf_token": csrf_token},
        allow_redirects=False,
    )

    assert response.status == 409
    assert "Only failed, held or delivered deliveries" in await response.text()


async def test_unknown_delivery_not_found(service: Service) -> None:
    await _login(service)

    response = await service.http.get("/console/deliveries/dlv_unknown")

    assert response.status == 404
    assert response.content_type == "text/html"
    _assert_security_headers(response, "unknown delivery")


async def test_deliveries_filter_by_host(
    service: Service, make_receiver: MakeReceiver
) -> None:
    first = await make_receiver(default_status=200)
    second = await make_receiver(default_status=200)
    client = await service.new_client()
    [first_id] = await _seed(service, client.record.id, 1, first.url())
    [second_id] = await _seed(service, client.record.id, 1, second.url())
    await _login(service)

    host = first.url().split("/")[2]
    response = await service.http.get("/console/deliveries", params={"host": host})
    page = await response.text()

    assert response.status == 200
    assert first_id in page
    assert second_id not in page


async def test_deliveries_reject_invalid_filter(service: Service) -> None:
    await _login(service)

    cases = {
        "status": "lost",
        "event_type": "score.exploded",
        "since": "yesterday",
        "limit": "7",
    }
    for name, value in cases.items():
        response = await service.http.get("/console/deliveries", params={name: value})
        page = await response.text()
        assert response.status == 400, name
        assert f'id="{name}-error"' in page, name


async def test_deliveries_page_through_by_cursor(
    make_service: MakeService,
    make_receiver: MakeReceiver,
    backend: Receiver,
    tmp_path: Path,
) -> None:
    # A circuit that never opens lets all 30 fail at the first attempt.
    config = config_with_backend(
        tmp_path, backend, delivery={"circuit_failure_threshold": 1000}
    )
    service = await make_service(config)
    _, delivery_ids = await _failed_deliveries(service, make_receiver, 30)
    await _login(service)

    seen: set[str] = set()
    path = "/console/deliveries?status=failed&limit=25"
    pages = 0
    while path:
        page = await (await service.http.get(path)).text()
        seen.update(re.findall(r"/console/deliveries/(dlv_\w+)", page))
        pages += 1
        older = re.search(r'href="(/console/deliveries\?[^"]*)" rel="next"', page)
        path = older.group(1).replace("&amp;", "&") if older else ""

    assert pages == 2
    assert seen == set(delivery_ids)


async def test_bulk_replay_confirms_count_first(
    service: Service, make_receiver: MakeReceiver
) -> None:
    receiver, delivery_ids = await _failed_deliveries(service, make_receiver, 3)
    csrf_token = await _login(service)
    host = receiver.url().split("/")[2]
    store = service.state.store

    confirm = await service.http.get("/console/replay/confirm", params={"host": host})
    page = await confirm.text()
    assert confirm.status == 200
    assert "<strong>3</strong> failed" in page
    assert "deliveries will be replayed" in page
    assert 'action="/console/replay"' in page
    for delivery_id in delivery_ids:
        delivery = await store.get_delivery(delivery_id)
        assert delivery.status is DeliveryStatus.FAILED

    receiver.default_status = 200
    response = await service.http.post(
        "/console/replay",
        data={"csrf_token": csrf_token, "expected_count": "3", "host": host},
        allow_redirects=False,
    )
    assert response.status == 303
    assert "replayed=3" in response.headers["Location"]
    await wait_for(lambda: len(receiver.received) == 6)


async def test_bulk_replay_with_changed_count_replays_nothing(
    service: Service, make_receiver: MakeReceiver
) -> None:
    _, delivery_ids = await _failed_deliveries(service, make_receiver, 2)
    csrf_token = await _login(service)

    response = await service.http.post(
        "/console/replay",
        data={"csrf_token": csrf_token, "expected_count": "5"},
        allow_redirects=False,
    )

    assert response.status == 409
    assert "Nothing was replayed" in await response.text()
    for delivery_id in delivery_ids:
        delivery = await service.state.store.get_delivery(delivery_id)
        assert delivery.status is DeliveryStatus.FAILED


async def test_request_page_shows_request(
    service: Service, make_receiver: MakeReceiver
) -> None:
    receiver = await make_receiver(default_status=200)
    client = await service.new_client()
    receiver.secret = client.signing_secret
    correlation_id = await service.submit_pending(
        client, "cust-7", receiver.url("/hooks?sig=abc")
    )
    await _login(service)

    found = await service.http.get(
        "/console/requests", params={"correlation_id": correlation_id}
    )
    missing = await service.http.get(
        "/console/requests", params={"correlation_id": "req_unknown"}
    )
    page = await found.text()

    assert found.status == 200
    assert "cust-7" in page
    assert "sig=abc" not in page
    assert missing.status == 404
    assert "No request has the correlation ID" in await missing.text()


async def test_console_routes_not_in_openapi(service: Service) -> None:
    document = await (await service.http.get("/openapi.json")).json()

    assert not [path for path in document["paths"] if path.startswith("/console")]


def _tile_count(page: str, label: str) -> int:
    match = re.search(
        rf'tile-count">(\d+)</span>\s*<span class="tile-label">\s*(?:<a [^>]*>)?{label}<',
        page,
    )
    assert match is not None, label
    return int(match.group(1))


async def test_overview_counts_failed_and_held(
    make_service: MakeService,
    make_receiver: MakeReceiver,
    backend: Receiver,
    tmp_path: Path,
) -> None:
    config = config_with_backend(tmp_path, backend, delivery={"held_window_s": 300.0})
    service = await make_service(config)
    await _failed_deliveries(service, make_receiver, 1)
    # A receiver that never accepted anything makes its deliveries held
    # when their schedule runs out.
    down = await make_receiver(default_status=500)
    client = await service.new_client("down")
    [held_id] = await _seed(service, client.record.id, 1, down.url())

    async def held() -> bool:
        delivery = await service.state.store.get_delivery(held_id)
        return delivery.status is DeliveryStatus.HELD

    await wait_for(held)
    await _login(service)
    page = await (await service.http.get("/console/")).text()

    assert _tile_count(page, "Failed") == 1
    assert _tile_count(page, "Held") == 1
    assert _tile_count(page, "Pending") == 0
    assert f"{service.state.store.kind}, schema version" in page


async def test_bulk_replay_over_limit_refused(
    service: Service, make_receiver: MakeReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulk, "BULK_REPLAY_MAX", 2)
    _, delivery_ids = await _failed_deliveries(service, make_receiver, 3)
    csrf_token = await _login(service)

    confirm = await service.http.get("/console/replay/confirm")
    page = await confirm.text()
    response = await service.http.post(
        "/console/replay",
        data={"csrf_token": csrf_token, "expected_count": "3"},
        allow_redirects=False,
    )

    assert confirm.status == 200
    assert "More than 2 failed deliveries match" in page
    assert 'action="/console/replay"' not in page  # no form to replay them
    assert response.status == 409
    for delivery_id in delivery_ids:
        delivery = await service.state.store.get_delivery(delivery_id)
        assert delivery.status is DeliveryStatus.FAILED


async def test_overview_counts_open_circuits(
    make_service: MakeService,
    make_receiver: MakeReceiver,
    backend: Receiver,
    tmp_path: Path,
) -> None:
    config = config_with_backend(
        tmp_path, backend, delivery={"circuit_failure_threshold": 1}
    )
    service = await make_service(config)
    down = await make_receiver(default_status=500)
    client = await service.new_client()
    await _seed(service, client.record.id, 1, down.url())
    await wait_for(lambda: service.state.dispatcher.open_circuit_count() == 1)
    await _login(service)

    page = await (await service.http.get("/console/")).text()

    assert re.search(
        r"big-number\">1</strong>\s*receiver host has an open circuit", page
    )
    host = down.url().split("/")[2]
    assert f"<td>{host}</td>" in page
