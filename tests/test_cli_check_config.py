"""``webhooks check-config`` in a subprocess, on config files in tmp_path."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from webhooks import credentials

TIMEOUT_S = 30


def run_check(
    *args: str, cwd: Path, **environ: str
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m webhooks check-config ARGS`` with only the given WEBHOOKS_*."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WEBHOOKS_")}
    return subprocess.run(
        [sys.executable, "-m", "webhooks", "check-config", *args],
        cwd=cwd,
        env={**clean, **environ},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def _secrets() -> dict[str, str]:
    return {
        "backend_token": credentials.new_token(),
        "signing_secret": credentials.new_signing_secret(),
        "admin_token": credentials.new_token(),
        "master_key": credentials.new_master_key(),
    }


def write_config(tmp_path: Path, secrets: dict[str, str], extra: str = "") -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f"""[store]
url = "sqlite:///{tmp_path / "webhooks.sqlite3"}"

[backend]
token = "{secrets["backend_token"]}"
signing_secret = "{secrets["signing_secret"]}"

[admin]
token = "{secrets["admin_token"]}"

[security]
master_key = "{secrets["master_key"]}"
{extra}"""
    )
    return path


def _settings(stdout: str) -> dict[str, dict[str, object]]:
    """Parse the TOML part of the output, which starts at the first section."""
    return tomllib.loads(stdout[stdout.index("[server]") :])


def test_valid_config_prints_settings(tmp_path: Path) -> None:
    secrets = _secrets()
    path = write_config(tmp_path, secrets, '\n[logging]\nformat = "json"\n')

    completed = run_check("--config", str(path), cwd=tmp_path)

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith(f"{path}: valid\n")
    assert "store sqlite, listening on 127.0.0.1:8080" in completed.stdout
    settings = _settings(completed.stdout)
    assert settings["logging"] == {"format": "json", "level": "INFO"}
    assert settings["delivery"]["retry_schedule"] == [
        5,
        300,
        1800,
        7200,
        18000,
        36000,
        36000,
    ]
    assert settings["server"]["port"] == 8080


def test_secrets_never_printed(tmp_path: Path) -> None:
    secrets = _secrets()
    path = write_config(tmp_path, secrets)

    completed = run_check("--config", str(path), cwd=tmp_path)

    assert completed.returncode == 0, completed.stderr
    output = completed.stdout + completed.stderr
    for name, value in secrets.items():
        assert value not in output, name
    settings = _settings(completed.stdout)
    assert settings["backend"]["token"] == "<hidden>"
    assert settings["backend"]["signing_secret"] == "<hidden>"
    assert settings["admin"]["token"] == "<hidden>"
    assert settings["security"]["master_key"] == "<hidden>"


def test_secrets_from_environment_hidden(tmp_path: Path) -> None:
    secrets = _secrets()
    path = write_config(tmp_path, secrets)
    admin_token = credentials.new_token()

    completed = run_check(
        "--config", str(path), cwd=tmp_path, WEBHOOKS_ADMIN_TOKEN=admin_token
    )

    assert completed.returncode == 0, completed.stderr
    assert admin_token not in completed.stdout + completed.stderr


def test_store_password_hidden(tmp_path: Path) -> None:
    secrets = _secrets()
    path = write_config(tmp_path, secrets)
    text = path.read_text().replace(
        f"sqlite:///{tmp_path / 'webhooks.sqlite3'}",
        "postgresql://scores:pg-password-1234@127.0.0.1:5432/scores",
    )
    path.write_text(text)

    completed = run_check("--config", str(path), cwd=tmp_path)

    assert completed.returncode == 0, completed.stderr
    assert "pg-password-1234" not in completed.stdout + completed.stderr
    settings = _settings(completed.stdout)
    assert settings["store"]["url"] == "postgresql://scores:***@127.0.0.1:5432/scores"


def test_invalid_config_lists_each_problem(tmp_path: Path) -> None:
    secrets = _secrets()
    extra = '\n[server]\nport = "eighty"\n\n[logging]\nformat = "xml"\nlevel = "LOUD"\n'
    path = write_config(tmp_path, secrets, extra)

    completed = run_check("--config", str(path), cwd=tmp_path)

    assert completed.returncode == 2
    assert completed.stdout == ""
    problems = completed.stderr.strip().splitlines()
    assert len(problems) == 3, problems
    assert all(line.startswith(f"{path}: ") for line in problems)
    assert any("server.port" in line for line in problems)
    assert any("logging.format" in line for line in problems)
    assert any("logging.level" in line for line in problems)


def test_missing_secrets_named(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[server]\nport = 8081\n")

    completed = run_check("--config", str(path), cwd=tmp_path)

    assert completed.returncode == 2
    problems = completed.stderr.strip().splitlines()
    assert len(problems) == 4, problems
    assert any("WEBHOOKS_MASTER_KEY" in line for line in problems)


def test_missing_file_reported(tmp_path: Path) -> None:
    completed = run_check("--config", str(tmp_path / "absent.toml"), cwd=tmp_path)

    assert completed.returncode == 2
    assert "configuration file not found" in completed.stderr


def test_embedded_default_writes_nothing(tmp_path: Path) -> None:
    completed = run_check(cwd=tmp_path)

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("embedded default (var/): valid\n")
    assert "serve generates var/secrets.toml" in completed.stdout
    assert list(tmp_path.iterdir()) == []
    assert "warning: delivery.allow_http is true" in completed.stderr
