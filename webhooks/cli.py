"""The ``webhooks`` command: run the service and manage clients."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import socket
import sys
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from store import StoreError, open_store
from webhooks.clients import create_client
from webhooks import config_report
from webhooks.config import (
    EMBEDDED_SECRETS_FILE,
    LOG_LEVELS,
    Config,
    ConfigError,
    embedded_config,
    load_config,
)
from webhooks.credentials import SecretBox
from webhooks.erasure import ClientNotFound, erase_customer, erasure_resource
from webhooks.logs import RepeatFilter, configure_logging
from webhooks.schemas import CUSTOMER_ID_PATTERN
from webhooks.service_keys import verify_master_key
from webhooks.timefmt import utc_now

log = logging.getLogger("webhooks.cli")

_CONFIG_HELP = (
    "TOML configuration file (see config.example.toml); without it the "
    "embedded default runs: SQLite under ./var/, 127.0.0.1:8080, plain http "
    "and loopback callbacks allowed, tokens generated in ./var/secrets.toml"
)


def _load(path: str | None) -> Config:
    return load_config(path) if path else embedded_config()


def _configure_logging(config: Config, args: argparse.Namespace) -> RepeatFilter:
    """Apply [logging] from the config; --log-level wins over its level."""
    return configure_logging(config.logging.format, args.log_level or config.logging.level)


def _serve(args: argparse.Namespace) -> int:
    from webhooks.app import create_app

    config = _load(args.config)
    repeats = _configure_logging(config, args)
    # Listening first means a second service on a taken port stops before
    # its dispatcher touches the store.
    listener = _listen(config.server.host, config.server.port)
    try:
        web.run_app(
            create_app(config),
            sock=listener,
            print=None,
            access_log=None,
            shutdown_timeout=config.delivery.shutdown_grace_s,
        )
    finally:
        repeats.flush()
    return 0


def _listen(host: str, port: int) -> socket.socket:
    """Return a listening socket; raise ListenError if the address is taken."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        listener = socket.socket(family, kind, protocol)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(1024)
    except OSError as exc:
        raise ListenError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; stop the "
            "process using it or set server.port"
        ) from None
    return listener


class ListenError(Exception):
    """The service cannot listen on its configured address."""


def _check_config(args: argparse.Namespace) -> int:
    """Print the settings the service would run with; 2 if the config is invalid."""
    source = args.config or "embedded default"
    try:
        if args.config:
            config = load_config(args.config)
        else:
            config = embedded_config(write_secrets=False)
    except ConfigError as exc:
        for problem in str(exc).splitlines():
            # Problems with the file itself already start with its path.
            prefix = "" if problem.startswith(f"{source}: ") else f"{source}: "
            print(f"{prefix}{problem}", file=sys.stderr)
        return 2

    print(f"{config.source}: valid")
    if not args.config and not EMBEDDED_SECRETS_FILE.exists():
        print(f"(the secrets do not exist yet; serve generates {EMBEDDED_SECRETS_FILE})")
    print(config_report.summary_line(config))
    print()
    print("\n".join(config_report.settings_lines(config)))
    for warning in config_report.warnings(config):
        print(f"warning: {warning}", file=sys.stderr)
    return 0


async def _create_client(config: Config, name: str) -> dict[str, str]:
    store = await open_store(
        config.store.url,
        synchronous=config.store.synchronous,
        pool_size=config.store.pool_size,
    )
    try:
        box = SecretBox(config.master_key)
        await verify_master_key(store, box)
        created = await create_client(store, box, name)
    finally:
        await store.close()
    return {
        "client_id": created.record.id,
        "name": created.record.name,
        "api_key": created.api_key,
        "signing_secret": created.signing_secret,
    }


class ArgumentError(Exception):
    """A command-line argument is invalid."""


def _clients_create(args: argparse.Namespace) -> int:
    name = args.name
    if not name.strip() or len(name) > 200 or not name.isprintable():
        raise ArgumentError("NAME must be 1 to 200 printable characters")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ArgumentError("NAME must be valid UTF-8 text") from None
    config = _load(args.config)
    _configure_logging(config, args)
    print(json.dumps(asyncio.run(_create_client(config, args.name))))
    return 0


async def _erase_customer(
    config: Config, client_id: str, customer_id: str
) -> dict[str, Any]:
    store = await open_store(
        config.store.url,
        synchronous=config.store.synchronous,
        pool_size=config.store.pool_size,
    )
    try:
        # The keyed hash depends on the master key. A wrong key would store
        # a hash that the right key never reproduces, so the audit record
        # could not be found again.
        await verify_master_key(store, SecretBox(config.master_key))
        erasure = await erase_customer(
            store,
            config.master_key,
            client_id,
            customer_id,
            requested_by="cli",
            now=utc_now(),
        )
    finally:
        await store.close()
    return erasure_resource(erasure)


def _customers_erase(args: argparse.Namespace) -> int:
    if not re.match(CUSTOMER_ID_PATTERN, args.customer_id):
        print(
            "webhooks: invalid CUSTOMER_ID: it must be 1 to 64 characters of "
            "A-Z a-z 0-9 . _ : -",
            file=sys.stderr,
        )
        return 2
    config = _load(args.config)
    _configure_logging(config, args)
    try:
        summary = asyncio.run(_erase_customer(config, args.client, args.customer_id))
    except ClientNotFound:
        print(
            f"webhooks: no client {args.client!r} in the store; nothing was erased. "
            "Check --client and --config.",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(summary))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="webhooks",
        description="Asynchronous credit-score requests answered with signed webhooks.",
    )
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        help=(
            "lowest level of log lines written to standard error "
            "(default: logging.level of the config, which defaults to INFO)"
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the HTTP API and the dispatcher")
    serve.add_argument("--config", metavar="PATH", help=_CONFIG_HELP)
    serve.set_defaults(handler=_serve)

    check = commands.add_parser(
        "check-config",
        help="validate a configuration and print what the service would run with",
        description=(
            "Validate the configuration as `webhooks serve` would, environment "
            "variables included, and print every setting with tokens, secrets "
            "and keys hidden. Exits 2 with one line per problem when it is "
            "invalid, and writes no file."
        ),
    )
    check.add_argument("--config", metavar="PATH", help=_CONFIG_HELP)
    check.set_defaults(handler=_check_config)

    clients = commands.add_parser("clients", help="manage client systems")
    client_commands = clients.add_subparsers(dest="clients_command", required=True)
    create = client_commands.add_parser(
        "create",
        help="create a client and print its credentials as JSON",
        description=(
            "Create a client system and print one JSON object with client_id, "
            "api_key and signing_secret on standard output. They are shown only "
            "once: the store keeps a hash of the API key and the secret encrypted."
        ),
    )
    create.add_argument("name", metavar="NAME", help="a readable name for the client")
    create.add_argument("--config", metavar="PATH", help=_CONFIG_HELP)
    create.set_defaults(handler=_clients_create)

    customers = commands.add_parser("customers", help="manage the customers of clients")
    customer_commands = customers.add_subparsers(
        dest="customers_command", required=True
    )
    erase = customer_commands.add_parser(
        "erase",
        help="erase one customer of a client and print the rows changed as JSON",
        description=(
            "Erase one customer of a client in one transaction: delete the "
            "customer's scores, idempotency records and request timelines, "
            "clear request metadata, cancel pending and held deliveries, fail "
            "pending requests, and replace the customer ID in every row kept by "
            "a keyed hash. An audit record keeps the hash and the rows changed. "
            "Prints one JSON object with the rows changed per table. Exits 1, "
            "changing nothing, if the client does not exist."
        ),
    )
    erase.add_argument(
        "customer_id",
        metavar="CUSTOMER_ID",
        help="the client's reference of the customer",
    )
    erase.add_argument(
        "--client",
        required=True,
        metavar="CLIENT_ID",
        help="the ID of the client (cli_...)",
    )
    erase.add_argument("--config", metavar="PATH", help=_CONFIG_HELP)
    erase.set_defaults(handler=_customers_erase)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Until a command has read its config: text at the given level.
    configure_logging("text", args.log_level or "INFO")
    try:
        return args.handler(args)
    except ConfigError as exc:
        print(f"webhooks: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    except ArgumentError as exc:
        print(f"webhooks: invalid argument: {exc}", file=sys.stderr)
        return 2
    except ListenError as exc:
        print(f"webhooks: {exc}", file=sys.stderr)
        return 1
    except StoreError as exc:
        print(f"webhooks: store failed: {exc}", file=sys.stderr)
        return 1
