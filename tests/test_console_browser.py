"""Functional tests of the operator console in a real browser.

Playwright drives Debian's Chromium against the service listening on
127.0.0.1, with webhook receivers on 127.0.0.1 too. The browser may load
nothing from any other address. Without /usr/bin/chromium these tests skip,
unless WEBHOOKS_REQUIRE_BROWSER=1 makes them fail, as in CI.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conftest import ADMIN_TOKEN, Receiver, Service, config_with_backend, wait_for
from store.records import DeliveryStatus

CHROMIUM = Path("/usr/bin/chromium")
# Flags that keep Chromium from reaching out to update, sync, metrics and
# other services on its own.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "console-deliveries.png"
TIMEOUT_MS = 10_000

MakeReceiver = Callable[..., Awaitable[Receiver]]

try:
    from playwright.async_api import Page, Route, async_playwright, expect
except ImportError:  # the test extra is not installed
    async_playwright = None


def _require_browser() -> None:
    missing = []
    if async_playwright is None:
        missing.append("the playwright package (pip install -e '.[test]')")
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    if not missing:
        return
    message = "browser tests need " + " and ".join(missing)
    if os.environ.get("WEBHOOKS_REQUIRE_BROWSER") == "1":
        pytest.fail(message + "; WEBHOOKS_REQUIRE_BROWSER=1 forbids skipping them")
    pytest.skip(message)


async def _only_loopback(route: Route) -> None:
    if urlsplit(route.request.url).hostname == "127.0.0.1":
        await route.continue_()
    else:
        await route.abort()


@pytest.fixture
async def page() -> AsyncIterator[Page]:
    """A fresh Chromium page that can load from 127.0.0.1 only."""
    _require_browser()
    playwright = await async_playwright().start()
    try:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=30_000
        )
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        await context.route("**/*", _only_loopback)
        yield await context.new_page()
        await browser.close()
    finally:
        await playwright.stop()


@pytest.fixture
async def service(
    make_service: Callable[..., Awaitable[Service]], backend: Receiver, tmp_path: Path
) -> Service:
    """The service, with holding off, so a receiver down throughout makes its
    deliveries fail for good, and with circuits that never open."""
    delivery = {"held_window_s": 0.0, "circuit_failure_threshold": 1000}
    config = config_with_backend(tmp_path, backend, delivery=delivery)
    return await make_service(config)


async def _log_in(page: Page, service: Service) -> None:
    await page.goto(str(service.http.make_url("/console/")))
    await expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    await page.get_by_label("Admin token").fill(ADMIN_TOKEN)
    await page.get_by_role("button", name="Log in").click()
    await expect(page.get_by_role("heading", name="Overview")).to_be_visible()


async def _failed_requests(
    service: Service, backend: Receiver, receiver: Receiver, count: int
) -> list[tuple[str, str]]:
    """Submit requests of one client whose webhooks fail for good, and return
    their correlation and delivery IDs.

    Each result is posted after the backend acknowledged its event, as a real
    backend would, so the event shows as delivered and not as cancelled.
    """
    client = await service.new_client()
    receiver.secret = client.signing_secret
    correlation_ids = []
    for number in range(count):
        events_expected = len(backend.received) + 1
        correlation_id = await service.submit_pending(
            client, f"cust-{number}", receiver.url("/hooks?token=receiver-secret")
        )
        await wait_for(partial(_has_received, backend, events_expected))
        response = await service.post_result(correlation_id, outcome="ready", score=712)
        assert response.status == 200
        correlation_ids.append(correlation_id)

    async def failed() -> list[dict]:
        return await service.list_deliveries(
            status="failed", client_id=client.record.id
        )

    await wait_for(lambda: _has_length(failed(), count))
    by_request = {item["correlation_id"]: item["id"] for item in await failed()}
    return [
        (correlation_id, by_request[correlation_id])
        for correlation_id in correlation_ids
    ]


def _has_received(receiver: Receiver, count: int) -> bool:
    return len(receiver.received) >= count


async def _has_length(items: Awaitable[list[dict]], length: int) -> bool:
    return len(await items) == length


async def test_console_walkthrough(
    page: Page, service: Service, backend: Receiver, make_receiver: MakeReceiver
) -> None:
    """Log in, find a failed delivery, replay it, follow its request, bulk replay."""
    receiver = await make_receiver(default_status=500)
    [(correlation_id, delivery_id)] = await _failed_requests(
        service, backend, receiver, 1
    )
    await _log_in(page, service)

    # The overview counts the failed delivery.
    failed_tile = page.locator(".tile", has_text="Failed")
    await expect(failed_tile.locator(".tile-count")).to_have_text("1")

    # The deliveries table lists it, newest first.
    await page.get_by_role("link", name="Deliveries", exact=True).click()
    await page.get_by_label("State").select_option("failed")
    await page.get_by_role("button", name="Show deliveries").click()
    row = page.get_by_role("row", name=re.compile(delivery_id))
    await expect(row).to_contain_text("failed")
    await expect(row).to_contain_text("HTTP 500")

    # Its page shows every attempt and masks the receiver's query string.
    await row.get_by_role("link", name=delivery_id).click()
    await expect(
        page.get_by_role("heading", name=re.compile(delivery_id))
    ).to_be_visible()
    attempts = page.locator("table.attempts tbody tr")
    await expect(attempts).to_have_count(4)
    await expect(attempts.first).to_contain_text("HTTP 500")
    await expect(page.locator("code.url")).to_have_text(re.compile(r"/hooks\?\*\*\*$"))

    # After the receiver recovers, a replay delivers it.
    receiver.default_status = 200
    await page.get_by_role("button", name="Replay this delivery").click()
    await expect(page.get_by_role("status")).to_contain_text("Replay queued")

    async def delivered() -> bool:
        delivery = await service.state.store.get_delivery(delivery_id)
        return delivery.status is DeliveryStatus.DELIVERED

    await wait_for(delivered)
    await page.reload()
    await expect(page.locator("dl.facts .status").first).to_have_text("delivered")
    await expect(attempts).to_have_count(5)
    await expect(attempts.last).to_contain_text("HTTP 200")

    # The correlation ID leads to the request and its timeline.
    await page.get_by_role("link", name=correlation_id).click()
    await expect(
        page.get_by_role("heading", name=re.compile(correlation_id))
    ).to_be_visible()
    timeline = page.locator("table.timeline tbody tr")
    await expect(timeline.filter(has_text="webhook attempt")).to_have_count(5)
    await expect(page.locator("table.deliveries")).to_contain_text(delivery_id)


async def test_bulk_replay_shows_count_first(
    page: Page, service: Service, backend: Receiver, make_receiver: MakeReceiver
) -> None:
    receiver = await make_receiver(default_status=500)
    failed_ids = [
        delivery_id
        for _, delivery_id in await _failed_requests(service, backend, receiver, 3)
    ]
    healthy = await make_receiver(default_status=200)
    client = await service.new_client("healthy")
    healthy.secret = client.signing_secret
    correlation_id = await service.submit_pending(client, "cust-9", healthy.url())
    await wait_for(lambda: len(backend.received) == 4)
    await service.post_result(correlation_id, outcome="ready", score=700)
    await wait_for(lambda: len(healthy.received) == 1)
    await _log_in(page, service)
    await _save_screenshot(page, service)

    await page.get_by_role("link", name="Bulk replay").click()
    await page.get_by_label("Receiver host").fill(receiver.url().split("/")[2])
    await page.get_by_role("button", name="Show failed deliveries").click()
    await expect(page.locator(".summary")).to_contain_text("3 failed deliveries match")
    await page.get_by_role("link", name="Review the replay of 3 deliveries").click()

    # The confirmation states the count, and nothing has happened yet.
    await expect(page.locator("#replay-count")).to_contain_text(
        "3 failed deliveries will be replayed"
    )
    for delivery_id in failed_ids:
        delivery = await service.state.store.get_delivery(delivery_id)
        assert delivery.status is DeliveryStatus.FAILED

    receiver.default_status = 200
    await page.get_by_role("button", name="Replay 3 deliveries").click()
    await expect(page.get_by_role("status")).to_contain_text("Replayed 3 deliveries")

    async def all_delivered() -> bool:
        for delivery_id in failed_ids:
            delivery = await service.state.store.get_delivery(delivery_id)
            if delivery.status is not DeliveryStatus.DELIVERED:
                return False
        return True

    await wait_for(all_delivered)


async def _save_screenshot(page: Page, service: Service) -> None:
    """Take a screenshot of the deliveries page, with failed and delivered rows.

    It replaces the README's picture only when WEBHOOKS_UPDATE_SCREENSHOT=1,
    so a test run leaves the working tree unchanged.
    """
    await page.goto(str(service.http.make_url("/console/deliveries")))
    await expect(page.locator("table.deliveries")).to_contain_text("failed")
    picture = await page.screenshot(full_page=True)
    assert picture.startswith(b"\x89PNG")
    if os.environ.get("WEBHOOKS_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.write_bytes(picture)


async def test_console_keyboard_only(page: Page, service: Service) -> None:
    """Log in and reach the deliveries page with the keyboard alone."""
    await page.goto(str(service.http.make_url("/console/")))
    # The token field has focus on arrival.
    await page.keyboard.type(ADMIN_TOKEN)
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="Overview")).to_be_visible()

    # The first Tab reaches the skip link, the next ones the navigation.
    await page.keyboard.press("Tab")
    await expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    deliveries_link = page.get_by_role("link", name="Deliveries", exact=True)
    for _ in range(10):
        await page.keyboard.press("Tab")
        if await deliveries_link.evaluate("link => link === document.activeElement"):
            break
    await expect(deliveries_link).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="Deliveries")).to_be_visible()


async def test_console_fits_narrow_window(
    page: Page, service: Service, backend: Receiver, make_receiver: MakeReceiver
) -> None:
    """At 640 CSS pixels, as a 1280-pixel window at 200 % zoom, nothing
    makes the page itself scroll sideways; wide tables scroll in their box."""
    receiver = await make_receiver(default_status=500)
    [(_, delivery_id)] = await _failed_requests(service, backend, receiver, 1)
    await page.set_viewport_size({"width": 640, "height": 900})
    await _log_in(page, service)

    for path in [
        "/console/",
        "/console/deliveries",
        f"/console/deliveries/{delivery_id}",
        "/console/replay",
    ]:
        await page.goto(str(service.http.make_url(path)))
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - window.innerWidth"
        )
        assert overflow <= 0, path
