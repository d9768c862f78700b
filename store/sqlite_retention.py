"""Retention and erasure queries of the SQLite store.

Each function runs inside a write transaction of ``SqliteStore`` on its
writer connection. Times are Unix seconds, as everywhere in the SQLite schema.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import aiosqlite

from store.records import ErasureRecord
from store.scrub import ERASED_REASON, counts_by_table, replace_customer_id

# A request keeps what its webhook or the client's read still needs while
# one of its deliveries may still be sent.
_OPEN_DELIVERY = """EXISTS (
    SELECT 1 FROM deliveries AS d
    WHERE d.correlation_id = {} AND d.status IN ('pending', 'held'))"""

_EXPIRED_SCORES = f"""
    SELECT s.id FROM scores AS s
    WHERE s.valid_until < ?
      AND NOT EXISTS (
          SELECT 1 FROM score_requests AS r
          WHERE r.score_id = s.id AND {_OPEN_DELIVERY.format("r.correlation_id")})
    LIMIT ?
"""

_SCRUB_METADATA = f"""
    UPDATE score_requests SET metadata = NULL
    WHERE correlation_id IN (
        SELECT r.correlation_id FROM score_requests AS r
        WHERE r.metadata IS NOT NULL AND r.completed_at < ?
          AND NOT {_OPEN_DELIVERY.format("r.correlation_id")}
        LIMIT ?)
"""

# An entry goes once it and its request's completion are both older than
# the cutoff. Entries of a pending request stay. Entries without a request,
# which only a write for an unknown ID would leave, go as well.
_DELETE_TIMELINE = f"""
    DELETE FROM timeline_entries
    WHERE id IN (
        SELECT t.id FROM timeline_entries AS t
        WHERE t.at < ?1
          AND NOT EXISTS (
              SELECT 1 FROM score_requests AS r
              WHERE r.correlation_id = t.correlation_id
                AND (r.completed_at IS NULL OR r.completed_at >= ?1))
          AND NOT {_OPEN_DELIVERY.format("t.correlation_id")}
        LIMIT ?2)
"""

_DELETE_IDEMPOTENCY_KEYS = """
    DELETE FROM idempotency_keys
    WHERE rowid IN (SELECT rowid FROM idempotency_keys WHERE created_at < ? LIMIT ?)
"""


async def _run(
    db: aiosqlite.Connection, sql: str, params: Sequence[Any] | Mapping[str, Any]
) -> int:
    cursor = await db.execute(sql, params)
    return cursor.rowcount


async def _all(
    db: aiosqlite.Connection, sql: str, params: Sequence[Any] | Mapping[str, Any]
) -> list[Any]:
    return list(await db.execute_fetchall(sql, params))


async def delete_expired(
    db: aiosqlite.Connection,
    *,
    scores_before: float,
    requests_before: float,
    idempotency_before: float,
    limit: int,
) -> dict[str, int]:
    """Delete or scrub up to ``limit`` rows per kind; see ``Store.delete_expired``."""
    expired = await _all(db, _EXPIRED_SCORES, (scores_before, limit))
    score_ids = json.dumps([row["id"] for row in expired])
    # The requests that used a deleted score stay, and read as ready without one.
    await _run(
        db,
        "UPDATE score_requests SET score_id = NULL"
        " WHERE score_id IN (SELECT value FROM json_each(?))",
        (score_ids,),
    )
    scores = await _run(
        db,
        "DELETE FROM scores WHERE id IN (SELECT value FROM json_each(?))",
        (score_ids,),
    )
    return {
        "score": scores,
        "request_metadata": await _run(db, _SCRUB_METADATA, (requests_before, limit)),
        "timeline_entry": await _run(db, _DELETE_TIMELINE, (requests_before, limit)),
        "idempotency_key": await _run(
            db, _DELETE_IDEMPOTENCY_KEYS, (idempotency_before, limit)
        ),
    }


async def erase_customer(
    db: aiosqlite.Connection, client_id: str, customer_id: str, erasure: ErasureRecord
) -> dict[str, int]:
    """Erase one customer of one client, as ``Store.erase_customer`` says."""
    found = await _all(
        db,
        """SELECT correlation_id FROM score_requests
           WHERE client_id = ? AND customer_id = ?""",
        (client_id, customer_id),
    )
    requests = json.dumps([row["correlation_id"] for row in found])
    hashed = erasure.customer_hash
    now = erasure.erased_at.timestamp()
    counts: dict[str, int] = {}

    counts["timeline_entries"] = await _run(
        db,
        "DELETE FROM timeline_entries"
        " WHERE correlation_id IN (SELECT value FROM json_each(?))",
        (requests,),
    )
    counts["idempotency_keys"] = await _run(
        db,
        """DELETE FROM idempotency_keys
           WHERE client_id = ?
             AND correlation_id IN (SELECT value FROM json_each(?))""",
        (client_id, requests),
    )
    await _run(
        db,
        """UPDATE score_requests SET score_id = NULL
           WHERE score_id IN (
               SELECT id FROM scores WHERE client_id = ? AND customer_id = ?)""",
        (client_id, customer_id),
    )
    counts["scores"] = await _run(
        db,
        "DELETE FROM scores WHERE client_id = ? AND customer_id = ?",
        (client_id, customer_id),
    )
    counts["deliveries"] = await _erase_from_deliveries(
        db, requests, customer_id, hashed, now
    )
    counts["attempts"] = await _run(
        db,
        """UPDATE attempts
           SET response_excerpt = REPLACE(response_excerpt, ?1, ?2),
               error = REPLACE(error, ?1, ?2)
           WHERE delivery_id IN (
                 SELECT id FROM deliveries
                 WHERE correlation_id IN (SELECT value FROM json_each(?3)))
             AND (instr(response_excerpt, ?1) > 0 OR instr(error, ?1) > 0)""",
        (customer_id, hashed, requests),
    )

    # A pending computation or request fails, so no result can bring the
    # customer back, and a new request starts a computation of its own.
    counts["computations"] = await _run(
        db,
        """UPDATE computations
           SET customer_id = ?2,
               status = CASE status WHEN 'pending' THEN 'failed' ELSE status END,
               failure_reason = CASE status WHEN 'pending' THEN ?3
                                ELSE REPLACE(failure_reason, ?1, ?2) END,
               result_fingerprint = REPLACE(result_fingerprint, ?1, ?2),
               completed_at = COALESCE(completed_at, ?4)
           WHERE client_id = ?5 AND customer_id = ?1""",
        (customer_id, hashed, ERASED_REASON, now, client_id),
    )
    counts["score_requests"] = await _run(
        db,
        """UPDATE score_requests
           SET customer_id = ?2, metadata = NULL,
               callback_url = REPLACE(callback_url, ?1, ?2),
               status = CASE status WHEN 'pending' THEN 'failed' ELSE status END,
               failure_reason = CASE status WHEN 'pending' THEN ?3
                                ELSE REPLACE(failure_reason, ?1, ?2) END,
               completed_at = COALESCE(completed_at, ?4)
           WHERE client_id = ?5 AND customer_id = ?1""",
        (customer_id, hashed, ERASED_REASON, now, client_id),
    )

    counts = counts_by_table(counts)
    await _run(
        db,
        """INSERT INTO erasures
           (id, client_id, customer_hash, requested_by, erased_at, rows_changed, detail)
           VALUES (?, ?, ?, ?, ?, ?, ?)""",
        (
            erasure.id,
            client_id,
            hashed,
            erasure.requested_by,
            now,
            sum(counts.values()),
            json.dumps(counts),
        ),
    )
    return counts


async def _erase_from_deliveries(
    db: aiosqlite.Connection, requests: str, customer_id: str, hashed: str, now: float
) -> int:
    """Cancel the open deliveries of ``requests`` and replace the ID in all of them.

    Returns the number of deliveries changed.
    """
    cancelled = await _all(
        db,
        """UPDATE deliveries
           SET status = 'cancelled', held_until = NULL, lease_owner = NULL,
               lease_expires_at = NULL, updated_at = ?
           WHERE status IN ('pending', 'held')
             AND correlation_id IN (SELECT value FROM json_each(?))
           RETURNING id""",
        (now, requests),
    )
    renamed = await _all(
        db,
        """UPDATE deliveries
           SET url = REPLACE(url, ?1, ?2), last_error = REPLACE(last_error, ?1, ?2)
           WHERE correlation_id IN (SELECT value FROM json_each(?3))
             AND (instr(url, ?1) > 0 OR instr(last_error, ?1) > 0)
           RETURNING id""",
        (customer_id, hashed, requests),
    )
    bodies = await _all(
        db,
        """SELECT id, payload FROM deliveries
           WHERE correlation_id IN (SELECT value FROM json_each(?))""",
        (requests,),
    )
    rewritten = []
    for row in bodies:
        payload = replace_customer_id(bytes(row["payload"]), customer_id, hashed)
        if payload is not None:
            rewritten.append((payload, row["id"]))
    await db.executemany("UPDATE deliveries SET payload = ? WHERE id = ?", rewritten)
    changed = {row["id"] for row in cancelled} | {row["id"] for row in renamed}
    return len(changed | {delivery_id for _, delivery_id in rewritten})
