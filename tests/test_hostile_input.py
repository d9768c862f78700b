"""Hostile and malformed input: every case is a problem document, never a 500."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Service
from webhooks.bodies import MAX_JSON_DEPTH, _check_tree
from webhooks.config import ConfigError, load_config


async def _submit_raw(service: Service, client, body: str) -> tuple[int, dict]:
    response = await service.http.post(
        "/v1/score-requests",
        data=body.encode("utf-8", "surrogatepass"),
        headers={**service.client_headers(client), "Content-Type": "application/json"},
    )
    return response.status, await response.json()


@pytest.mark.parametrize(
    "body",
    [
        '{"customer_id": ' + "1" * 5000 + "}",
        '{"customer_id": "c", "callback_url": "http://127.0.0.1/", "metadata": {"x": NaN}}',
        '{"customer_id": "c", "callback_url": "http://127.0.0.1/", "metadata": {"x": 1e400}}',
        '{"customer_id": "c", "callback_url": "http://127.0.0.1/", "metadata": {"x": "a\\u0000"}}',
        '{"customer_id": "c", "callback_url": "http://127.0.0.1/", "metadata": {"x": "\\udc80"}}',
        '{"customer_id": "c", "callback_url": "http://127.0.0.1/", "metadata": {"\\u0000": 1}}',
    ],
    ids=["huge-number", "nan", "infinity", "nul", "lone-surrogate", "nul-key"],
)
async def test_unstorable_json_rejected(service: Service, body: str) -> None:
    client = await service.new_client()
    status, document = await _submit_raw(service, client, body)
    assert status == 400
    assert document["status"] == 400
    assert await service.list_deliveries() == []


def test_depth_limit_counts_containers_only() -> None:
    deepest_allowed: object = 1
    for _ in range(MAX_JSON_DEPTH):
        deepest_allowed = {"a": deepest_allowed}
    assert _check_tree(deepest_allowed, MAX_JSON_DEPTH) is None
    assert _check_tree({"a": deepest_allowed}, MAX_JSON_DEPTH) is not None


async def test_non_ascii_bearer_token_unauthorized(service: Service) -> None:
    for path in ("/v1/score-requests/req_x", "/v1/admin/deliveries"):
        response = await service.http.get(path, headers={"Authorization": "Bearer é"})
        assert response.status == 401, path
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_far_valid_until_rejected(service: Service, make_receiver) -> None:
    client = await service.new_client()
    receiver = await make_receiver(secret=client.signing_secret)
    correlation_id = await service.submit_pending(client, "cust-1", receiver.url())
    for value in ("9999-12-31T23:59:59-14:00", "2200-01-01T00:00:00Z"):
        response = await service.post_result(
            correlation_id, outcome="ready", score=650, valid_until=value
        )
        assert response.status == 422, value
        assert "valid_until" in (await response.json())["errors"]
    resource = await (await service.get_request(client, correlation_id)).json()
    assert resource["status"] == "pending"


async def test_control_characters_in_path_and_query(service: Service) -> None:
    admin = service.admin_headers()
    response = await service.http.get("/v1/admin/deliveries/dlv_%00", headers=admin)
    assert response.status == 404
    assert response.content_type == "application/problem+json"
    response = await service.http.get(
        "/v1/admin/deliveries", params={"client_id": "a\x00"}, headers=admin
    )
    assert response.status == 422
    assert "client_id" in (await response.json())["errors"]


async def test_callback_url_with_line_break_rejected(service: Service) -> None:
    client = await service.new_client()
    response = await service.submit(
        client,
        customer_id="cust-1",
        callback_url="http://127.0.0.1:9100/x\r\nX-Injected: 1",
    )
    assert response.status == 422
    assert "callback_url" in (await response.json())["errors"]


async def test_huge_duration_rejected(service: Service) -> None:
    response = await service.http.get(
        "/v1/admin/score-requests",
        params={"delivered_not_fetched_for": "99999999d"},
        headers=service.admin_headers(),
    )
    assert response.status == 422
    assert "delivered_not_fetched_for" in (await response.json())["errors"]


async def test_declared_oversize_body_answered_at_once(service: Service) -> None:
    client = await service.new_client()
    host, port = service.http.server.host, service.http.server.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        b"POST /v1/score-requests HTTP/1.1\r\n"
        + f"Host: {host}\r\nAuthorization: Bearer {client.api_key}\r\n".encode()
        + b"Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n"
    )
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), timeout=5)
    writer.close()
    assert b" 413 " in status_line


@pytest.mark.parametrize(
    ("section", "line"),
    [
        ("scores", "default_validity = 1e308"),
        ("scores", "idempotency_window = 1e12"),
        ("delivery", "retry_schedule = [1e12]"),
        ("delivery", "attempt_timeout = 1e300"),
    ],
    ids=["validity", "idempotency", "schedule", "timeout"],
)
def test_config_rejects_absurd_durations(tmp_path: Path, section: str, line: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f"[{section}]\n{line}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert f"{section}." in str(caught.value)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "webhooks", *args], capture_output=True, text=True, timeout=60
    )


def test_cli_unreadable_config_one_line(tmp_path: Path) -> None:
    binary = tmp_path / "bad.toml"
    binary.write_bytes(b"\xff\xfe[server]\n")
    for target in (binary, tmp_path):
        result = _cli("check-config", "--config", str(target))
        assert result.returncode == 2, target
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_cli_rejects_unprintable_client_name(tmp_path: Path) -> None:
    result = _cli("clients", "create", "bad\x07name")
    assert result.returncode == 2
    assert "NAME" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "var").exists()

