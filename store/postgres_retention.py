"""Retention and erasure queries of the PostgreSQL store.

Each function runs inside a transaction on one connection of the pool. The
sweep locks its candidate rows with ``SKIP LOCKED``, so it neither waits for
nor blocks the processes that write those rows meanwhile.
"""

from __future__ import annotations

import json
from datetime import datetime

import asyncpg

from store.records import ErasureRecord
from store.scrub import ERASED_REASON, counts_by_table, replace_customer_id

# A request keeps what its webhook or the client's read still needs while
# one of its deliveries may still be sent.
_OPEN_DELIVERY = """EXISTS (
    SELECT 1 FROM deliveries AS d
    WHERE d.correlation_id = {} AND d.status IN ('pending', 'held'))"""

_EXPIRED_SCORES = f"""
    SELECT s.id FROM scores AS s
    WHERE s.valid_until < $1
      AND NOT EXISTS (
          SELECT 1 FROM score_requests AS r
          WHERE r.score_id = s.id AND {_OPEN_DELIVERY.format("r.correlation_id")})
    LIMIT $2
    FOR UPDATE SKIP LOCKED
"""

_SCRUB_METADATA = f"""
    UPDATE score_requests SET metadata = NULL
    WHERE correlation_id IN (
        SELECT r.correlation_id FROM score_requests AS r
        WHERE r.metadata IS NOT NULL AND r.completed_at < $1
          AND NOT {_OPEN_DELIVERY.format("r.correlation_id")}
        LIMIT $2
        FOR UPDATE SKIP LOCKED)
"""

# An entry goes once it and its request's completion are both older than
# the cutoff. Entries of a pending request stay. Entries without a request,
# which only a write for an unknown ID would leave, go as well.
_DELETE_TIMELINE = f"""
    DELETE FROM timeline_entries
    WHERE id IN (
        SELECT t.id FROM timeline_entries AS t
        WHERE t.at < $1
          AND NOT EXISTS (
              SELECT 1 FROM score_requests AS r
              WHERE r.correlation_id = t.correlation_id
                AND (r.completed_at IS NULL OR r.completed_at >= $1))
          AND NOT {_OPEN_DELIVERY.format("t.correlation_id")}
        LIMIT $2
        FOR UPDATE SKIP LOCKED)
"""

_DELETE_IDEMPOTENCY_KEYS = """
    DELETE FROM idempotency_keys
    WHERE (client_id, key) IN (
        SELECT client_id, key FROM idempotency_keys WHERE created_at < $1
        LIMIT $2
        FOR UPDATE SKIP LOCKED)
"""


def _count(status: str) -> int:
    """Return the row count of a command status such as ``DELETE 3``."""
    return int(status.split()[-1])


async def delete_expired(
    connection: asyncpg.Connection,
    *,
    scores_before: datetime,
    requests_before: datetime,
    idempotency_before: datetime,
    limit: int,
) -> dict[str, int]:
    """Delete or scrub up to ``limit`` rows per kind; see ``Store.delete_expired``."""
    expired = await connection.fetch(_EXPIRED_SCORES, scores_before, limit)
    score_ids = [row["id"] for row in expired]
    # The requests that used a deleted score stay, and read as ready without one.
    await connection.execute(
        "UPDATE score_requests SET score_id = NULL WHERE score_id = ANY($1::text[])",
        score_ids,
    )
    scores = await connection.execute(
        "DELETE FROM scores WHERE id = ANY($1::text[])", score_ids
    )
    metadata = await connection.execute(_SCRUB_METADATA, requests_before, limit)
    timeline = await connection.execute(_DELETE_TIMELINE, requests_before, limit)
    keys = await connection.execute(_DELETE_IDEMPOTENCY_KEYS, idempotency_before, limit)
    return {
        "score": _count(scores),
        "request_metadata": _count(metadata),
        "timeline_entry": _count(timeline),
        "idempotency_key": _count(keys),
    }


async def erase_customer(
    connection: asyncpg.Connection,
    client_id: str,
    customer_id: str,
    erasure: ErasureRecord,
) -> dict[str, int]:
    """Erase one customer of one client, as ``Store.erase_customer`` says."""
    # Computations first, then requests: the order in which results and
    # submissions lock them. A result for one of these computations waits
    # until the erasure has committed and then finds it failed, and a
    # submission that would join one starts a new computation instead.
    # Rows that a concurrent submission adds meanwhile are not erased.
    locked = await connection.fetch(
        """SELECT id FROM computations
           WHERE client_id = $1 AND customer_id = $2
           FOR UPDATE""",
        client_id,
        customer_id,
    )
    computations = [row["id"] for row in locked]
    found = await connection.fetch(
        """SELECT correlation_id FROM score_requests
           WHERE client_id = $1 AND customer_id = $2
           FOR UPDATE""",
        client_id,
        customer_id,
    )
    requests = [row["correlation_id"] for row in found]
    hashed = erasure.customer_hash
    now = erasure.erased_at
    counts: dict[str, int] = {}

    counts["timeline_entries"] = _count(
        await connection.execute(
            "DELETE FROM timeline_entries WHERE correlation_id = ANY($1::text[])",
            requests,
        )
    )
    counts["idempotency_keys"] = _count(
        await connection.execute(
            """DELETE FROM idempotency_keys
               WHERE client_id = $1 AND correlation_id = ANY($2::text[])""",
            client_id,
            requests,
        )
    )
    await connection.execute(
        """UPDATE score_requests SET score_id = NULL
           WHERE score_id IN (
               SELECT id FROM scores WHERE client_id = $1 AND customer_id = $2)""",
        client_id,
        customer_id,
    )
    counts["scores"] = _count(
        await connection.execute(
            "DELETE FROM scores WHERE client_id = $1 AND customer_id = $2",
            client_id,
            customer_id,
        )
    )
    counts["deliveries"] = await _erase_from_deliveries(
        connection, requests, customer_id, hashed, now
    )
    counts["attempts"] = _count(
        await connection.execute(
            """UPDATE attempts
               SET response_excerpt = replace(response_excerpt, $1, $2),
                   error = replace(error, $1, $2)
               WHERE delivery_id IN (
                     SELECT id FROM deliveries WHERE correlation_id = ANY($3::text[]))
                 AND (strpos(response_excerpt, $1) > 0 OR strpos(error, $1) > 0)""",
            customer_id,
            hashed,
            requests,
        )
    )

    # A pending computation or request fails, so no result can bring the
    # customer back, and a new request starts a computation of its own.
    counts["computations"] = _count(
        await connection.execute(
            """UPDATE computations
               SET customer_id = $2,
                   status = CASE status WHEN 'pending' THEN 'failed' ELSE status END,
                   failure_reason = CASE status WHEN 'pending' THEN $3
                                    ELSE replace(failure_reason, $1, $2) END,
                   result_fingerprint = replace(result_fingerprint, $1, $2),
                   completed_at = COALESCE(completed_at, $4)
               WHERE id = ANY($5::text[])""",
            customer_id,
            hashed,
            ERASED_REASON,
            now,
            computations,
        )
    )
    counts["score_requests"] = _count(
        await connection.execute(
            """UPDATE score_requests
               SET customer_id = $2, metadata = NULL,
                   callback_url = replace(callback_url, $1, $2),
                   status = CASE status WHEN 'pending' THEN 'failed' ELSE status END,
                   failure_reason = CASE status WHEN 'pending' THEN $3
                                    ELSE replace(failure_reason, $1, $2) END,
                   completed_at = COALESCE(completed_at, $4)
               WHERE correlation_id = ANY($5::text[])""",
            customer_id,
            hashed,
            ERASED_REASON,
            now,
            requests,
        )
    )

    counts = counts_by_table(counts)
    await connection.execute(
        """INSERT INTO erasures
           (id, client_id, customer_hash, requested_by, erased_at, rows_changed, detail)
           VALUES ($1, $2, $3, $4, $5, $6, $7)""",
        erasure.id,
        client_id,
        hashed,
        erasure.requested_by,
        now,
        sum(counts.values()),
        json.dumps(counts),
    )
    return counts


async def _erase_from_deliveries(
    connection: asyncpg.Connection,
    requests: list[str],
    customer_id: str,
    hashed: str,
    now: datetime,
) -> int:
    """Cancel the open deliveries of ``requests`` and replace the ID in all of them.

    Returns the number of deliveries changed.
    """
    cancelled = await connection.fetch(
        """UPDATE deliveries
           SET status = 'cancelled', held_until = NULL, lease_owner = NULL,
               lease_expires_at = NULL, updated_at = $1
           WHERE status IN ('pending', 'held') AND correlation_id = ANY($2::text[])
           RETURNING id""",
        now,
        requests,
    )
    renamed = await connection.fetch(
        """UPDATE deliveries
           SET url = replace(url, $1, $2), last_error = replace(last_error, $1, $2)
           WHERE correlation_id = ANY($3::text[])
             AND (strpos(url, $1) > 0 OR strpos(last_error, $1) > 0)
           RETURNING id""",
        customer_id,
        hashed,
        requests,
    )
    bodies = await connection.fetch(
        "SELECT id, payload FROM deliveries WHERE correlation_id = ANY($1::text[])",
        requests,
    )
    rewritten = []
    for row in bodies:
        payload = replace_customer_id(bytes(row["payload"]), customer_id, hashed)
        if payload is not None:
            rewritten.append((payload, row["id"]))
    await connection.executemany(
        "UPDATE deliveries SET payload = $1 WHERE id = $2", rewritten
    )
    changed = {row["id"] for row in cancelled} | {row["id"] for row in renamed}
    return len(changed | {delivery_id for _, delivery_id in rewritten})
