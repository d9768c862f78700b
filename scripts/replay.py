#!/usr/bin/env python3
"""Replay failed webhook deliveries, working directly on the service's store.

The script opens the store that the configuration names, so it works while the
service is stopped. A running service finds the replayed deliveries at its next
poll of the store (``delivery.poll_interval``, 1 s by default) without a
restart. A replay keeps each delivery's message ID (the ``webhook-id`` header)
and starts a fresh round of the retry schedule.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TextIO

from store import Store, StoreError, open_store
from store.records import DeliveryFilter, DeliveryRecord, DeliveryStatus
from store.sqlite import path_from_url
from webhooks.config import (
    EMBEDDED_SECRETS_FILE,
    Config,
    ConfigError,
    embedded_config,
    load_config,
)
from webhooks.events import EVENT_TYPES
from webhooks.timefmt import format_time, parse_time, utc_now

# Rows per list_deliveries page and IDs per store query. 500 IDs plus a few
# other parameters stay below 999, SQLite's default maximum of bound
# parameters before version 3.32.0.
PAGE_SIZE = 500
DEFAULT_BATCH_SIZE = 100
MAX_BATCH_SIZE = 500
# The first bytes of every SQLite 3 database file.
SQLITE_HEADER = b"SQLite format 3\x00"
# Without a terminal, at most one progress line per this interval.
PROGRESS_INTERVAL_S = 2.0

EXIT_OK = 0
EXIT_FAILED = 1  # no store, a store failure, or a declined prompt
EXIT_USAGE = 2  # invalid arguments or configuration; nothing was changed

DESCRIPTION = """\
Replay failed webhook deliveries: make them due again now, keeping each
delivery's message ID (webhook-id) and resetting its attempt budget to a
fresh round of the retry schedule.

Only deliveries with status "failed" are replayed. The filters combine with
AND, and a script run without filters selects every failed delivery. The
script works on the store named in the configuration, so the service may be
stopped. A running service picks the replayed deliveries up at its next poll
of the store, without a restart.
"""

EPILOG = """\
TIME is an RFC 3339 time with an offset, such as 2026-12-04T10:00:00Z or
2026-12-04T11:00:00.250+01:00. A time without an offset is rejected.

examples:
  list what a replay of one client's failures in a window would do:
    python scripts/replay.py --config prod.toml --client cli_... \\
        --since 2026-12-04T10:00:00Z --until 2026-12-04T12:00:00Z --dry-run
  replay two deliveries without a prompt:
    python scripts/replay.py --config prod.toml --delivery dlv_... \\
        --delivery dlv_... --yes

exit status:
  0  done, including dry runs and runs that found nothing to replay
  1  no store found, the store failed, or the prompt was declined
  2  invalid arguments or configuration; nothing was changed
"""


class UsageError(Exception):
    """Invalid arguments found after parsing, such as an unknown delivery ID."""


class StoreNotFound(Exception):
    """The store that the configuration names is missing or not a database."""


@dataclass
class ReplayReport:
    """The deliveries a run selected, and the outcome of each."""

    selected: list[DeliveryRecord] = field(default_factory=list)
    replayed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (ID, reason)


# Arguments


def _time_argument(text: str) -> datetime:
    try:
        return parse_time(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid time {text!r}: expected RFC 3339 with an offset, "
            "such as 2026-12-04T10:00:00Z"
        ) from None


def _batch_size_argument(text: str) -> int:
    try:
        size = int(text)
    except ValueError:
        size = 0
    if not 1 <= size <= MAX_BATCH_SIZE:
        raise argparse.ArgumentTypeError(
            f"invalid batch size {text!r}: expected a whole number from 1 to "
            f"{MAX_BATCH_SIZE}"
        )
    return size


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="replay.py",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="TOML configuration file of the service; the store is its "
        "store.url. Without it, the embedded default of `webhooks serve` in "
        "the current folder: ./var/webhooks.sqlite3 with ./var/secrets.toml",
    )
    parser.add_argument(
        "--delivery",
        metavar="ID",
        action="append",
        default=[],
        help="replay this delivery (dlv_...); repeat for several. Every ID must "
        "exist, or nothing is replayed. One that is not failed, or that the "
        "other filters exclude, is skipped and named in the summary",
    )
    parser.add_argument(
        "--client",
        metavar="ID",
        help="only deliveries to this client (cli_...), which must exist",
    )
    parser.add_argument(
        "--event-type",
        metavar="TYPE",
        choices=EVENT_TYPES,
        help=f"only deliveries of this event type: {', '.join(EVENT_TYPES)}",
    )
    parser.add_argument(
        "--since",
        metavar="TIME",
        type=_time_argument,
        help="only deliveries created at or after TIME (RFC 3339, see below)",
    )
    parser.add_argument(
        "--until",
        metavar="TIME",
        type=_time_argument,
        help="only deliveries created before TIME (RFC 3339, see below)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="list the deliveries that would be replayed, one line each (ID, "
        "event type, client ID, creation time, last error), and change nothing",
    )
    parser.add_argument(
        "--yes",
        action="store_true",
        help="replay without asking for confirmation; required when standard "
        "input is not a terminal",
    )
    parser.add_argument(
        "--batch-size",
        metavar="N",
        type=_batch_size_argument,
        default=DEFAULT_BATCH_SIZE,
        help="deliveries replayed per store transaction, 1 to "
        f"{MAX_BATCH_SIZE} (default: {DEFAULT_BATCH_SIZE}). Smaller batches "
        "hold the SQLite write lock for less time while the service runs",
    )
    return parser


def _parse_arguments(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if args.since and args.until and args.since >= args.until:
        parser.error(
            f"--since {format_time(args.since)} must be earlier than "
            f"--until {format_time(args.until)}"
        )
    # Keep the first of repeated IDs, in the order given.
    args.delivery = list(dict.fromkeys(args.delivery))
    return args


# Configuration and store


def _load_config(path: str | None) -> Config:
    """Load the file, or the embedded default if it exists in the current folder.

    Unlike ``webhooks serve``, this never generates the embedded secrets,
    because a missing secrets file means that no service has run here.
    """
    if path is not None:
        return load_config(path)
    if not EMBEDDED_SECRETS_FILE.exists():
        raise StoreNotFound(
            f"no store found: {EMBEDDED_SECRETS_FILE} does not exist in "
            f"{Path.cwd()}, so `webhooks serve` has not run here with the embedded "
            "default. Pass --config PATH, or run the script in the folder where "
            "the service runs"
        )
    return embedded_config()


def _check_store_exists(config: Config) -> None:
    """Raise StoreNotFound if a SQLite store's file is missing or not a database.

    Opening a missing file would create an empty store, which has nothing to
    replay and would only hide a wrong path.
    """
    url = config.store.url
    if not url.startswith("sqlite:"):
        return
    try:
        path = path_from_url(url)
    except ValueError as exc:
        raise ConfigError(f"store.url: {exc}") from None
    if not path.is_file():
        raise StoreNotFound(
            f"no store found at {path} (store.url in {config.source}); check the "
            "path, or start the service once to create the store"
        )
    # SQLite treats an empty file as an empty database.
    with open(path, "rb") as file:
        header = file.read(len(SQLITE_HEADER))
    if header and header != SQLITE_HEADER:
        raise StoreNotFound(
            f"no store found at {path} (store.url in {config.source}): the file "
            "is not a SQLite database; check the path"
        )


async def _open_store(config: Config) -> Store:
    _check_store_exists(config)
    try:
        return await open_store(config.store.url, synchronous=config.store.synchronous)
    except ValueError as exc:
        raise ConfigError(f"store.url: {exc}") from None


# Selection


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def _list_all(store: Store, filter: DeliveryFilter) -> list[DeliveryRecord]:
    """Return every delivery the filter matches, following the page cursor."""
    deliveries: list[DeliveryRecord] = []
    cursor = None
    while True:
        page = await store.list_deliveries(filter, PAGE_SIZE, cursor)
        deliveries.extend(page.deliveries)
        if page.next_cursor is None:
            return deliveries
        cursor = page.next_cursor


async def _fetch_by_id(store: Store, ids: Sequence[str]) -> dict[str, DeliveryRecord]:
    """Return the deliveries with these IDs, whatever their status."""
    found: dict[str, DeliveryRecord] = {}
    for chunk in _chunks(ids, PAGE_SIZE):
        for delivery in await _list_all(
            store, DeliveryFilter(delivery_ids=tuple(chunk))
        ):
            found[delivery.id] = delivery
    return found


def _base_filter(args: argparse.Namespace) -> DeliveryFilter:
    return DeliveryFilter(
        status=DeliveryStatus.FAILED,
        client_id=args.client,
        event_type=args.event_type,
        since=args.since,
        until=args.until,
    )


async def _collect_failed(
    store: Store, args: argparse.Namespace
) -> list[DeliveryRecord]:
    """Return the failed deliveries that all filters match, oldest first."""
    base = _base_filter(args)
    if not args.delivery:
        deliveries = await _list_all(store, base)
    else:
        deliveries = []
        for chunk in _chunks(args.delivery, PAGE_SIZE):
            filter = replace(base, delivery_ids=tuple(chunk))
            deliveries.extend(await _list_all(store, filter))
    return sorted(deliveries, key=lambda delivery: (delivery.created_at, delivery.id))


def _skip_reason(delivery: DeliveryRecord, args: argparse.Namespace) -> str:
    """Return why a delivery named with --delivery was not selected."""
    if delivery.status is not DeliveryStatus.FAILED:
        return f"status {delivery.status.value}"
    if args.client is not None and delivery.client_id != args.client:
        client = delivery.client_id or "none (an event to the scoring backend)"
        return f"client {client}, not --client {args.client}"
    if args.event_type is not None and delivery.event_type != args.event_type:
        return f"event type {delivery.event_type}, not --event-type {args.event_type}"
    created = format_time(delivery.created_at)
    if args.since is not None and delivery.created_at < args.since:
        return f"created {created}, before --since {format_time(args.since)}"
    if args.until is not None and delivery.created_at >= args.until:
        return f"created {created}, not before --until {format_time(args.until)}"
    return "not failed any more when the deliveries were listed"


async def _select(store: Store, args: argparse.Namespace, report: ReplayReport) -> None:
    """Check the named client and deliveries exist, then collect the failed ones.

    Raises UsageError for an unknown client or delivery ID, before anything
    is changed.
    """
    if args.client is not None and await store.get_client(args.client) is None:
        raise UsageError(f"--client {args.client}: client not found in the store")

    named = await _fetch_by_id(store, args.delivery)
    unknown = [delivery_id for delivery_id in args.delivery if delivery_id not in named]
    if unknown:
        raise UsageError(
            f"--delivery: not found in the store: {', '.join(unknown)}. "
            "Nothing was replayed"
        )

    report.selected = await _collect_failed(store, args)
    selected_ids = {delivery.id for delivery in report.selected}
    for delivery_id in args.delivery:
        if delivery_id not in selected_ids:
            report.skipped.append((delivery_id, _skip_reason(named[delivery_id], args)))


# Output


def _last_error(delivery: DeliveryRecord) -> str:
    if delivery.last_error:
        return " ".join(delivery.last_error.split())
    if delivery.last_status_code is not None:
        return f"HTTP {delivery.last_status_code}"
    return "-"


def _describe(delivery: DeliveryRecord) -> str:
    """Return one line: ID, event type, client ID, creation time and last error."""
    client = delivery.client_id or "-"
    return (
        f"{delivery.id}  {delivery.event_type:<15}  {client:<40}  "
        f"{format_time(delivery.created_at)}  {_last_error(delivery)}"
    )


def _plural(count: int) -> str:
    return "delivery" if count == 1 else "deliveries"


def _print_skipped(report: ReplayReport, out: TextIO) -> None:
    for delivery_id, reason in report.skipped:
        print(f"skipped {delivery_id}: {reason}", file=out)


def _print_dry_run(report: ReplayReport, out: TextIO) -> None:
    for delivery in report.selected:
        print(_describe(delivery), file=out)
    count = len(report.selected)
    print(
        f"dry run: {count} failed {_plural(count)} would be replayed, "
        f"{len(report.skipped)} skipped; nothing was changed",
        file=out,
    )
    _print_skipped(report, out)


def _print_summary(report: ReplayReport, out: TextIO) -> None:
    count = len(report.replayed)
    print(
        f"replayed {count} {_plural(count)}, skipped {len(report.skipped)}",
        file=out,
    )
    _print_skipped(report, out)


class Progress:
    """A progress bar redrawn in place on a terminal, or plain periodic lines.

    Without a terminal, a line is written at most every ``interval_s``
    seconds, and always for the last update.
    """

    _BAR_WIDTH = 30

    def __init__(
        self, total: int, stream: TextIO, *, interval_s: float = PROGRESS_INTERVAL_S
    ) -> None:
        self.total = total
        self._stream = stream
        self._interactive = stream.isatty()
        self._interval_s = interval_s
        self._last_line_at: float | None = None

    def update(self, done: int) -> None:
        percent = 100 * done // self.total if self.total else 100
        counts = f"{done}/{self.total} deliveries ({percent}%)"
        if self._interactive:
            filled = (
                self._BAR_WIDTH * done // self.total if self.total else self._BAR_WIDTH
            )
            bar = "#" * filled + "-" * (self._BAR_WIDTH - filled)
            self._stream.write(f"\rreplaying [{bar}] {counts}")
            self._stream.flush()
            return
        now = time.monotonic()
        due = self._last_line_at is None or now - self._last_line_at >= self._interval_s
        if due or done == self.total:
            self._stream.write(f"replaying: {counts}\n")
            self._stream.flush()
            self._last_line_at = now

    def close(self) -> None:
        if self._interactive:
            self._stream.write("\n")
            self._stream.flush()


# Replay


def _confirm(count: int) -> bool:
    """Ask on the terminal; raise UsageError if standard input is not one."""
    if not sys.stdin.isatty():
        raise UsageError(
            f"{count} failed {_plural(count)} would be replayed; pass --yes to "
            "replay without a prompt, or --dry-run to list them. Nothing was changed"
        )
    # The prompt goes to standard error, so that standard output contains
    # only the results, even when the output is piped.
    sys.stderr.write(f"Replay {count} failed {_plural(count)}? [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


async def _replay_batch(
    store: Store, batch: Sequence[str], report: ReplayReport
) -> None:
    """Replay the deliveries of a batch that are still failed.

    The store replays delivered deliveries too, so each batch is read again
    first, and a delivery that another replay sent meanwhile is skipped.
    """
    # NOTE: a delivery that becomes delivered between this read and the
    # replay below is still replayed, because the store has no failed-only
    # replay. The window is one query long.
    current = await _fetch_by_id(store, batch)
    still_failed = []
    for delivery_id in batch:
        delivery = current.get(delivery_id)
        if delivery is None:
            report.skipped.append((delivery_id, "no longer in the store"))
        elif delivery.status is not DeliveryStatus.FAILED:
            reason = f"status {delivery.status.value} since it was listed"
            report.skipped.append((delivery_id, reason))
        else:
            still_failed.append(delivery_id)

    replayed = await store.replay_deliveries(still_failed, utc_now())
    report.replayed.extend(replayed)
    replayed_ids = set(replayed)
    for delivery_id in still_failed:
        if delivery_id not in replayed_ids:
            report.skipped.append((delivery_id, "status changed during the replay"))


async def _replay_all(
    store: Store, report: ReplayReport, batch_size: int, progress: Progress | None
) -> None:
    ids = [delivery.id for delivery in report.selected]
    done = 0
    for batch in _chunks(ids, batch_size):
        await _replay_batch(store, batch, report)
        done += len(batch)
        if progress is not None:
            progress.update(done)


# Entry point


async def _run(args: argparse.Namespace, report: ReplayReport) -> int:
    config = _load_config(args.config)
    store = await _open_store(config)
    try:
        await _select(store, args, report)
        if args.dry_run:
            _print_dry_run(report, sys.stdout)
            return EXIT_OK
        if not report.selected:
            print("no failed deliveries match; nothing to replay", file=sys.stdout)
            _print_skipped(report, sys.stdout)
            return EXIT_OK
        if not args.yes and not _confirm(len(report.selected)):
            print("replay cancelled; nothing was changed", file=sys.stderr)
            return EXIT_FAILED

        progress = None
        if len(report.selected) > args.batch_size:
            progress = Progress(len(report.selected), sys.stderr)
        try:
            await _replay_all(store, report, args.batch_size, progress)
        finally:
            if progress is not None:
                progress.close()
        _print_summary(report, sys.stdout)
        return EXIT_OK
    finally:
        await store.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = _parse_arguments(parser, argv)
    prog = parser.prog
    report = ReplayReport()
    try:
        return asyncio.run(_run(args, report))
    except ConfigError as exc:
        print(f"{prog}: invalid configuration:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StoreNotFound as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (StoreError, sqlite3.Error) as exc:
        # aiosqlite passes sqlite3 errors through the store, such as a lock
        # held by another process for longer than the busy timeout.
        print(f"{prog}: store failed: {exc}", file=sys.stderr)
        if report.replayed:
            print(f"{prog}: replayed before the failure:", file=sys.stderr)
            _print_summary(report, sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=sys.stderr)
        if report.replayed:
            _print_summary(report, sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
