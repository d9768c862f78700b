"""scripts/replay.py run as a subprocess against a real SQLite file.

Deliveries are seeded through the store interface and driven to their final
status with a claim and a recorded outcome, as the dispatcher would. The
end-to-end test replays a delivery that the running app gave up on.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from conftest import Receiver, make_config, wait_for
from store import Store, open_store
from store.records import (
    AttemptOutcome,
    AttemptRecord,
    DeliveryStatus,
    NewDelivery,
)
from webhooks import ids
from webhooks.clients import create_client
from webhooks.config import Config
from webhooks.credentials import SecretBox
from webhooks.events import SCORE_FAILED, SCORE_READY
from webhooks.timefmt import format_time, utc_now

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "replay.py"
SEED_OWNER = "node_seed"
SCRIPT_TIMEOUT_S = 60.0


# Helpers


@dataclass
class ScriptRun:
    returncode: int
    stdout: str
    stderr: str


async def run_replay(*args: str, cwd: Path) -> ScriptRun:
    """Run the script with these arguments; standard input is not a terminal."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        *args,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), SCRIPT_TIMEOUT_S)
    assert process.returncode is not None
    return ScriptRun(process.returncode, stdout.decode(), stderr.decode())


def secrets_toml(config: Config) -> str:
    """Return the secret sections of ``config`` as TOML."""
    return (
        "[backend]\n"
        f"url = {json.dumps(config.backend.url)}\n"
        f"token = {json.dumps(config.backend.token)}\n"
        f"signing_secret = {json.dumps(config.backend.signing_secret)}\n"
        "[admin]\n"
        f"token = {json.dumps(config.admin.token)}\n"
        "[security]\n"
        f"master_key = {json.dumps(config.security.master_key)}\n"
    )


def write_config_file(config: Config, path: Path) -> Path:
    store_section = (
        "[store]\n"
        f"url = {json.dumps(config.store.url)}\n"
        f"synchronous = {json.dumps(config.store.synchronous)}\n"
    )
    path.write_text(store_section + secrets_toml(config))
    return path


def database_path(config: Config) -> Path:
    return Path(config.store.url.removeprefix("sqlite:///"))


def snapshot(config: Config) -> dict[str, list[tuple[Any, ...]]]:
    """Return every row of the deliveries and attempts tables, in a fixed order."""
    uri = f"file:{database_path(config)}?mode=ro"
    with sqlite3.connect(uri, uri=True) as db:
        return {
            "deliveries": db.execute("SELECT * FROM deliveries ORDER BY id").fetchall(),
            "attempts": db.execute(
                "SELECT * FROM attempts ORDER BY delivery_id, number"
            ).fetchall(),
        }


async def seed_delivery(
    store: Store,
    client_id: str,
    status: DeliveryStatus,
    *,
    event_type: str = SCORE_READY,
    status_code: int | None = 500,
    error: str | None = None,
) -> str:
    """Insert a delivery and bring it to ``status`` with one recorded attempt.

    A pending delivery gets no attempt and is due in a day, so that later
    claims in the same test leave it alone.
    """
    delivery_id = ids.delivery_id()
    now = utc_now()
    due_at = now + timedelta(days=1) if status is DeliveryStatus.PENDING else now
    async with store.transaction() as transaction:
        await transaction.insert_delivery(
            NewDelivery(
                id=delivery_id,
                message_id=ids.message_id(),
                client_id=client_id,
                correlation_id=ids.correlation_id(),
                event_type=event_type,
                url="http://127.0.0.1:9/hooks",
                host="127.0.0.1:9",
                payload=b'{"type":"%s"}' % event_type.encode(),
                next_attempt_at=due_at,
            )
        )
    if status is DeliveryStatus.PENDING:
        return delivery_id

    claimed = await store.claim_due_deliveries(
        owner=SEED_OWNER,
        now=utc_now(),
        lease_until=utc_now() + timedelta(minutes=1),
        limit=10,
        per_host_limit=10,
        host_limits={},
    )
    assert [delivery.id for delivery in claimed] == [delivery_id]
    if status is DeliveryStatus.DELIVERED:
        status_code, error = 200, None
    attempt = AttemptRecord(
        delivery_id=delivery_id,
        number=1,
        started_at=now,
        duration_ms=3.0,
        status_code=status_code,
        error=error,
        response_excerpt="",
    )
    await store.record_outcomes(
        SEED_OWNER, [AttemptOutcome(attempt=attempt, status=status)]
    )
    return delivery_id


async def status_of(store: Store, delivery_id: str) -> DeliveryStatus:
    delivery = await store.get_delivery(delivery_id)
    assert delivery is not None, f"{delivery_id} not found"
    return delivery.status


async def pause() -> None:
    """Let the clock move on, so that creation times fall on either side."""
    await asyncio.sleep(0.02)


def rfc3339(moment: Any) -> str:
    """Format with microseconds, finer than format_time, for window edges."""
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def load_script_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("replay_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses looks up the module by name to resolve string annotations.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# Fixtures


@dataclass
class Seeded:
    config: Config
    config_path: Path
    store: Store
    client_id: str
    workdir: Path

    async def run(self, *args: str) -> ScriptRun:
        return await run_replay(
            "--config", str(self.config_path), *args, cwd=self.workdir
        )


@pytest.fixture
async def seeded(tmp_path: Path) -> AsyncIterator[Seeded]:
    """A store file with one client, a config file naming it, and the store open."""
    config = make_config(tmp_path)
    config_path = write_config_file(config, tmp_path / "config.toml")
    store = await open_store(config.store.url, synchronous=config.store.synchronous)
    client = await create_client(store, SecretBox(config.master_key), "client")
    workdir = tmp_path / "work"
    workdir.mkdir()
    try:
        yield Seeded(config, config_path, store, client.record.id, workdir)
    finally:
        await store.close()


# Selection and dry run


async def test_dry_run_changes_nothing(seeded: Seeded) -> None:
    failed = await seed_delivery(seeded.store, seeded.client_id, DeliveryStatus.FAILED)
    unreachable = await seed_delivery(
        seeded.store,
        seeded.client_id,
        DeliveryStatus.FAILED,
        event_type=SCORE_FAILED,
        status_code=None,
        error="connection refused",
    )
    delivered = await seed_delivery(
        seeded.store, seeded.client_id, DeliveryStatus.DELIVERED
    )
    before = snapshot(seeded.config)

    run = await seeded.run("--dry-run")

    assert run.returncode == 0, run.stderr
    assert snapshot(seeded.config) == before
    lines = run.stdout.splitlines()
    assert lines[0].startswith(failed)
    assert lines[1].startswith(unreachable)
    record = await seeded.store.get_delivery(failed)
    assert record is not None
    assert SCORE_READY in lines[0]
    assert seeded.client_id in lines[0]
    assert format_time(record.created_at) in lines[0]
    assert lines[0].endswith("HTTP 500")
    assert SCORE_FAILED in lines[1]
    assert lines[1].endswith("connection refused")
    assert delivered not in run.stdout
    assert "2 failed deliveries would be replayed" in run.stdout
    assert "nothing was changed" in run.stdout


async def test_replay_by_time_window(seeded: Seeded) -> None:
    store, client_id = seeded.store, seeded.client_id
    failed_before = await seed_delivery(store, client_id, DeliveryStatus.FAILED)
    await pause()
    since = utc_now()
    await pause()
    failed_inside = [
        await seed_delivery(store, client_id, DeliveryStatus.FAILED),
        await seed_delivery(
            store, client_id, DeliveryStatus.FAILED, event_type=SCORE_FAILED
        ),
    ]
    delivered_inside = await seed_delivery(store, client_id, DeliveryStatus.DELIVERED)
    await pause()
    until = utc_now()
    await pause()
    failed_after = await seed_delivery(store, client_id, DeliveryStatus.FAILED)
    untouched = [failed_before, delivered_inside, failed_after]
    rows_before = {d: await store.get_delivery(d) for d in untouched}

    run = await seeded.run(
        "--since", rfc3339(since), "--until", rfc3339(until), "--yes"
    )

    assert run.returncode == 0, run.stderr
    assert "replayed 2 deliveries, skipped 0" in run.stdout
    for delivery_id in failed_inside:
        assert await status_of(store, delivery_id) is DeliveryStatus.PENDING
    for delivery_id in untouched:
        assert await store.get_delivery(delivery_id) == rows_before[delivery_id]


async def test_filters_combine_with_and(seeded: Seeded) -> None:
    store = seeded.store
    other = await create_client(store, SecretBox(seeded.config.master_key), "other")
    other_id = other.record.id
    chosen = await seed_delivery(store, seeded.client_id, DeliveryStatus.FAILED)
    wrong_type = await seed_delivery(
        store, seeded.client_id, DeliveryStatus.FAILED, event_type=SCORE_FAILED
    )
    wrong_client = await seed_delivery(store, other_id, DeliveryStatus.FAILED)
    not_named = await seed_delivery(store, seeded.client_id, DeliveryStatus.FAILED)

    run = await seeded.run(
        "--client", seeded.client_id,
        "--event-type", SCORE_READY,
        "--delivery", chosen,
        "--delivery", wrong_type,
        "--delivery", wrong_client,
        "--yes",
    )  # fmt: skip

    assert run.returncode == 0, run.stderr
    assert "replayed 1 delivery, skipped 2" in run.stdout
    assert (
        f"skipped {wrong_type}: event type {SCORE_FAILED}, not --event-type"
        in run.stdout
    )
    assert f"skipped {wrong_client}: client {other_id}, not --client" in run.stdout
    assert await status_of(store, chosen) is DeliveryStatus.PENDING
    assert await status_of(store, wrong_type) is DeliveryStatus.FAILED
    assert await status_of(store, wrong_client) is DeliveryStatus.FAILED
    assert await status_of(store, not_named) is DeliveryStatus.FAILED


async def test_replay_keeps_message_id(seeded: Seeded) -> None:
    store, client_id = seeded.store, seeded.client_id
    failed = await seed_delivery(store, client_id, DeliveryStatus.FAILED)
    delivered = await seed_delivery(store, client_id, DeliveryStatus.DELIVERED)
    pending = await seed_delivery(store, client_id, DeliveryStatus.PENDING)
    before = await store.get_delivery(failed)
    assert before is not None
    started = utc_now()

    run = await seeded.run(
        "--delivery", failed, "--delivery", delivered, "--delivery", pending, "--yes"
    )

    assert run.returncode == 0, run.stderr
    assert "replayed 1 delivery, skipped 2" in run.stdout
    assert f"skipped {delivered}: status delivered" in run.stdout
    assert f"skipped {pending}: status pending" in run.stdout
    after = await store.get_delivery(failed)
    assert after is not None
    assert after.message_id == before.message_id
    assert after.status is DeliveryStatus.PENDING
    assert after.attempts_in_round == 0
    assert after.attempt_count == before.attempt_count
    assert after.next_attempt_at >= started
    assert after.lease_owner is None
    assert await status_of(store, delivered) is DeliveryStatus.DELIVERED


async def test_nothing_to_replay_exits_zero(seeded: Seeded) -> None:
    await seed_delivery(seeded.store, seeded.client_id, DeliveryStatus.DELIVERED)

    run = await seeded.run("--yes")

    assert run.returncode == 0, run.stderr
    assert "no failed deliveries match; nothing to replay" in run.stdout


async def test_progress_lines_without_terminal(seeded: Seeded) -> None:
    failed = [
        await seed_delivery(seeded.store, seeded.client_id, DeliveryStatus.FAILED)
        for _ in range(12)
    ]

    run = await seeded.run("--batch-size", "5", "--yes")

    assert run.returncode == 0, run.stderr
    assert "replayed 12 deliveries, skipped 0" in run.stdout
    progress = [
        line for line in run.stderr.splitlines() if line.startswith("replaying")
    ]
    assert progress[0] == "replaying: 5/12 deliveries (41%)"
    assert progress[-1] == "replaying: 12/12 deliveries (100%)"
    assert "\r" not in run.stderr
    for delivery_id in failed:
        assert await status_of(seeded.store, delivery_id) is DeliveryStatus.PENDING


async def test_batch_skips_delivery_changed_since_listing(seeded: Seeded) -> None:
    """A delivery that a replay through the API sent after the listing is skipped."""
    script = load_script_module()
    store = seeded.store
    changed = await seed_delivery(store, seeded.client_id, DeliveryStatus.FAILED)
    still_failed = await seed_delivery(store, seeded.client_id, DeliveryStatus.FAILED)
    report = script.ReplayReport()
    # The other replay makes ``changed`` due and the dispatcher delivers it.
    assert await store.replay_deliveries([changed], utc_now()) == [changed]
    claimed = await store.claim_due_deliveries(
        owner=SEED_OWNER,
        now=utc_now(),
        lease_until=utc_now() + timedelta(minutes=1),
        limit=10,
        per_host_limit=10,
        host_limits={},
    )
    assert [delivery.id for delivery in claimed] == [changed]
    attempt = AttemptRecord(
        delivery_id=changed,
        number=2,
        started_at=utc_now(),
        duration_ms=3.0,
        status_code=200,
        error=None,
        response_excerpt="",
    )
    await store.record_outcomes(
        SEED_OWNER, [AttemptOutcome(attempt=attempt, status=DeliveryStatus.DELIVERED)]
    )

    await script._replay_batch(store, [changed, still_failed], report)

    assert report.replayed == [still_failed]
    assert report.skipped == [(changed, "status delivered since it was listed")]
    assert await status_of(store, changed) is DeliveryStatus.DELIVERED


# Rejected arguments


async def test_unknown_delivery_changes_nothing(seeded: Seeded) -> None:
    failed = await seed_delivery(seeded.store, seeded.client_id, DeliveryStatus.FAILED)
    unknown = ids.delivery_id()
    before = snapshot(seeded.config)

    run = await seeded.run("--delivery", failed, "--delivery", unknown, "--yes")

    assert run.returncode == 2
    assert f"--delivery: not found in the store: {unknown}" in run.stderr
    assert "Nothing was replayed" in run.stderr
    assert snapshot(seeded.config) == before


async def test_unknown_client_rejected(seeded: Seeded) -> None:
    await seed_delivery(seeded.store, seeded.client_id, DeliveryStatus.FAILED)
    before = snapshot(seeded.config)

    run = await seeded.run("--client", "cli_missing", "--yes")

    assert run.returncode == 2
    assert "--client cli_missing: client not found" in run.stderr
    assert snapshot(seeded.config) == before


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--since", "yesterday"),
        ("--since", "2026-12-04T10:00:00"),
        ("--until", "2026-13-04T10:00:00Z"),
    ],
    ids=["words", "no-offset", "month-13"],
)
async def test_malformed_time_names_option(
    seeded: Seeded, option: str, value: str
) -> None:
    await seed_delivery(seeded.store, seeded.client_id, DeliveryStatus.FAILED)
    before = snapshot(seeded.config)

    run = await seeded.run(option, value, "--yes")

    assert run.returncode == 2
    assert f"argument {option}: invalid time {value!r}" in run.stderr
    assert snapshot(seeded.config) == before


async def test_since_after_until_rejected(seeded: Seeded) -> None:
    run = await seeded.run(
        "--since", "2026-12-04T12:00:00Z", "--until", "2026-12-04T10:00:00Z", "--yes"
    )

    assert run.returncode == 2
    assert "--since 2026-12-04T12:00:00.000Z must be earlier than --until" in run.stderr


async def test_unknown_event_type_rejected(seeded: Seeded) -> None:
    run = await seeded.run("--event-type", "score.lost", "--yes")

    assert run.returncode == 2
    assert "argument --event-type: invalid choice: 'score.lost'" in run.stderr


async def test_replay_without_yes_needs_terminal(seeded: Seeded) -> None:
    await seed_delivery(seeded.store, seeded.client_id, DeliveryStatus.FAILED)
    before = snapshot(seeded.config)

    run = await seeded.run()

    assert run.returncode == 2
    assert "1 failed delivery would be replayed; pass --yes" in run.stderr
    assert snapshot(seeded.config) == before


async def test_missing_config_file_rejected(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"

    run = await run_replay("--config", str(missing), "--dry-run", cwd=tmp_path)

    assert run.returncode == 2
    assert f"{missing}: configuration file not found" in run.stderr


async def test_invalid_config_file_rejected(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    path = tmp_path / "config.toml"
    path.write_text('[store]\nurl = "mysql://db"\n' + secrets_toml(config))

    run = await run_replay("--config", str(path), "--dry-run", cwd=tmp_path)

    assert run.returncode == 2
    assert "invalid configuration" in run.stderr
    assert "store.url" in run.stderr


async def test_config_naming_missing_store(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    path = write_config_file(config, tmp_path / "config.toml")

    run = await run_replay("--config", str(path), "--dry-run", cwd=tmp_path)

    assert run.returncode == 1
    assert f"no store found at {database_path(config)}" in run.stderr
    assert not database_path(config).exists()


async def test_config_naming_non_database_file(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    path = write_config_file(config, tmp_path / "config.toml")
    database_path(config).write_text("not a database\n")

    run = await run_replay("--config", str(path), "--dry-run", cwd=tmp_path)

    assert run.returncode == 1
    assert "the file is not a SQLite database" in run.stderr


async def test_embedded_default_without_secrets(tmp_path: Path) -> None:
    run = await run_replay("--dry-run", cwd=tmp_path)

    assert run.returncode == 1
    assert "no store found: var/secrets.toml does not exist" in run.stderr
    assert not (tmp_path / "var").exists()


async def test_embedded_default_uses_var_store(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    (data_dir / "secrets.toml").write_text(secrets_toml(config))
    store = await open_store(f"sqlite:///{data_dir / 'webhooks.sqlite3'}")
    try:
        client = await create_client(store, SecretBox(config.master_key), "client")
        failed = await seed_delivery(store, client.record.id, DeliveryStatus.FAILED)

        run = await run_replay("--yes", cwd=tmp_path)

        assert run.returncode == 0, run.stderr
        assert "replayed 1 delivery, skipped 0" in run.stdout
        assert await status_of(store, failed) is DeliveryStatus.PENDING
    finally:
        await store.close()


# End to end


@pytest.mark.slow
async def test_replay_reaches_receiver_of_running_app(
    make_service: Any, make_receiver: Any, tmp_path: Path
) -> None:
    backend: Receiver = await make_receiver(default_status=202)
    config = make_config(tmp_path, delivery={"retry_schedule_s": (0.1,)})
    config = replace(
        config, backend=replace(config.backend, url=backend.url("/score-requests"))
    )
    backend.secret = config.backend.signing_secret
    service = await make_service(config)
    config_path = write_config_file(config, tmp_path / "config.toml")
    client = await service.new_client()
    receiver: Receiver = await make_receiver(
        secret=client.signing_secret, default_status=500
    )

    response = await service.submit(
        client, customer_id="cust-7", callback_url=receiver.url()
    )
    assert response.status == 202
    correlation_id = (await response.json())["correlation_id"]
    await wait_for(lambda: len(backend.received) == 1)
    response = await service.post_result(correlation_id, outcome="ready", score=640)
    assert response.status == 200

    async def failed_deliveries() -> list[dict[str, Any]]:
        response = await service.http.get(
            "/v1/admin/deliveries",
            params={"status": "failed", "client_id": client.record.id},
            headers=service.admin_headers(),
        )
        return (await response.json())["deliveries"]

    async def has_failed() -> bool:
        return len(await failed_deliveries()) == 1

    await wait_for(has_failed)
    failed = (await failed_deliveries())[0]
    assert len(receiver.received) == 2
    receiver.default_status = 200

    run = await run_replay("--config", str(config_path), "--yes", cwd=tmp_path)

    assert run.returncode == 0, run.stderr
    assert "replayed 1 delivery, skipped 0" in run.stdout
    await wait_for(lambda: len(receiver.received) == 3)
    assert receiver.invalid == []
    message_ids = {webhook.headers["webhook-id"] for webhook in receiver.received}
    assert message_ids == {failed["message_id"]}
    replayed = receiver.received[2]
    assert abs(int(replayed.headers["webhook-timestamp"]) - time.time()) < 10
    assert replayed.event["data"]["correlation_id"] == correlation_id

    async def is_delivered() -> bool:
        response = await service.http.get(
            f"/v1/admin/deliveries/{failed['id']}", headers=service.admin_headers()
        )
        return (await response.json())["status"] == "delivered"

    await wait_for(is_delivered)
    response = await service.http.get(
        f"/v1/admin/deliveries/{failed['id']}", headers=service.admin_headers()
    )
    resource = await response.json()
    assert [attempt["status_code"] for attempt in resource["attempts"]] == [
        500,
        500,
        200,
    ]
