"""RFC 9457 problem documents, raised as exceptions and rendered by a middleware.

Exceptions::

    Problem
    ├── BadRequest              400  the body is not valid JSON
    ├── Unauthorized            401  missing or wrong bearer token
    ├── NotFound                404  unknown ID, or another client's
    ├── Conflict                409  a result that contradicts the stored one
    ├── PayloadTooLarge         413  the body exceeds server.max_body_bytes
    ├── UnsupportedMediaType    415  the content type is not JSON
    ├── ValidationFailed        422  JSON that fails validation, field by field
    └── TooManyRequests         429  rate limit exceeded
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from webhooks.resource_schemas import ProblemDocument

log = logging.getLogger("webhooks.http")

PROBLEM_CONTENT_TYPE = "application/problem+json"


class Problem(Exception):
    """The request failed."""

    status = 500
    slug = "internal-error"
    title = "Internal server error"

    def __init__(
        self,
        detail: str,
        *,
        errors: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = dict(headers or {})

    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "type": f"/problems/{self.slug}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors is not None:
            document["errors"] = self.errors
        return document


class BadRequest(Problem):
    status, slug, title = 400, "malformed-json", "Body is not valid JSON"


class Unauthorized(Problem):
    status, slug, title = 401, "unauthorized", "Missing or invalid bearer token"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="webhooks"'})


class NotFound(Problem):
    status, slug, title = 404, "not-found", "Not found"


class Conflict(Problem):
    status, slug, title = 409, "conflict", "Conflicts with the stored state"


class PayloadTooLarge(Problem):
    status, slug, title = 413, "payload-too-large", "Body too large"


class UnsupportedMediaType(Problem):
    status, slug, title = 415, "unsupported-media-type", "Content type must be JSON"


class ValidationFailed(Problem):
    status, slug, title = 422, "validation-error", "Request failed validation"


class TooManyRequests(Problem):
    status, slug, title = 429, "rate-limited", "Too many requests"


_PROBLEM_DOCUMENT = ProblemDocument()


def problem_response(problem: Problem) -> web.Response:
    return web.Response(
        status=problem.status,
        body=json.dumps(_PROBLEM_DOCUMENT.dump(problem.to_dict())).encode(),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=problem.headers,
    )


def _from_http_error(error: web.HTTPException, request: web.Request) -> Problem:
    if isinstance(error, web.HTTPRequestEntityTooLarge):
        # aiohttp 3.14 keeps the limit only on the request, as a private field.
        limit = getattr(request, "_client_max_size", None)
        return PayloadTooLarge(
            f"the body exceeds the limit of {limit} bytes"
            if limit
            else "the body exceeds the configured limit"
        )
    problem = Problem(error.reason)
    problem.status = error.status
    problem.slug = error.reason.lower().replace(" ", "-")
    problem.title = error.reason
    problem.headers = {
        key: value for key, value in error.headers.items() if key.lower() == "allow"
    }
    return problem


def _has_control_character(text: str) -> bool:
    return any(ord(char) < 0x20 or ord(char) == 0x7F for char in text)


def _reject_control_characters(request: web.Request) -> None:
    """Reject control characters in the path (404) or a query parameter (422).

    No ID contains one, and PostgreSQL cannot store NUL in text.
    """
    if _has_control_character(request.path):
        raise NotFound("the path contains a control character, so no such resource exists")
    for name, value in request.query.items():
        if _has_control_character(name) or _has_control_character(value):
            raise ValidationFailed(
                "query parameters must not contain control characters",
                errors={name[:64]: ["must not contain control characters"]},
            )


@web.middleware
async def problem_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Render every error as a problem document; log the unexpected ones."""
    try:
        _reject_control_characters(request)
        return await handler(request)
    except Problem as problem:
        return problem_response(problem)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return problem_response(_from_http_error(error, request))
    except ConnectionResetError:
        # The client went away before the response; there is no one to answer.
        log.debug(
            "client closed the connection during %s %s",
            request.method,
            request.rel_url.path,
            extra={"event": "client_disconnected"},
        )
        raise
    except Exception:
        log.exception(
            "unhandled error on %s %s",
            request.method,
            request.rel_url.path,
            extra={"event": "request_failed"},
        )
        return problem_response(Problem("an unexpected error occurred; it has been logged"))
