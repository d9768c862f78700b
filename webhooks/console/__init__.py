"""The operator console: server-rendered HTML pages under /console/.

Operators log in with the admin token. The pages read and change state
through the same store interface as the admin API, and work without
JavaScript.
"""

from __future__ import annotations

from aiohttp import web

from webhooks import credentials
from webhooks.config import Config
from webhooks.console import access, bulk, routes
from webhooks.console.render import CONSOLE, ENVIRONMENT, create_environment
from webhooks.console.sessions import SIGNER, SessionSigner

__all__ = ["CONSOLE", "add_console"]


def add_console(app: web.Application, config: Config) -> None:
    """Serve the console on ``app`` as a sub-application under /console/."""
    console = web.Application(middlewares=[access.console_middleware])
    console[ENVIRONMENT] = create_environment()
    console[SIGNER] = SessionSigner(
        config.master_key,
        credentials.hash_token(config.admin.token),
        lifetime_s=config.admin.console_session_lifetime_s,
    )
    console.add_routes(access.routes)
    console.add_routes(routes.routes)
    console.add_routes(bulk.routes)
    app.add_subapp(CONSOLE, console)
