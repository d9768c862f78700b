"""Access to the console: login with the admin token, sessions, CSRF checks and
the security headers of every console response."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

from aiohttp import web

from webhooks import credentials
from webhooks.console.render import CONSOLE, render
from webhooks.console.sessions import COOKIE_NAME, SIGNER, current_session
from webhooks.metrics import METRICS
from webhooks.state import STATE

log = logging.getLogger("webhooks.console")

routes = web.RouteTableDef()

LOGIN_PATH = f"{CONSOLE}/login"
STATIC_PREFIX = f"{CONSOLE}/static/"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
        "base-uri 'none'; object-src 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def see_other(location: str) -> web.Response:
    """Return a 303 redirect, which a browser follows with a GET."""
    return web.Response(status=303, headers={"Location": location})


def _is_public(path: str) -> bool:
    return path == LOGIN_PATH or path.startswith(STATIC_PREFIX)


def _safe_next(target: str) -> str:
    """Return ``target`` if it is a console path, else the overview.

    Only a path under the console is followed after login, so the login
    form cannot send the operator to another site.
    """
    inside = target.startswith(f"{CONSOLE}/")
    # Browsers read a backslash as a slash, and strip control characters.
    plain = "\\" not in target and all(ord(char) >= 0x20 for char in target)
    return target if inside and plain else f"{CONSOLE}/"


def _login_redirect(request: web.Request) -> web.Response:
    target = request.path_qs if request.method == "GET" else f"{CONSOLE}/"
    return see_other(f"{LOGIN_PATH}?{urlencode({'next': target})}")


def error_page(
    request: web.Request, status: int, title: str, message: str
) -> web.Response:
    context = {"title": title, "message": message, "status": status}
    return render(request, "error.html", context, status=status)


async def _check_csrf(request: web.Request) -> web.Response | None:
    """Return a 403 page unless the form carries the session's CSRF token."""
    session = current_session(request)
    assert session is not None
    form = await request.post()
    token = form.get("csrf_token")
    if isinstance(token, str) and request.config_dict[SIGNER].csrf_matches(
        session, token
    ):
        return None
    log.warning(
        "rejected a console form without a valid CSRF token on %s",
        request.path,
        extra={"event": "console_csrf_rejected", "path": request.path},
    )
    return error_page(
        request,
        403,
        "Form rejected",
        "The form did not carry this session's security token, so nothing "
        "was changed. Reload the page and submit the form again.",
    )


async def _authorise(request: web.Request, handler: Handler) -> web.StreamResponse:
    if _is_public(request.path):
        return await handler(request)
    if current_session(request) is None:
        return _login_redirect(request)
    if request.path == CONSOLE:
        return see_other(f"{CONSOLE}/")
    if request.method == "POST":
        rejection = await _check_csrf(request)
        if rejection is not None:
            return rejection
    return await handler(request)


@web.middleware
async def console_middleware(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    """Require a session, check CSRF tokens and set the security headers.

    Errors become HTML pages here, because the service's problem documents
    are JSON for API clients.
    """
    try:
        response = await _authorise(request, handler)
    except web.HTTPException as error:
        if error.status < 400:
            response = web.Response(status=error.status, headers=error.headers)
        elif error.status == 404:
            message = f"There is no console page at {request.path}."
            response = error_page(request, 404, "Page not found", message)
        else:
            response = error_page(request, error.status, error.reason, error.reason)
    except Exception:
        log.exception(
            "console page %s %s failed",
            request.method,
            request.path,
            extra={"event": "console_request_failed", "path": request.path},
        )
        response = error_page(
            request,
            500,
            "Internal error",
            "The page failed, and the error is in the service log.",
        )
    response.headers.update(SECURITY_HEADERS)
    response.headers.setdefault("Cache-Control", "no-store")
    return response


@routes.get("/login")
async def login_form(request: web.Request) -> web.Response:
    target = _safe_next(request.query.get("next", ""))
    if current_session(request) is not None:
        return see_other(target)
    return render(request, "login.html", {"next": target, "error": None})


@routes.post("/login")
async def login(request: web.Request) -> web.Response:
    """Start a session for the admin token, or reject a wrong one after a fixed delay."""
    form = await request.post()
    token = form.get("token")
    target = _safe_next(str(form.get("next", "")))
    state = request.config_dict[STATE]
    if not isinstance(token, str) or not credentials.token_matches(
        token.strip(), state.admin_token_hash
    ):
        request.config_dict[METRICS].console_login_failures.inc()
        log.warning(
            "console login with a wrong admin token from %s",
            request.remote,
            extra={"event": "console_login_failed", "remote": request.remote},
        )
        await asyncio.sleep(state.config.admin.console_login_delay_s)
        context = {"next": target, "error": "The admin token is not valid."}
        return render(request, "login.html", context, status=403)

    signer = request.config_dict[SIGNER]
    _, cookie = signer.issue(time.time())
    log.info(
        "console login from %s",
        request.remote,
        extra={"event": "console_login", "remote": request.remote},
    )
    response = see_other(target)
    response.set_cookie(
        COOKIE_NAME,
        cookie,
        path=f"{CONSOLE}/",
        max_age=int(signer.lifetime_s),
        httponly=True,
        samesite="Strict",
        secure=not state.config.delivery.allow_http,
    )
    return response


@routes.post("/logout")
async def logout(request: web.Request) -> web.Response:
    session = current_session(request)
    assert session is not None
    request.config_dict[SIGNER].revoke(session, time.time())
    response = see_other(LOGIN_PATH)
    response.del_cookie(COOKIE_NAME, path=f"{CONSOLE}/")
    return response
