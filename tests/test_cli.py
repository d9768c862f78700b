"""The ``webhooks`` command in a subprocess, on a config and SQLite file in tmp_path."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ADMIN_TOKEN, BACKEND_TOKEN
from webhooks import credentials
from webhooks.cli import build_parser
from webhooks.config import load_config

TIMEOUT_S = 30


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``python -m webhooks ARGS`` without this process's WEBHOOKS_* variables."""
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("WEBHOOKS_")
    }
    return subprocess.run(
        [sys.executable, "-m", "webhooks", *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def write_config(tmp_path: Path) -> Path:
    database = tmp_path / "webhooks.sqlite3"
    path = tmp_path / "config.toml"
    path.write_text(
        f"""[store]
url = "sqlite:///{database}"
synchronous = "normal"

[backend]
token = "{BACKEND_TOKEN}"
signing_secret = "{credentials.new_signing_secret()}"

[admin]
token = "{ADMIN_TOKEN}"

[security]
master_key = "{credentials.new_master_key()}"
"""
    )
    return path


def database_bytes(tmp_path: Path) -> bytes:
    """Return the SQLite file and its write-ahead log, as stored on disk."""
    parts = [tmp_path / "webhooks.sqlite3", tmp_path / "webhooks.sqlite3-wal"]
    return b"".join(part.read_bytes() for part in parts if part.exists())


def test_clients_create_prints_credentials(tmp_path: Path) -> None:
    config_path = write_config(tmp_path)

    completed = run_cli(
        "clients", "create", "Acme Lending", "--config", str(config_path), cwd=tmp_path
    )

    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert len(lines) == 1
    created = json.loads(lines[0])
    assert created["client_id"].startswith("cli_")
    assert created["api_key"].startswith(credentials.API_KEY_PREFIX)
    assert created["signing_secret"].startswith(credentials.SIGNING_SECRET_PREFIX)
    assert created["name"] == "Acme Lending"
    assert created["api_key"] not in completed.stderr
    assert created["signing_secret"] not in completed.stderr


def test_clients_create_stores_key_hash(tmp_path: Path) -> None:
    config_path = write_config(tmp_path)
    completed = run_cli(
        "clients", "create", "Acme", "--config", str(config_path), cwd=tmp_path
    )
    assert completed.returncode == 0, completed.stderr
    created = json.loads(completed.stdout)

    db = sqlite3.connect(tmp_path / "webhooks.sqlite3")
    try:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT * FROM clients").fetchall()
    finally:
        db.close()

    assert len(rows) == 1
    row = dict(rows[0])
    assert row["id"] == created["client_id"]
    key_hash = hashlib.sha256(created["api_key"].encode()).hexdigest()
    assert row["api_key_hash"] == key_hash
    row_text = repr(row)
    assert created["api_key"] not in row_text
    assert created["signing_secret"] not in row_text
    on_disk = database_bytes(tmp_path)
    assert created["api_key"].encode() not in on_disk
    assert created["signing_secret"].encode() not in on_disk


async def test_created_client_can_authenticate(tmp_path: Path, make_service) -> None:
    config_path = write_config(tmp_path)
    completed = run_cli(
        "clients", "create", "Acme", "--config", str(config_path), cwd=tmp_path
    )
    assert completed.returncode == 0, completed.stderr
    created = json.loads(completed.stdout)
    service = await make_service(load_config(config_path, environ={}))

    known = await service.http.get(
        "/v1/score-requests/req_unknown",
        headers={"Authorization": f"Bearer {created['api_key']}"},
    )
    wrong = await service.http.get(
        "/v1/score-requests/req_unknown",
        headers={"Authorization": f"Bearer {created['api_key']}x"},
    )

    assert known.status == 404
    assert wrong.status == 401


def test_clients_create_rejects_invalid_config(tmp_path: Path) -> None:
    config_path = write_config(tmp_path)
    config_path.write_text(config_path.read_text() + '\n[server]\nport = "80"\n')

    completed = run_cli(
        "clients", "create", "Acme", "--config", str(config_path), cwd=tmp_path
    )

    assert completed.returncode == 2
    assert "server.port" in completed.stderr
    assert completed.stdout == ""
    assert not (tmp_path / "webhooks.sqlite3").exists()


def test_clients_create_rejects_blank_name(tmp_path: Path) -> None:
    config_path = write_config(tmp_path)

    completed = run_cli(
        "clients", "create", "  ", "--config", str(config_path), cwd=tmp_path
    )

    assert completed.returncode == 2
    assert "NAME" in completed.stderr
    assert completed.stdout == ""


def command_parser(command: tuple[str, ...]) -> argparse.ArgumentParser:
    """Return the parser of a subcommand. argparse has no public API for this lookup."""
    parser = build_parser()
    for name in command:
        subparsers = next(
            action
            for action in parser._actions
            if isinstance(action, argparse._SubParsersAction)
        )
        parser = subparsers.choices[name]
    return parser


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (("serve",), ["--config", "PATH", "TOML"]),
        (
            ("clients", "create"),
            [
                "NAME",
                "--config",
                "PATH",
                "TOML",
                "client_id",
                "api_key",
                "signing_secret",
            ],
        ),
        ((), ["--log-level", "serve", "clients"]),
    ],
    ids=["serve", "clients-create", "top-level"],
)
def test_help_mentions_every_option(
    tmp_path: Path, command: tuple[str, ...], expected: list[str]
) -> None:
    # Options added later are found in the parser, so they are checked too.
    for action in command_parser(command)._actions:
        if not isinstance(action, argparse._SubParsersAction):
            expected += action.option_strings or [action.metavar or action.dest]

    completed = run_cli(*command, "--help", cwd=tmp_path)

    assert completed.returncode == 0, completed.stderr
    for text in expected:
        assert text in completed.stdout, text


@pytest.mark.parametrize(
    "command",
    [("serve",), ("clients", "create"), ()],
    ids=["serve", "clients-create", "top-level"],
)
def test_every_option_has_help_text(command: tuple[str, ...]) -> None:
    for action in command_parser(command)._actions:
        # A list of subcommands is described by each subcommand's own help.
        if not isinstance(action, argparse._SubParsersAction):
            assert action.help, action.dest
