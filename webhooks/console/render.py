"""Jinja2 rendering of the console's pages, with autoescaping on everywhere."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import jinja2
from aiohttp import web

import webhooks
from webhooks.console.sessions import SIGNER, current_session

CONSOLE = "/console"  # path prefix of every console page


def _display_time(moment: datetime | None) -> str:
    if moment is None:
        return "–"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _machine_time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def mask_url(url: str) -> str:
    """Return the URL without user information and fragment, and with any
    query string replaced by ``***``, since receivers put tokens there."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    query = "***" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def pretty_json(payload: bytes | str | dict[str, Any] | None) -> str:
    """Return JSON indented for reading, or the text as it is if it is not JSON."""
    if payload is None:
        return ""
    if isinstance(payload, bytes):
        payload = payload.decode("utf-8", errors="replace")
    if isinstance(payload, str):
        try:
            payload = json.loads(payload)
        except ValueError:
            return payload
    return json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False)


def _static_url(name: str) -> str:
    # The version in the query string makes browsers fetch the new file
    # after an upgrade.
    return f"{CONSOLE}/static/{name}?v={webhooks.__version__}"


def create_environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("webhooks.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["display_time"] = _display_time
    environment.filters["machine_time"] = _machine_time
    environment.filters["mask_url"] = mask_url
    environment.filters["pretty_json"] = pretty_json
    environment.globals["static_url"] = _static_url
    environment.globals["console"] = CONSOLE
    environment.globals["version"] = webhooks.__version__
    return environment


ENVIRONMENT = web.AppKey("console_templates", jinja2.Environment)


def render(
    request: web.Request,
    template: str,
    context: dict[str, Any],
    *,
    status: int = 200,
) -> web.Response:
    """Render a page for the operator logged in, with the CSRF token its forms
    need and the name of the navigation ``section`` it belongs to."""
    signer = request.config_dict[SIGNER]
    session = current_session(request)
    page = request.config_dict[ENVIRONMENT].get_template(template)
    text = page.render(
        session=session,
        csrf_token=signer.csrf_token(session) if session is not None else "",
        **{"section": "", **context},
    )
    return web.Response(text=text, status=status, content_type="text/html")
