"""Erasing a customer through the admin API and the CLI, on real stores and files."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import json
import logging
import os
import sqlite3
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from conftest import Receiver, Service, config_with_backend, count_rows, wait_for
from store.scrub import ERASED_REASON, ERASURE_TABLES
from store.sqlite import path_from_url
from webhooks import credentials
from webhooks.clients import NewClient
from webhooks.config import Config
from webhooks.erasure import customer_hash
from webhooks.logs import HANDLER_NAME, configure_logging
from webhooks.timefmt import format_time, utc_now

# Distinctive, so that finding it anywhere in the store is no coincidence.
CUSTOMER = "cust-erase-7f3a9c"
CLI_TIMEOUT_S = 30


@dataclass
class Seeded:
    """A customer with a failed, a ready, a reused and a pending request."""

    client: NewClient
    failed_id: str  # the backend failed it with a reason naming the customer
    ready_id: str  # completed with the score that the erasure deletes
    reused_id: str  # its webhook fails and waits for a retry
    pending_id: str  # its computation is pending at the backend


async def _echo(request: web.Request) -> web.Response:
    """Return the webhook's body as the response, so the excerpt names the customer."""
    return web.Response(status=200, body=await request.read())


async def _echo_failing(request: web.Request) -> web.Response:
    return web.Response(status=500, body=await request.read())


async def _seed(service: Service, backend: Receiver, make_receiver: Any) -> Seeded:
    client = await service.new_client()
    echo = await make_receiver(secret=client.signing_secret, handler=_echo)
    failing = await make_receiver(secret=client.signing_secret, handler=_echo_failing)
    # The customer ID is also in a callback URL, a metadata value and the
    # backend's failure reason.
    callback_url = echo.url(f"/hooks/{CUSTOMER}")

    response = await service.submit(
        client,
        customer_id=CUSTOMER,
        callback_url=callback_url,
        metadata={"ref": CUSTOMER},
        idempotency_key=f"key-{CUSTOMER}",
    )
    assert response.status == 202, await response.text()
    failed_id = (await response.json())["correlation_id"]
    # A result before the backend's acknowledgement would cancel its event.
    await wait_for(lambda: len(backend.received) == 1)
    response = await service.post_result(
        failed_id, outcome="failed", reason=f"no file for {CUSTOMER} at the bureau"
    )
    assert response.status == 200, await response.text()

    ready_id = await service.submit_pending(client, CUSTOMER, callback_url)
    await wait_for(lambda: len(backend.received) == 2)
    valid_until = utc_now() + timedelta(seconds=1.5)
    response = await service.post_result(
        ready_id, outcome="ready", score=712, valid_until=format_time(valid_until)
    )
    assert response.status == 200, await response.text()
    response = await service.submit(
        client, customer_id=CUSTOMER, callback_url=failing.url()
    )
    assert response.status == 201, await response.text()
    reused_id = (await response.json())["correlation_id"]

    await asyncio.sleep(max(0.0, (valid_until - utc_now()).total_seconds()) + 0.1)
    pending_id = await service.submit_pending(client, CUSTOMER, callback_url)
    await wait_for(lambda: len(echo.received) == 2 and len(failing.received) == 1)
    await wait_for(lambda: len(backend.received) == 3)
    assert echo.invalid == []
    return Seeded(client, failed_id, ready_id, reused_id, pending_id)


def _seed_config(tmp_path: Path, backend: Receiver) -> Config:
    # The failed webhook waits 60 s for its retry, so it is pending when erased.
    return config_with_backend(
        tmp_path, backend, delivery={"retry_schedule_s": (60.0,)}
    )


async def _erase_via_admin_api(
    service: Service, client_id: str, tmp_path: Path
) -> dict[str, Any]:
    response = await service.http.delete(
        f"/v1/admin/clients/{client_id}/customers/{CUSTOMER}",
        headers=service.admin_headers(),
    )
    assert response.status == 200, await response.text()
    return await response.json()


async def _erase_via_cli(
    service: Service, client_id: str, tmp_path: Path
) -> dict[str, Any]:
    # At DEBUG, so that standard error shows every line the command logs.
    completed = await _run_cli(
        "--log-level",
        "DEBUG",
        "customers",
        "erase",
        CUSTOMER,
        "--client",
        client_id,
        "--config",
        str(_write_config(tmp_path, service.config)),
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr
    assert CUSTOMER not in completed.stderr
    return json.loads(completed.stdout)


ERASE_CHANNELS = {"admin-api": _erase_via_admin_api, "cli": _erase_via_cli}


@pytest.mark.parametrize("channel", list(ERASE_CHANNELS))
async def test_erasure_leaves_no_row_with_customer_id(
    make_service: Any,
    make_receiver: Any,
    backend: Receiver,
    tmp_path: Path,
    channel: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = await make_service(_seed_config(tmp_path, backend))
    seeded = await _seed(service, backend, make_receiver)
    client_id = seeded.client.record.id
    assert await _columns_containing(service.config, CUSTOMER) != []

    with caplog.at_level(logging.DEBUG):
        summary = await ERASE_CHANNELS[channel](service, client_id, tmp_path)

    assert await _columns_containing(service.config, CUSTOMER) == []
    service_records = [
        record
        for record in caplog.records
        if record.name.startswith(("webhooks", "store"))
    ]
    assert service_records != []
    assert all(CUSTOMER not in record.getMessage() for record in service_records)
    hashed = customer_hash(service.config.master_key, client_id, CUSTOMER)
    assert summary["customer_hash"] == hashed
    assert summary["client_id"] == client_id
    assert summary["requested_by"] == channel
    assert set(summary["rows_changed"]) == set(ERASURE_TABLES)
    assert summary["rows_changed"]["scores"] == 1
    assert summary["rows_changed"]["idempotency_keys"] == 1
    assert summary["rows_changed"]["score_requests"] == 4
    assert summary["rows_changed"]["computations"] == 3
    # Three events to the backend and three webhooks carried the customer ID.
    assert summary["rows_changed"]["deliveries"] == 6
    assert summary["rows_changed"]["attempts"] == 3
    assert summary["rows_changed"]["timeline_entries"] > 0
    assert summary["total_rows_changed"] == sum(summary["rows_changed"].values())

    [erasure] = await service.state.store.list_erasures(client_id)
    assert erasure.customer_hash == hashed
    assert erasure.requested_by == channel
    assert erasure.detail == summary["rows_changed"]
    assert erasure.rows_changed == summary["total_rows_changed"]
    assert CUSTOMER not in repr(erasure)


async def test_erasure_reads_and_deliveries(
    make_service: Any, make_receiver: Any, backend: Receiver, tmp_path: Path
) -> None:
    """After erasing, reads show the hash and no score, and open work is stopped."""
    service = await make_service(_seed_config(tmp_path, backend))
    seeded = await _seed(service, backend, make_receiver)
    client = seeded.client

    summary = await _erase_via_admin_api(service, client.record.id, tmp_path)

    hashed = summary["customer_hash"]
    response = await service.get_request(client, seeded.ready_id)
    assert response.status == 200
    ready = await response.json()
    assert ready["status"] == "ready"
    assert ready["customer_id"] == hashed
    assert ready["metadata"] is None
    assert "score" not in ready
    response = await service.get_request(client, seeded.failed_id)
    failed = await response.json()
    assert failed["error"]["reason"] == f"no file for {hashed} at the bureau"
    response = await service.get_request(client, seeded.pending_id)
    pending = await response.json()
    assert pending["status"] == "failed"
    assert pending["error"]["reason"] == ERASED_REASON
    response = await service.get_customer_score(client, CUSTOMER)
    assert response.status == 404

    deliveries = await service.list_deliveries(client_id=client.record.id)
    statuses = {
        delivery["correlation_id"]: delivery["status"] for delivery in deliveries
    }
    assert statuses[seeded.reused_id] == "cancelled"
    assert statuses[seeded.ready_id] == "delivered"
    response = await service.post_result(seeded.pending_id, outcome="ready", score=700)
    assert response.status == 409
    assert "erased" in (await response.json())["detail"]


async def test_new_request_after_erasure_works(
    make_service: Any, make_receiver: Any, backend: Receiver, tmp_path: Path
) -> None:
    service = await make_service(config_with_backend(tmp_path, backend))
    client = await service.new_client()
    receiver = await make_receiver(secret=client.signing_secret)
    first_id = await service.submit_pending(client, CUSTOMER, receiver.url())
    await wait_for(lambda: len(backend.received) == 1)

    await _erase_via_admin_api(service, client.record.id, tmp_path)

    async with service.state.store.transaction() as transaction:
        joinable = await transaction.find_pending_computation(
            client.record.id, CUSTOMER
        )
    assert joinable is None
    second_id = await service.submit_pending(client, CUSTOMER, receiver.url())
    await wait_for(lambda: len(backend.received) == 2)
    requested = backend.received[1].event["data"]
    assert requested["correlation_id"] == second_id
    assert requested["customer_id"] == CUSTOMER
    assert backend.invalid == []
    response = await service.post_result(second_id, outcome="ready", score=701)
    assert response.status == 200, await response.text()
    await wait_for(lambda: len(receiver.received) == 1)
    webhook = receiver.received[0].event
    assert webhook["data"]["correlation_id"] == second_id
    assert webhook["data"]["customer_id"] == CUSTOMER
    assert receiver.invalid == []
    response = await service.get_customer_score(client, CUSTOMER)
    assert response.status == 200
    assert (await response.json())["score"]["value"] == 701
    assert first_id != second_id


async def test_second_erasure_with_pending_computation(
    make_service: Any, make_receiver: Any, backend: Receiver, tmp_path: Path
) -> None:
    """Two erasures of one customer, each with a computation pending, both succeed."""
    service = await make_service(config_with_backend(tmp_path, backend))
    client = await service.new_client()
    receiver = await make_receiver(secret=client.signing_secret)
    await service.submit_pending(client, CUSTOMER, receiver.url())
    await _erase_via_admin_api(service, client.record.id, tmp_path)
    await service.submit_pending(client, CUSTOMER, receiver.url())

    summary = await _erase_via_admin_api(service, client.record.id, tmp_path)

    assert summary["rows_changed"]["computations"] == 1
    assert summary["rows_changed"]["score_requests"] == 1
    erasures = await service.state.store.list_erasures(client.record.id)
    assert len(erasures) == 2
    assert erasures[0].customer_hash == erasures[1].customer_hash


@pytest.mark.sqlite_only
@pytest.mark.parametrize("channel", list(ERASE_CHANNELS))
async def test_erasure_leaves_no_bytes_in_sqlite_files(
    make_service: Any,
    make_receiver: Any,
    backend: Receiver,
    tmp_path: Path,
    channel: str,
) -> None:
    """The database file and its write-ahead log keep no copy of the customer ID.

    Deleted rows are overwritten (secure_delete), and the erasure
    checkpoints and truncates the write-ahead log.
    """
    service = await make_service(_seed_config(tmp_path, backend))
    seeded = await _seed(service, backend, make_receiver)
    database = path_from_url(service.config.store.url)
    assert CUSTOMER.encode() in _file_bytes(database)

    await ERASE_CHANNELS[channel](service, seeded.client.record.id, tmp_path)

    for suffix in ("", "-wal", "-shm", "-journal"):
        path = database.with_name(database.name + suffix)
        if path.exists():
            assert CUSTOMER.encode() not in path.read_bytes(), path.name


async def test_admin_erase_rejects_bad_requests(service: Service) -> None:
    client = await service.new_client()
    path = f"/v1/admin/clients/{client.record.id}/customers/{CUSTOMER}"

    response = await service.http.delete(path)
    assert response.status == 401
    response = await service.http.delete(
        f"/v1/admin/clients/cli_unknown/customers/{CUSTOMER}",
        headers=service.admin_headers(),
    )
    assert response.status == 404
    assert response.content_type == "application/problem+json"
    for invalid in ("a" * 65, "cust%20one", "cust%2Fone"):
        response = await service.http.delete(
            f"/v1/admin/clients/{client.record.id}/customers/{invalid}",
            headers=service.admin_headers(),
        )
        assert response.status == 422, invalid
        assert "customer_id" in (await response.json())["errors"]
    assert count_rows(service.config, "erasures") == 0


async def test_cli_erase_unknown_client_changes_nothing(
    service: Service, make_receiver: Any, tmp_path: Path
) -> None:
    client = await service.new_client()
    receiver = await make_receiver(secret=client.signing_secret)
    await service.submit_pending(client, CUSTOMER, receiver.url())

    completed = await _run_cli(
        "customers",
        "erase",
        CUSTOMER,
        "--client",
        "cli_unknown",
        "--config",
        str(_write_config(tmp_path, service.config)),
        cwd=tmp_path,
    )

    assert completed.returncode == 1
    assert "no client 'cli_unknown'" in completed.stderr
    assert completed.stdout == ""
    assert count_rows(service.config, "erasures") == 0
    assert await service.state.store.has_requested_customer(client.record.id, CUSTOMER)


async def test_cli_erase_invalid_customer_exits_2(
    service: Service, tmp_path: Path
) -> None:
    client = await service.new_client()

    completed = await _run_cli(
        "customers",
        "erase",
        "not valid",
        "--client",
        client.record.id,
        "--config",
        str(_write_config(tmp_path, service.config)),
        cwd=tmp_path,
    )

    assert completed.returncode == 2
    assert "CUSTOMER_ID" in completed.stderr
    assert count_rows(service.config, "erasures") == 0


def test_debug_logging_leaves_out_sql_parameters() -> None:
    """aiosqlite's DEBUG lines, which carry SQL parameters, stay out of the log."""
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    try:
        configure_logging("text", "DEBUG", stream)
        logging.getLogger("aiosqlite").debug("executing %s", CUSTOMER)
        logging.getLogger("webhooks.test").debug("still at DEBUG")
    finally:
        for handler in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
            root.removeHandler(handler)
        root.setLevel(level)

    assert CUSTOMER not in stream.getvalue()
    assert "still at DEBUG" in stream.getvalue()


def test_customer_hash_is_keyed_hmac() -> None:
    master_key = credentials.decode_master_key(credentials.new_master_key())
    other_key = credentials.decode_master_key(credentials.new_master_key())

    hashed = customer_hash(master_key, "cli_a", CUSTOMER)

    derived = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"customer-erasure"
    ).derive(master_key)
    expected = hmac.new(derived, f"cli_a\0{CUSTOMER}".encode(), hashlib.sha256)
    assert hashed == expected.hexdigest()
    assert hashed == customer_hash(master_key, "cli_a", CUSTOMER)
    assert hashed != customer_hash(master_key, "cli_b", CUSTOMER)
    assert hashed != customer_hash(other_key, "cli_a", CUSTOMER)
    # The separator keeps a shifted boundary between the IDs apart.
    assert customer_hash(master_key, "cli_a", "bc") != customer_hash(
        master_key, "cli_ab", "c"
    )


async def _columns_containing(config: Config, needle: str) -> list[str]:
    """Return ``table.column`` of each column with a value containing ``needle``."""
    if config.store.url.startswith("postgresql:"):
        return await _postgres_columns_containing(config.store.url, needle)
    return _sqlite_columns_containing(path_from_url(config.store.url), needle)


def _sqlite_columns_containing(path: Path, needle: str) -> list[str]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    found = []
    try:
        tables = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        for (table,) in tables.fetchall():
            for column in db.execute(f'PRAGMA table_info("{table}")').fetchall():
                name = column[1]
                count = db.execute(
                    f'SELECT COUNT(*) FROM "{table}"'
                    f' WHERE instr(CAST("{name}" AS BLOB), CAST(? AS BLOB)) > 0',
                    (needle,),
                ).fetchone()[0]
                if count:
                    found.append(f"{table}.{name}")
    finally:
        db.close()
    return found


async def _postgres_columns_containing(url: str, needle: str) -> list[str]:
    connection = await asyncpg.connect(url)
    found = []
    try:
        columns = await connection.fetch(
            """SELECT table_name, column_name, data_type
               FROM information_schema.columns
               WHERE table_schema = 'public'
                 AND data_type IN
                     ('text', 'character varying', 'bytea', 'json', 'jsonb')"""
        )
        assert columns, "no text columns found"
        for column in columns:
            table, name = column["table_name"], column["column_name"]
            if column["data_type"] == "bytea":
                condition = f"position(convert_to($1, 'UTF8') in \"{name}\") > 0"
            else:
                condition = f'strpos("{name}"::text, $1) > 0'
            count = await connection.fetchval(
                f'SELECT COUNT(*) FROM "{table}" WHERE {condition}', needle
            )
            if count:
                found.append(f"{table}.{name}")
    finally:
        await connection.close()
    return found


def _file_bytes(database: Path) -> bytes:
    parts = [database, database.with_name(database.name + "-wal")]
    return b"".join(part.read_bytes() for part in parts if part.exists())


def _write_config(tmp_path: Path, config: Config) -> Path:
    """Write a config file for the CLI on the service's store, with its secrets."""
    path = tmp_path / "erase.toml"
    path.write_text(
        f'[store]\nurl = "{config.store.url}"\nsynchronous = "normal"\n'
        f'[backend]\ntoken = "{config.backend.token}"\n'
        f'signing_secret = "{config.backend.signing_secret}"\n'
        f'[admin]\ntoken = "{config.admin.token}"\n'
        f'[security]\nmaster_key = "{config.security.master_key}"\n'
    )
    return path


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str


async def _run_cli(*args: str, cwd: Path) -> Completed:
    """Run ``python -m webhooks ARGS`` without blocking the service under test.

    The service keeps running on the test's event loop meanwhile, so it
    can commit what it has started while the CLI waits for the store.
    """
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("WEBHOOKS_")
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "webhooks",
        *args,
        cwd=cwd,
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT_S)
    assert process.returncode is not None
    return Completed(process.returncode, stdout.decode(), stderr.decode())
