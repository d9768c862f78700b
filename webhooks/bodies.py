"""Reading JSON request bodies: size, content type, syntax, then a schema."""

from __future__ import annotations

import json
import math
from typing import Any

from aiohttp import web
from marshmallow import Schema, ValidationError

from webhooks.problems import (
    BadRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
)
from webhooks.state import STATE

MAX_JSON_DEPTH = 32


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _check_tree(value: Any, limit: int) -> str | None:
    """Return why a parsed document is unacceptable, or None.

    Containers may nest ``limit`` levels deep. Strings must be storable
    text: no NUL and no lone UTF-16 surrogate, which JSON escapes can
    produce. Numbers must be finite (``1e400`` parses as infinity).
    """
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            if level > limit:
                return f"the JSON nests deeper than {limit} levels"
            children = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in children:
                if isinstance(key, str):
                    stack.append((key, level))
                stack.append((child, level + 1))
        elif isinstance(item, str):
            if "\x00" in item:
                return "strings must not contain the NUL character (\\u0000)"
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "strings must not contain a lone surrogate such as \\udc80"
        elif isinstance(item, float) and not math.isfinite(item):
            return "numbers must be finite"
    return None


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


async def read_json(request: web.Request) -> Any:
    """Return the parsed body; raise a problem for a wrong type, size or bad JSON.

    A declared Content-Length over ``client_max_size`` gets 413 before the
    body is read; aiohttp raises 413 while reading once an undeclared body
    passes it.
    """
    if not _is_json(request.content_type):
        raise UnsupportedMediaType(
            f"send the body as application/json, not {request.content_type!r}"
        )
    limit = request.config_dict[STATE].config.server.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the body exceeds the limit of {limit} bytes")
    raw = await request.read()
    try:
        document = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise BadRequest(f"the JSON nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:
        # JSONDecodeError, UnicodeDecodeError, NaN and Infinity, and numbers
        # longer than Python's integer conversion limit are all ValueErrors.
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    reason = _check_tree(document, MAX_JSON_DEPTH)
    if reason is not None:
        raise BadRequest(reason)
    return document


def load(schema: Schema, document: Any) -> dict[str, Any]:
    """Validate ``document`` with ``schema``; raise 422 naming every field at fault."""
    if not isinstance(document, dict):
        raise ValidationFailed(
            "the body must be a JSON object",
            errors={"_schema": ["Expected a JSON object."]},
        )
    try:
        return schema.load(document)
    except ValidationError as exc:
        fields = ", ".join(sorted(str(name) for name in exc.messages))
        raise ValidationFailed(f"invalid fields: {fields}", errors=exc.messages) from None
