"""Reading JSON request bodies: size, content type, syntax, then a schema."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from marshmallow import Schema, ValidationError

from webhooks.problems import BadRequest, UnsupportedMediaType, ValidationFailed

MAX_JSON_DEPTH = 32


def _depth(value: Any, limit: int) -> int:
    """Return the nesting depth of ``value``, stopping early past ``limit``."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if level > limit:
            return level
        if isinstance(item, dict):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in item)
    return deepest


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


async def read_json(request: web.Request) -> Any:
    """Return the parsed body; raise a problem for a wrong type or bad JSON.

    aiohttp raises 413 while reading once the body passes ``client_max_size``.
    """
    if not _is_json(request.content_type):
        raise UnsupportedMediaType(
            f"send the body as application/json, not {request.content_type!r}"
        )
    raw = await request.read()
    try:
        document = json.loads(raw)
    except RecursionError:
        raise BadRequest(f"the JSON nests deeper than {MAX_JSON_DEPTH} levels") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if _depth(document, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise BadRequest(f"the JSON nests deeper than {MAX_JSON_DEPTH} levels")
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
