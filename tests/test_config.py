"""Loading of the TOML configuration, secrets from the environment and the default."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path

import pytest

from webhooks import credentials
from webhooks.config import (
    ENVIRONMENT_SECRETS,
    ConfigError,
    embedded_config,
    load_config,
)

SECRETS = {
    ("backend", "token"): "backend-token-0123456789abcdef",
    ("backend", "signing_secret"): credentials.new_signing_secret(),
    ("admin", "token"): "admin-token-0123456789abcdef",
    ("security", "master_key"): credentials.new_master_key(),
}


def write_config(
    tmp_path: Path,
    extra: str = "",
    omit: tuple[str, str] | None = None,
    secrets: dict[tuple[str, str], str] = SECRETS,
) -> Path:
    """Write a config file with ``secrets`` except ``omit``, then the TOML ``extra``."""
    sections: dict[str, list[str]] = {}
    for (section, key), value in secrets.items():
        if (section, key) != omit:
            sections.setdefault(section, []).append(f'{key} = "{value}"')
    lines = []
    for section, entries in sections.items():
        lines.append(f"[{section}]")
        lines.extend(entries)
    lines.append(extra)
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_valid_file_loads_with_defaults(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, "[server]\nport = 9090\n[delivery]\nretry_schedule = [1, 2.5]"
    )

    config = load_config(path, environ={})

    assert config.server.port == 9090
    assert config.server.host == "127.0.0.1"
    assert config.delivery.retry_schedule_s == (1.0, 2.5)
    assert config.backend.token == SECRETS[("backend", "token")]
    assert config.admin.token == SECRETS[("admin", "token")]
    assert config.source == str(path)


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("[server]\nprot = 8080", "server.prot"),
        ("[delivery]\nretry_schedule_s = [1]", "delivery.retry_schedule_s"),
        ("[storage]\nurl = 'sqlite:///x'", "storage"),
        ("debug = true", "debug"),
    ],
    ids=[
        "misspelled-key",
        "dataclass-field-name",
        "unknown-section",
        "unknown-top-level",
    ],
)
def test_unknown_key_raises_config_error(tmp_path: Path, extra: str, key: str) -> None:
    path = write_config(tmp_path)
    # A top-level key must come first, or it would belong to the last table.
    path.write_text(f"{extra}\n{path.read_text()}")

    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})

    message = str(caught.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(f"{key}:")
    assert "unknown" in message


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ('[server]\nport = "8080"', "server.port"),
        ("[server]\nmax_body_bytes = 1.5", "server.max_body_bytes"),
        ('[delivery]\nallow_http = "yes"', "delivery.allow_http"),
        ('[delivery]\nretry_schedule = "5, 300"', "delivery.retry_schedule"),
        ("[delivery]\njitter = 2", "delivery.jitter"),
        ("[scores]\nmin = 300.5", "scores.min"),
        ("[scores]\nmin = 900", "scores.max"),
        ("[server]\nport = 70000", "server.port"),
        ('[store]\nurl = "mysql://db/scores"', "store.url"),
    ],
    ids=[
        "port-string",
        "body-limit-float",
        "bool-string",
        "schedule-string",
        "jitter-above-1",
        "score-min-float",
        "score-min-above-max",
        "port-out-of-range",
        "unsupported-store",
    ],
)
def test_wrong_value_raises_config_error(tmp_path: Path, extra: str, key: str) -> None:
    path = write_config(tmp_path, extra)

    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})

    message = str(caught.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(f"{key}:")


@pytest.mark.parametrize("missing", list(ENVIRONMENT_SECRETS), ids=".".join)
def test_missing_secret_raises_config_error(
    tmp_path: Path, missing: tuple[str, str]
) -> None:
    path = write_config(tmp_path, omit=missing)

    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})

    message = str(caught.value)
    section, key = missing
    assert len(message.splitlines()) == 1
    assert message.startswith(f"{section}.{key}:")
    assert "missing" in message
    assert ENVIRONMENT_SECRETS[missing] in message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (("backend", "token"), "short-token"),
        (("admin", "token"), "short-token"),
        (("backend", "signing_secret"), "not-a-whsec-secret"),
        (("security", "master_key"), "dG9vLXNob3J0LWtleQ=="),
    ],
    ids=[
        "short-backend-token",
        "short-admin-token",
        "bad-signing-secret",
        "short-master-key",
    ],
)
def test_invalid_secret_raises_config_error(
    tmp_path: Path, key: tuple[str, str], value: str
) -> None:
    path = write_config(tmp_path, secrets={**SECRETS, key: value})

    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})

    message = str(caught.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(f"{key[0]}.{key[1]}:")
    # A rejected secret may be a real one with a typo, so the message must not echo it.
    assert value not in message


def test_environment_fills_every_secret(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[server]\nport = 9090\n")
    environ = {variable: SECRETS[key] for key, variable in ENVIRONMENT_SECRETS.items()}

    config = load_config(path, environ=environ)

    assert config.backend.token == SECRETS[("backend", "token")]
    assert config.backend.signing_secret == SECRETS[("backend", "signing_secret")]
    assert config.admin.token == SECRETS[("admin", "token")]
    assert config.security.master_key == SECRETS[("security", "master_key")]


def test_environment_wins_over_file(tmp_path: Path) -> None:
    path = write_config(tmp_path)

    config = load_config(
        path, environ={"WEBHOOKS_ADMIN_TOKEN": "admin-from-environment-0123"}
    )

    assert config.admin.token == "admin-from-environment-0123"
    assert config.backend.token == SECRETS[("backend", "token")]


def test_process_environment_is_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(tmp_path, omit=("admin", "token"))
    monkeypatch.setenv("WEBHOOKS_ADMIN_TOKEN", "admin-from-environment-0123")

    config = load_config(path)

    assert config.admin.token == "admin-from-environment-0123"


def test_missing_file_raises_config_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"

    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})

    assert str(path) in str(caught.value)
    assert "not found" in str(caught.value)


def test_invalid_toml_raises_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[server\nport = 1\n")

    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})

    assert "not valid TOML" in str(caught.value)


def test_embedded_default_creates_private_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    secrets_file = tmp_path / "var" / "secrets.toml"

    first = embedded_config(environ={})
    mode = stat.S_IMODE(secrets_file.stat().st_mode)
    stored = tomllib.loads(secrets_file.read_text())
    second = embedded_config(environ={})

    assert secrets_file.is_file()
    assert mode == 0o600
    assert stored["admin"]["token"] == first.admin.token
    assert second.admin.token == first.admin.token
    assert second.backend.token == first.backend.token
    assert second.backend.signing_secret == first.backend.signing_secret
    assert second.security.master_key == first.security.master_key
    assert first.store.url == "sqlite:///var/webhooks.sqlite3"
    assert first.delivery.allow_http is True
    assert first.delivery.allow_private_networks is True


def test_embedded_default_takes_environment(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"

    config = embedded_config(
        data_dir, environ={"WEBHOOKS_ADMIN_TOKEN": "admin-from-environment-0123"}
    )

    assert config.admin.token == "admin-from-environment-0123"
    assert (data_dir / "secrets.toml").is_file()
    assert config.store.url == f"sqlite:///{data_dir / 'webhooks.sqlite3'}"
