"""Security through the real app: signatures, rotation, isolation, secrets, limits.

Every connection goes to 127.0.0.1. The tests here run with private networks
allowed (``make_config``), because their receivers are on loopback; the
network policy itself is tested in test_netpolicy.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from standardwebhooks import Webhook
from standardwebhooks.webhooks import (
    WebhookVerificationError as LibraryVerificationError,
)

from conftest import (
    ADMIN_TOKEN,
    BACKEND_TOKEN,
    ReceivedWebhook,
    Receiver,
    Service,
    config_with_backend,
    make_config,
    wait_for,
)
from store.sqlite import path_from_url
from webhooks import credentials
from webhooks.app import create_app
from webhooks.clients import NewClient, open_secrets
from webhooks.config import Config
from webhooks.service_keys import MasterKeyMismatch
from webhooks.signing import HmacSigner, signed_content
from webhooks.verify import WebhookVerificationError, verify_webhook

MakeService = Callable[..., Awaitable[Service]]
MakeReceiver = Callable[..., Awaitable[Receiver]]

MISMATCH = "does not match the master key the store was created with"


# Helpers


def signatures(webhook: ReceivedWebhook, version: str) -> list[bytes]:
    """Return the decoded signatures of one version in a webhook's header."""
    entries = webhook.headers["webhook-signature"].split(" ")
    return [
        base64.b64decode(entry.partition(",")[2])
        for entry in entries
        if entry.partition(",")[0] == version
    ]


def content_of(webhook: ReceivedWebhook) -> bytes:
    """Return what the signatures of a webhook cover."""
    headers = webhook.headers
    return signed_content(
        headers["webhook-id"], int(headers["webhook-timestamp"]), webhook.body
    )


def public_key(text: str) -> Ed25519PublicKey:
    """Decode a published ``whpk_`` key with nothing but the cryptography package."""
    assert text.startswith("whpk_")
    raw = base64.b64decode(text[len("whpk_") :], validate=True)
    assert len(raw) == 32
    return Ed25519PublicKey.from_public_bytes(raw)


def v1a_verifies(webhook: ReceivedWebhook, key_text: str) -> bool:
    """Return whether one v1a signature of the webhook verifies with ``key_text``."""
    key = public_key(key_text)
    for signature in signatures(webhook, "v1a"):
        try:
            key.verify(signature, content_of(webhook))
        except Exception:  # InvalidSignature
            continue
        return True
    return False


def library_verifies(webhook: ReceivedWebhook, secret: str) -> bool:
    """Return whether the standardwebhooks package accepts the webhook."""
    try:
        Webhook(secret).verify(webhook.body, webhook.headers)
    except LibraryVerificationError:
        return False
    return True


async def published_keys(service: Service) -> list[dict[str, Any]]:
    response = await service.http.get("/v1/webhooks/signing-keys")
    assert response.status == 200
    return (await response.json())["keys"]


async def deliver(
    service: Service, client: NewClient, receiver: Receiver, customer_id: str
) -> ReceivedWebhook:
    """Submit, post a result and return the webhook the receiver gets."""
    count = len(receiver.received)
    correlation_id = await service.submit_pending(client, customer_id, receiver.url())
    response = await service.post_result(correlation_id, outcome="ready", score=700)
    assert response.status == 200
    await wait_for(lambda: len(receiver.received) > count)
    return receiver.received[count]


async def rotate_secret(service: Service, client: NewClient) -> str:
    response = await service.http.post(
        "/v1/clients/me/signing-secret/rotate", headers=service.client_headers(client)
    )
    assert response.status == 201, await response.text()
    assert response.headers["Cache-Control"] == "no-store"
    return (await response.json())["signing_secret"]


async def rotate_service_key(service: Service) -> dict[str, Any]:
    response = await service.http.post(
        "/v1/admin/signing-keys/rotate", headers=service.admin_headers()
    )
    assert response.status == 201, await response.text()
    return await response.json()


@pytest.fixture
async def start(make_service: MakeService, backend: Receiver, tmp_path: Path) -> Any:
    """Start the app with the backend receiver and ``make_config`` overrides."""

    async def start(**sections: Any) -> Service:
        return await make_service(config_with_backend(tmp_path, backend, **sections))

    return start


# Signatures


async def test_webhook_verifies_v1_and_v1a(
    service: Service, make_receiver: MakeReceiver
) -> None:
    client = await service.new_client()
    receiver = await make_receiver()

    webhook = await deliver(service, client, receiver, "cust-1")
    [key] = await published_keys(service)

    assert len(signatures(webhook, "v1")) == 1
    assert len(signatures(webhook, "v1a")) == 1
    assert library_verifies(webhook, client.signing_secret)
    assert v1a_verifies(webhook, key["public_key"])
    event = verify_webhook(webhook.body, webhook.headers, secret=client.signing_secret)
    assert event["type"] == "score.ready"
    assert verify_webhook(webhook.body, webhook.headers, public_keys=[key]) == event
    assert (
        verify_webhook(webhook.body, webhook.headers, public_keys=[key["public_key"]])
        == event
    )


async def test_backend_event_carries_v1a(service: Service, backend: Receiver) -> None:
    client = await service.new_client()

    await service.submit_pending(client, "cust-1", "http://127.0.0.1:9/hooks")
    await wait_for(lambda: len(backend.received) == 1)
    [key] = await published_keys(service)
    event = backend.received[0]

    assert backend.invalid == []
    assert library_verifies(event, service.config.backend.signing_secret)
    assert v1a_verifies(event, key["public_key"])


async def test_tampered_body_fails(
    service: Service, make_receiver: MakeReceiver
) -> None:
    client = await service.new_client()
    receiver = await make_receiver()
    webhook = await deliver(service, client, receiver, "cust-1")
    keys = await published_keys(service)
    tampered = replace(
        webhook, body=webhook.body.replace(b"score.ready", b"score.faked")
    )

    assert not library_verifies(tampered, client.signing_secret)
    assert not v1a_verifies(tampered, keys[0]["public_key"])
    with pytest.raises(WebhookVerificationError):
        verify_webhook(tampered.body, tampered.headers, secret=client.signing_secret)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(tampered.body, tampered.headers, public_keys=keys)


async def test_wrong_secret_fails(
    service: Service, make_receiver: MakeReceiver
) -> None:
    client = await service.new_client("one")
    other = await service.new_client("other")
    receiver = await make_receiver()
    webhook = await deliver(service, client, receiver, "cust-1")
    stranger = credentials.new_signing_secret()
    stranger_key = "whpk_" + base64.b64encode(os.urandom(32)).decode()

    assert not library_verifies(webhook, other.signing_secret)
    assert not library_verifies(webhook, stranger)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(webhook.body, webhook.headers, secret=other.signing_secret)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(webhook.body, webhook.headers, secret=stranger)
    with pytest.raises((WebhookVerificationError, ValueError)):
        verify_webhook(webhook.body, webhook.headers, public_keys=[stranger_key])


async def test_stale_timestamp_fails(
    service: Service, make_receiver: MakeReceiver
) -> None:
    """A replayed webhook, validly signed long ago, fails on its timestamp."""
    client = await service.new_client()
    receiver = await make_receiver()
    webhook = await deliver(service, client, receiver, "cust-1")
    keys = await published_keys(service)
    sent_at = int(webhook.headers["webhook-timestamp"])
    old_at = int(time.time()) - 600
    key = credentials.decode_signing_secret(client.signing_secret)
    old_signature = HmacSigner(key).sign(
        signed_content(webhook.headers["webhook-id"], old_at, webhook.body)
    )
    replayed = replace(
        webhook,
        headers={
            **webhook.headers,
            "webhook-timestamp": str(old_at),
            "webhook-signature": old_signature,
        },
    )

    assert not library_verifies(replayed, client.signing_secret)
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify_webhook(replayed.body, replayed.headers, secret=client.signing_secret)
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify_webhook(
            webhook.body, webhook.headers, public_keys=keys, now=sent_at + 301
        )
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify_webhook(
            webhook.body, webhook.headers, public_keys=keys, now=sent_at - 301
        )
    assert verify_webhook(
        webhook.body, webhook.headers, public_keys=keys, now=sent_at + 299
    )


async def test_missing_header_fails(
    service: Service, make_receiver: MakeReceiver
) -> None:
    client = await service.new_client()
    receiver = await make_receiver()
    webhook = await deliver(service, client, receiver, "cust-1")

    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        headers = {k: v for k, v in webhook.headers.items() if k.lower() != name}
        with pytest.raises(WebhookVerificationError, match=name):
            verify_webhook(webhook.body, headers, secret=client.signing_secret)


# Rotation of a client's signing secret


async def test_secret_rotation_signs_with_both(
    service: Service, make_receiver: MakeReceiver
) -> None:
    client = await service.new_client()
    receiver = await make_receiver()
    await deliver(service, client, receiver, "cust-1")

    new_secret = await rotate_secret(service, client)
    webhook = await deliver(service, client, receiver, "cust-2")

    assert new_secret.startswith("whsec_")
    assert new_secret != client.signing_secret
    assert len(signatures(webhook, "v1")) == 2
    assert library_verifies(webhook, client.signing_secret)
    assert library_verifies(webhook, new_secret)
    assert verify_webhook(webhook.body, webhook.headers, secret=client.signing_secret)
    assert verify_webhook(webhook.body, webhook.headers, secret=new_secret)


async def test_rotated_secret_expires(start: Any, make_receiver: MakeReceiver) -> None:
    service = await start(security={"rotation_overlap_s": 0.3})
    client = await service.new_client()
    receiver = await make_receiver()

    first_rotation = await rotate_secret(service, client)
    await asyncio.sleep(0.5)
    webhook = await deliver(service, client, receiver, "cust-1")
    second_rotation = await rotate_secret(service, client)
    sealed = await service.state.store.get_signing_secrets([client.record.id])
    stored = open_secrets(service.state.box, client.record.id, sealed[client.record.id])

    assert len(signatures(webhook, "v1")) == 1
    assert library_verifies(webhook, first_rotation)
    assert not library_verifies(webhook, client.signing_secret)
    assert [item.secret for item in stored] == [second_rotation, first_rotation]
    assert stored[0].expires_at is None
    assert stored[1].expires_at is not None


async def test_secret_rotations_are_capped(
    service: Service, make_receiver: MakeReceiver
) -> None:
    client = await service.new_client()
    receiver = await make_receiver()
    secrets = [client.signing_secret]
    for _ in range(6):
        secrets.append(await rotate_secret(service, client))

    webhook = await deliver(service, client, receiver, "cust-1")

    assert len(signatures(webhook, "v1")) == 4
    for secret in secrets[-4:]:
        assert library_verifies(webhook, secret)
    for secret in secrets[:-4]:
        assert not library_verifies(webhook, secret)


async def test_secret_rotation_needs_api_key(service: Service) -> None:
    response = await service.http.post(
        "/v1/clients/me/signing-secret/rotate",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )

    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


# The service's Ed25519 signing keys


async def test_signing_keys_published(service: Service) -> None:
    response = await service.http.get("/v1/webhooks/signing-keys")
    [key] = (await response.json())["keys"]

    assert response.status == 200
    assert key["id"].startswith("key_")
    assert key["algorithm"] == "ed25519"
    assert public_key(key["public_key"]) is not None
    assert key["created_at"].endswith("Z")
    assert key["expires_at"] is None
    assert set(key) == {"id", "algorithm", "public_key", "created_at", "expires_at"}


async def test_signing_key_survives_restart(
    make_service: MakeService, tmp_path: Path
) -> None:
    config = make_config(tmp_path)
    first = await make_service(config)
    before = await published_keys(first)
    await first.http.close()

    second = await make_service(config)

    assert await published_keys(second) == before


async def test_key_rotation_signs_with_both(
    service: Service, make_receiver: MakeReceiver
) -> None:
    client = await service.new_client()
    receiver = await make_receiver()
    [old] = await published_keys(service)

    rotated = await rotate_service_key(service)
    webhook = await deliver(service, client, receiver, "cust-1")
    keys = await published_keys(service)

    assert rotated["key"]["id"] != old["id"]
    assert [key["id"] for key in keys] == [rotated["key"]["id"], old["id"]]
    assert keys[0]["expires_at"] is None
    assert keys[1]["expires_at"] is not None
    assert len(signatures(webhook, "v1a")) == 2
    assert v1a_verifies(webhook, old["public_key"])
    assert v1a_verifies(webhook, keys[0]["public_key"])
    assert verify_webhook(webhook.body, webhook.headers, public_keys=[old])


async def test_rotated_key_retires(start: Any, make_receiver: MakeReceiver) -> None:
    service = await start(security={"rotation_overlap_s": 0.3})
    client = await service.new_client()
    receiver = await make_receiver()
    [old] = await published_keys(service)

    await rotate_service_key(service)
    await asyncio.sleep(0.5)
    webhook = await deliver(service, client, receiver, "cust-1")
    keys = await published_keys(service)

    assert len(keys) == 1
    assert keys[0]["id"] != old["id"]
    assert len(signatures(webhook, "v1a")) == 1
    assert not v1a_verifies(webhook, old["public_key"])
    assert v1a_verifies(webhook, keys[0]["public_key"])


async def test_key_rotation_needs_admin_token(service: Service) -> None:
    client = await service.new_client()

    response = await service.http.post(
        "/v1/admin/signing-keys/rotate", headers=service.client_headers(client)
    )

    assert response.status == 401
    assert len(await published_keys(service)) == 1


# Tenant isolation


async def test_other_client_gets_404(
    service: Service, make_receiver: MakeReceiver
) -> None:
    owner = await service.new_client("owner")
    other = await service.new_client("other")
    receiver = await make_receiver()
    await deliver(service, owner, receiver, "cust-1")
    [delivery] = await service.list_deliveries(client_id=owner.record.id)
    correlation_id = delivery["correlation_id"]

    foreign = await service.get_request(other, correlation_id)
    unknown = await service.get_request(other, "req_00000000000000000000000000")
    foreign_score = await service.get_customer_score(other, "cust-1")
    own_score = await service.get_customer_score(owner, "cust-1")
    submitted = await service.submit(
        other, customer_id="cust-1", callback_url=receiver.url()
    )

    assert foreign.status == 404
    assert unknown.status == 404
    assert (await foreign.json())["type"] == (await unknown.json())["type"]
    assert foreign_score.status == 404
    assert own_score.status == 200
    assert submitted.status == 202  # the owner's stored score is not reused
    assert "score" not in await submitted.json()


# Secrets at rest


def encodings(secret: bytes) -> list[bytes]:
    """Return the forms in which a secret's bytes could appear in a file."""
    return [
        secret,
        secret.hex().encode(),
        secret.hex().upper().encode(),
        base64.b64encode(secret),
        base64.b64encode(secret).rstrip(b"="),
        base64.urlsafe_b64encode(secret).rstrip(b"="),
    ]


def database_bytes(config: Config) -> bytes:
    path = path_from_url(config.store.url)
    files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
    return b"".join(file.read_bytes() for file in files if file.exists())


@pytest.mark.sqlite_only
async def test_database_holds_no_plain_secret(
    service: Service, make_receiver: MakeReceiver
) -> None:
    client = await service.new_client()
    receiver = await make_receiver()
    await deliver(service, client, receiver, "cust-1")
    rotated = await rotate_secret(service, client)
    await rotate_service_key(service)
    await deliver(service, client, receiver, "cust-2")
    private_keys = [
        key.private_key.private_bytes_raw()
        for key in await service.state.keyring.service_keys()
    ]
    searched = []
    for secret in (client.signing_secret, rotated):
        searched.append(secret.encode())
        searched.extend(encodings(credentials.decode_signing_secret(secret)))
    for private_key in private_keys:
        searched.extend(encodings(private_key))
    searched.extend(encodings(service.config.master_key))
    searched.append(service.config.security.master_key.encode())
    searched.append(client.api_key.encode())

    running = database_bytes(service.config)
    await service.http.close()
    stopped = database_bytes(service.config)

    assert len(private_keys) == 2
    assert receiver.invalid == []
    for needle in searched:
        assert needle not in running
        assert needle not in stopped


# Logs


async def test_logs_contain_no_secret(
    start: Any,
    make_receiver: MakeReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    service = await start(delivery={"retry_schedule_s": (0.1,)})
    response = await service.http.post(
        "/v1/admin/clients", json={"name": "logged"}, headers=service.admin_headers()
    )
    created = await response.json()
    client = NewClient(
        record=await service.state.store.get_client(created["client_id"]),
        api_key=created["api_key"],
        signing_secret=created["signing_secret"],
    )
    failing = await make_receiver(default_status=500)
    working = await make_receiver()
    wrong_tokens = ["sk_" + "x" * 43, "wrong-admin-token-0123456789", "not-the-backend"]
    for path, method in (
        ("/v1/score-requests", "POST"),
        ("/v1/admin/deliveries", "GET"),
        ("/v1/backend/score-requests/req_x/result", "PUT"),
    ):
        for token in wrong_tokens:
            response = await service.http.request(
                method, path, json={}, headers={"Authorization": f"Bearer {token}"}
            )
            assert response.status == 401
    response = await service.submit(
        client, customer_id="cust 1", callback_url="ftp://127.0.0.1/"
    )
    assert response.status == 422
    correlation_id = await service.submit_pending(client, "cust-1", failing.url())
    await service.post_result(correlation_id, outcome="ready", score=700)
    await wait_for(lambda: len(failing.received) == 2)
    rotated = await rotate_secret(service, client)
    await rotate_service_key(service)
    await deliver(service, client, working, "cust-2")
    private_keys = [
        base64.b64encode(key.private_key.private_bytes_raw()).decode()
        for key in await service.state.keyring.service_keys()
    ]
    await service.http.close()

    secrets = [
        client.api_key,
        client.signing_secret,
        client.signing_secret.removeprefix("whsec_"),
        rotated,
        rotated.removeprefix("whsec_"),
        service.config.backend.token,
        service.config.backend.signing_secret,
        service.config.backend.signing_secret.removeprefix("whsec_"),
        service.config.admin.token,
        service.config.security.master_key,
        *wrong_tokens,
        *private_keys,
    ]
    text = "\n".join(
        f"{record.getMessage()} {record.__dict__!r} {record.exc_text or ''}"
        for record in caplog.records
    )
    assert len(caplog.records) > 20
    assert "Authorization" not in text
    assert "authorization" not in text.lower()
    for secret in secrets:
        assert secret not in text


# Limits on input


async def test_oversized_body_gets_413(service: Service) -> None:
    client = await service.new_client()
    limit = service.config.server.max_body_bytes
    body = json.dumps({"customer_id": "c", "metadata": {"x": "a" * limit}})

    response = await service.http.post(
        "/v1/score-requests",
        data=body,
        headers=service.client_headers(client, **{"Content-Type": "application/json"}),
    )

    async def chunks() -> Any:
        for _ in range(limit // 1024 + 2):
            yield b" " * 1024

    chunked = await service.http.post(
        "/v1/score-requests",
        data=chunks(),
        headers=service.client_headers(client, **{"Content-Type": "application/json"}),
    )

    assert response.status == 413
    assert response.content_type == "application/problem+json"
    assert (await response.json())["type"] == "/problems/payload-too-large"
    assert chunked.status == 413
    assert chunked.content_type == "application/problem+json"


async def test_non_json_body_gets_415(service: Service) -> None:
    client = await service.new_client()

    response = await service.http.post(
        "/v1/score-requests",
        data="customer_id=c",
        headers=service.client_headers(
            client, **{"Content-Type": "application/x-www-form-urlencoded"}
        ),
    )

    assert response.status == 415
    assert response.content_type == "application/problem+json"


@pytest.mark.parametrize(
    ("opening", "closing"),
    [("[", "]"), ('{"a":', "}")],
    ids=["arrays", "objects"],
)
async def test_deep_json_rejected(start: Any, opening: str, closing: str) -> None:
    service = await start(server={"max_body_bytes": 1024 * 1024})
    client = await service.new_client()
    headers = service.client_headers(client, **{"Content-Type": "application/json"})

    started = time.monotonic()
    deepest = await service.http.post(
        "/v1/score-requests",
        data=opening * 100_000 + "1" + closing * 100_000,
        headers=headers,
    )
    elapsed_s = time.monotonic() - started
    just_over = await service.http.post(
        "/v1/score-requests", data=opening * 33 + "1" + closing * 33, headers=headers
    )

    assert deepest.status == 400
    assert deepest.content_type == "application/problem+json"
    assert "nests deeper than 32 levels" in (await deepest.json())["detail"]
    assert elapsed_s < 5
    assert just_over.status == 400


async def test_rate_limit_gets_429(start: Any) -> None:
    service = await start(limits={"submissions_per_second": 5.0, "burst": 2})
    client = await service.new_client("busy")
    other = await service.new_client("calm")

    statuses = [
        (
            await service.submit(
                client, customer_id=f"c-{n}", callback_url="http://127.0.0.1:9/"
            )
        ).status
        for n in range(2)
    ]
    limited = await service.submit(
        client, customer_id="c-3", callback_url="http://127.0.0.1:9/"
    )
    unaffected = await service.submit(
        other, customer_id="c-1", callback_url="http://127.0.0.1:9/"
    )
    await asyncio.sleep(0.25)
    later = await service.submit(
        client, customer_id="c-4", callback_url="http://127.0.0.1:9/"
    )

    assert statuses == [202, 202]
    assert limited.status == 429
    assert limited.content_type == "application/problem+json"
    assert limited.headers["Retry-After"] == "1"
    assert (await limited.json())["type"] == "/problems/rate-limited"
    assert unaffected.status == 202
    assert later.status == 202


OVERSIZE_BODIES = [
    pytest.param(
        "/v1/score-requests",
        {"customer_id": "c" * 65, "callback_url": "http://127.0.0.1:9/"},
        "customer_id",
        id="customer-id-65",
    ),
    pytest.param(
        "/v1/score-requests",
        {"customer_id": "c", "callback_url": "http://127.0.0.1:9/" + "a" * 2048},
        "callback_url",
        id="callback-url-over-2048",
    ),
    pytest.param(
        "/v1/score-requests",
        {
            "customer_id": "c",
            "callback_url": "http://127.0.0.1:9/",
            "metadata": {"note": "a" * 4096},
        },
        "metadata",
        id="metadata-over-4-kib",
    ),
    pytest.param(
        "/v1/admin/clients", {"name": "n" * 201}, "name", id="client-name-201"
    ),
]


@pytest.mark.parametrize(("path", "body", "field"), OVERSIZE_BODIES)
async def test_oversize_string_gets_422(
    service: Service, path: str, body: dict[str, Any], field: str
) -> None:
    client = await service.new_client()
    headers = (
        service.admin_headers() if "admin" in path else service.client_headers(client)
    )

    response = await service.http.post(path, json=body, headers=headers)

    assert response.status == 422
    assert field in (await response.json())["errors"]


async def test_oversize_reason_gets_422(service: Service) -> None:
    client = await service.new_client()
    correlation_id = await service.submit_pending(client, "c", "http://127.0.0.1:9/")

    response = await service.post_result(
        correlation_id, outcome="failed", reason="r" * 501
    )

    assert response.status == 422
    assert "reason" in (await response.json())["errors"]


async def test_oversize_header_and_query_get_422(service: Service) -> None:
    client = await service.new_client()

    idempotency = await service.http.post(
        "/v1/score-requests",
        json={"customer_id": "c", "callback_url": "http://127.0.0.1:9/"},
        headers=service.client_headers(client, **{"Idempotency-Key": "k" * 256}),
    )
    client_id = await service.http.get(
        "/v1/admin/deliveries",
        params={"client_id": "c" * 65},
        headers=service.admin_headers(),
    )
    cursor = await service.http.get(
        "/v1/admin/deliveries",
        params={"cursor": "c" * 201},
        headers=service.admin_headers(),
    )
    customer = await service.get_customer_score(client, "c" * 65)

    assert idempotency.status == 422
    assert client_id.status == 422
    assert cursor.status == 422
    assert customer.status == 422


async def test_long_correlation_id_gets_404(service: Service) -> None:
    client = await service.new_client()

    response = await service.get_request(client, "req_" + "x" * 5000)

    assert response.status == 404
    assert "x" * 65 not in (await response.json())["detail"]


# The master key


def database_dump(path: Path) -> list[str]:
    """Return the SQL text of every table and row of a SQLite file, read-only."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(db.iterdump())
    finally:
        db.close()


@pytest.mark.sqlite_only
async def test_wrong_master_key_stops_start(
    make_service: MakeService, tmp_path: Path
) -> None:
    config = make_config(tmp_path)
    first = await make_service(config)
    await first.new_client()
    await first.http.close()
    database = path_from_url(config.store.url)
    before = database_dump(database)
    wrong = replace(
        config,
        security=replace(config.security, master_key=credentials.new_master_key()),
    )

    server = TestServer(create_app(wrong))
    with pytest.raises(MasterKeyMismatch) as raised:
        await server.start_server()
    await server.close()
    after = database_dump(database)
    again = await make_service(config)

    assert MISMATCH in str(raised.value)
    assert after == before
    assert len(await published_keys(again)) == 1


def _write_cli_config(tmp_path: Path, database: Path, master_key: str) -> Path:
    path = tmp_path / f"config-{master_key[:8]}.toml"
    path.write_text(
        f"""[server]
port = 0
[store]
url = "sqlite:///{database}"
synchronous = "normal"
[backend]
token = "{BACKEND_TOKEN}"
signing_secret = "{credentials.new_signing_secret()}"
[admin]
token = "{ADMIN_TOKEN}"
[security]
master_key = "{master_key}"
"""
    )
    return path


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("WEBHOOKS_")}
    return subprocess.run(
        [sys.executable, "-m", "webhooks", *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_rejects_wrong_master_key(tmp_path: Path) -> None:
    """Functional: ``clients create`` and ``serve`` exit non-zero and change nothing."""
    database = tmp_path / "webhooks.sqlite3"
    right = _write_cli_config(tmp_path, database, credentials.new_master_key())
    wrong = _write_cli_config(tmp_path, database, credentials.new_master_key())
    created = _run_cli(
        "clients", "create", "first", "--config", str(right), cwd=tmp_path
    )
    assert created.returncode == 0, created.stderr
    before = database_dump(database)

    rejected = _run_cli(
        "clients", "create", "second", "--config", str(wrong), cwd=tmp_path
    )
    served = _run_cli("serve", "--config", str(wrong), cwd=tmp_path)

    assert rejected.returncode != 0
    assert MISMATCH in rejected.stderr
    assert rejected.stdout == ""
    assert served.returncode != 0
    assert MISMATCH in served.stderr
    assert database_dump(database) == before
