"""config.example.toml loads, documents every key and shows the defaults."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest
from marshmallow import fields

from webhooks import credentials
from webhooks.config import (
    ENVIRONMENT_SECRETS,
    Config,
    ConfigError,
    DeliveryConfig,
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


def _values_and_defaults(config: Config) -> list[tuple[str, str, object, object]]:
    """Return each loaded setting that has a default, beside that default."""
    found = []
    for section_field in dataclasses.fields(config):
        section = getattr(config, section_field.name)
        if not dataclasses.is_dataclass(section):
            continue
        for setting in dataclasses.fields(section):
            if setting.default is not dataclasses.MISSING:
                value = getattr(section, setting.name)
                found.append((section_field.name, setting.name, value, setting.default))
    return found


def test_example_with_environment_has_defaults() -> None:
    secrets = _secrets()
    environ = {variable: secrets[key] for key, variable in ENVIRONMENT_SECRETS.items()}

    config = load_config(EXAMPLE, environ=environ)

    for name, key, value, default in _values_and_defaults(config):
        assert value == default, f"{name}.{key} is {value!r}, default {default!r}"
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
