"""config.example.toml loads, documents every key and shows the defaults."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from marshmallow import fields

from webhooks import credentials
from webhooks.config import (
    ENVIRONMENT_SECRETS,
    ConfigError,
    DeliveryConfig,
    ScoresConfig,
    ServerConfig,
    StoreConfig,
    _ConfigSchema,
    load_config,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"

# A commented-out secret such as: # token = "<output of new_token()>"
PLACEHOLDER = re.compile(r'^# (\w+) = "<output of \w+\(\)>"$', re.MULTILINE)


def _secrets() -> dict[tuple[str, str], str]:
    return {
        ("backend", "token"): credentials.new_token(),
        ("backend", "signing_secret"): credentials.new_signing_secret(),
        ("admin", "token"): credentials.new_token(),
        ("security", "master_key"): credentials.new_master_key(),
    }


def _filled_example(tmp_path: Path, secrets: dict[tuple[str, str], str]) -> Path:
    """Write the example with every placeholder replaced by a real secret."""
    section = None
    lines = []
    for line in EXAMPLE.read_text().splitlines():
        header = re.match(r"^\[(\w+)\]$", line)
        if header:
            section = header.group(1)
        placeholder = PLACEHOLDER.match(line)
        if placeholder:
            key = placeholder.group(1)
            line = f'{key} = "{secrets[(section, key)]}"'
        lines.append(line)
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_example_with_environment_has_defaults() -> None:
    secrets = _secrets()
    environ = {variable: secrets[key] for key, variable in ENVIRONMENT_SECRETS.items()}

    config = load_config(EXAMPLE, environ=environ)

    assert config.server == ServerConfig()
    assert config.store == StoreConfig()
    assert config.delivery == DeliveryConfig()
    assert config.scores == ScoresConfig()
    assert config.backend.url == "http://127.0.0.1:9000/score-requests"
    assert config.backend.token == secrets[("backend", "token")]
    assert config.backend.signing_secret == secrets[("backend", "signing_secret")]
    assert config.admin.token == secrets[("admin", "token")]
    assert config.security.master_key == secrets[("security", "master_key")]


def test_example_with_filled_placeholders_loads(tmp_path: Path) -> None:
    secrets = _secrets()

    config = load_config(_filled_example(tmp_path, secrets), environ={})

    assert config.backend.token == secrets[("backend", "token")]
    assert config.backend.signing_secret == secrets[("backend", "signing_secret")]
    assert config.admin.token == secrets[("admin", "token")]
    assert config.security.master_key == secrets[("security", "master_key")]
    assert config.delivery == DeliveryConfig()


def test_example_without_secrets_names_each() -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(EXAMPLE, environ={})

    message = str(raised.value)
    for (section, key), variable in ENVIRONMENT_SECRETS.items():
        assert f"{section}.{key}: missing" in message
        assert variable in message


def test_example_lists_every_key(tmp_path: Path) -> None:
    raw = tomllib.loads(_filled_example(tmp_path, _secrets()).read_text())

    for section, nested in _ConfigSchema().fields.items():
        assert isinstance(nested, fields.Nested)
        assert section in raw, f"section [{section}] is missing"
        for key in nested.schema.fields:
            assert key in raw[section], f"{section}.{key} is missing"
