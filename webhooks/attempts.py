"""One HTTP attempt of a delivery and the reading of its outcome."""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass

import aiohttp

from webhooks.netpolicy import PolicyViolation

MAX_EXCERPT_BYTES = 4096


@dataclass(frozen=True, kw_only=True)
class HttpResult:
    status_code: int | None  # None when no response arrived
    error: str | None  # why the attempt failed, in words; None on any response
    response_excerpt: str | None  # the first 4 KiB of the body, decoded leniently
    retry_after: str | None  # the raw Retry-After header
    location: str | None  # the raw Location header of a redirect
    duration_ms: float


async def _read_excerpt(response: aiohttp.ClientResponse) -> bytes:
    """Read at most MAX_EXCERPT_BYTES and leave the rest of the body unread."""
    chunks = []
    size = 0
    while size < MAX_EXCERPT_BYTES:
        chunk = await response.content.read(MAX_EXCERPT_BYTES - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def describe_error(error: BaseException, connect_timeout_s: float, total_timeout_s: float) -> str:
    """Return a short, distinct description of a failed connection or exchange."""
    cause = getattr(error, "os_error", None) or error.__cause__
    if isinstance(error, PolicyViolation) or isinstance(cause, PolicyViolation):
        return f"rejected by network policy: {cause if cause else error}"
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        return f"connect timed out after {connect_timeout_s:g} s"
    if isinstance(error, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return f"timed out after {total_timeout_s:g} s without a complete response"
    if isinstance(error, aiohttp.ClientConnectorDNSError):
        return f"DNS lookup failed: {cause or error}"
    if isinstance(error, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate rejected: {error.certificate_error}"
    if isinstance(error, (aiohttp.ClientSSLError, ssl.SSLError)):
        return f"TLS handshake failed: {cause or error}"
    if isinstance(error, aiohttp.ClientConnectorError):
        if isinstance(error.os_error, ConnectionRefusedError):
            return "connection refused"
        return f"connection failed: {error.os_error.strerror or error.os_error}"
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return "the receiver closed the connection without a response"
    if isinstance(error, aiohttp.ClientPayloadError):
        return f"the response body was malformed: {error}"
    return f"request failed: {type(error).__name__}: {error}"


def outcome_class(result: HttpResult) -> str:
    """Return the kind of outcome of an attempt, a bounded label for metrics.

    It is one of success, http_error, timeout, connection_error and
    policy_rejected, read from the descriptions of ``describe_error``.
    """
    if result.status_code is not None:
        return "success" if 200 <= result.status_code < 300 else "http_error"
    error = result.error or ""
    if error.startswith("rejected by network policy"):
        return "policy_rejected"
    if error.startswith(("connect timed out", "timed out after")):
        return "timeout"
    return "connection_error"


async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    connect_timeout_s: float,
    total_timeout_s: float,
) -> HttpResult:
    """POST once without following redirects; never raise for a failed exchange.

    The total timeout covers connecting, sending, the headers and the body
    excerpt, so a receiver that trickles or never ends its response cannot
    hold the attempt longer.
    """
    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s)
    try:
        async with asyncio.timeout(total_timeout_s):
            async with session.post(
                url,
                data=body,
                headers={"Content-Type": "application/json", **headers},
                allow_redirects=False,
                timeout=timeout,
            ) as response:
                excerpt = await _read_excerpt(response)
                return HttpResult(
                    status_code=response.status,
                    error=None,
                    response_excerpt=excerpt.decode("utf-8", "replace"),
                    retry_after=response.headers.get("Retry-After"),
                    location=response.headers.get("Location"),
                    duration_ms=(time.monotonic() - started) * 1000,
                )
    except (aiohttp.ClientError, TimeoutError, OSError, PolicyViolation) as error:
        return HttpResult(
            status_code=None,
            error=describe_error(error, connect_timeout_s, total_timeout_s),
            response_excerpt=None,
            retry_after=None,
            location=None,
            duration_ms=(time.monotonic() - started) * 1000,
        )
