"""The report of ``webhooks check-config``: every setting as TOML, secrets hidden."""

from __future__ import annotations

import json
import re
from typing import Any

from yarl import URL

from webhooks.config import ENVIRONMENT_SECRETS, Config, toml_sections

HIDDEN = "<hidden>"
# Key names that mark a value as secret, also in sections added later.
_SECRET_NAME = re.compile(r"token|secret|password|(^|_)key($|_)")


def _is_secret(section: str, key: str) -> bool:
    return (section, key) in ENVIRONMENT_SECRETS or bool(_SECRET_NAME.search(key))


def _hide_password(url: str) -> str:
    """Return ``url`` with the password of its user information replaced."""
    try:
        parsed = URL(url)
    except ValueError:
        return url
    if parsed.password is None:
        return url
    return str(parsed.with_password("***"))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def settings_lines(config: Config) -> list[str]:
    """Return every setting as TOML lines, with secrets shown as ``<hidden>``."""
    lines: list[str] = []
    for section, values in toml_sections(config).items():
        if lines:
            lines.append("")
        lines.append(f"[{section}]")
        for key, value in values.items():
            if _is_secret(section, key):
                shown = json.dumps(HIDDEN)
            elif (section, key) == ("store", "url"):
                shown = _toml_value(_hide_password(value))
            else:
                shown = _toml_value(value)
            lines.append(f"{key} = {shown}")
    return lines


def summary_line(config: Config) -> str:
    store_kind = config.store.url.split(":", 1)[0]
    return (
        f"would run: store {store_kind}, listening on "
        f"{config.server.host}:{config.server.port}, logs as "
        f"{config.logging.format} from {config.logging.level}"
    )


def warnings(config: Config) -> list[str]:
    """Return the settings that are unsafe outside development and tests."""
    found = []
    if config.delivery.allow_http:
        found.append("delivery.allow_http is true: webhooks may go to plain http URLs")
    if config.delivery.allow_private_networks:
        found.append(
            "delivery.allow_private_networks is true: callback URLs may point "
            "into private and loopback networks"
        )
    return found
