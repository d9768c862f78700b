-- Fetch tracking, held deliveries, request timelines, receiver health,
-- callback handshakes and the audit of erasures.

ALTER TABLE score_requests ADD COLUMN delivered_at REAL;
ALTER TABLE score_requests ADD COLUMN fetched_at REAL;
CREATE INDEX score_requests_unfetched ON score_requests (delivered_at)
    WHERE fetched_at IS NULL AND delivered_at IS NOT NULL;

-- SQLite cannot change a CHECK constraint, so the table is rebuilt to admit
-- the status 'held'. Foreign keys are off while migrations run.
CREATE TABLE deliveries_new (
    id TEXT PRIMARY KEY,
    message_id TEXT NOT NULL,
    client_id TEXT REFERENCES clients (id),
    correlation_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    url TEXT NOT NULL,
    host TEXT NOT NULL,
    payload BLOB NOT NULL,
    status TEXT NOT NULL
        CHECK (status IN ('pending', 'delivered', 'failed', 'cancelled', 'held')),
    attempt_count INTEGER NOT NULL DEFAULT 0,
    attempts_in_round INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    lease_owner TEXT,
    lease_expires_at REAL,
    last_error TEXT,
    last_status_code INTEGER,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    -- A held delivery becomes failed at this time unless its receiver recovers.
    held_until REAL
);
INSERT INTO deliveries_new
    (id, message_id, client_id, correlation_id, event_type, url, host, payload,
     status, attempt_count, attempts_in_round, next_attempt_at, lease_owner,
     lease_expires_at, last_error, last_status_code, created_at, updated_at)
SELECT id, message_id, client_id, correlation_id, event_type, url, host, payload,
       status, attempt_count, attempts_in_round, next_attempt_at, lease_owner,
       lease_expires_at, last_error, last_status_code, created_at, updated_at
FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_new RENAME TO deliveries;
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_by_created ON deliveries (created_at, id);
CREATE INDEX deliveries_by_correlation ON deliveries (correlation_id);
CREATE INDEX deliveries_held ON deliveries (client_id, host, created_at)
    WHERE status = 'held';
CREATE INDEX deliveries_held_until ON deliveries (held_until) WHERE status = 'held';

-- Steps of a score request, written in the transaction of each change.
CREATE TABLE timeline_entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    correlation_id TEXT NOT NULL,
    at REAL NOT NULL,
    step TEXT NOT NULL,
    -- 'client' steps are shown to the client; 'operator' steps only to operators.
    audience TEXT NOT NULL CHECK (audience IN ('client', 'operator')),
    detail TEXT
);
CREATE INDEX timeline_by_request ON timeline_entries (correlation_id, id);

-- The latest outcome of attempts per client and receiver host.
CREATE TABLE receiver_health (
    client_id TEXT NOT NULL,
    host TEXT NOT NULL,
    failing_since REAL,
    last_error TEXT,
    last_error_at REAL,
    last_success_at REAL,
    PRIMARY KEY (client_id, host)
);

-- Answers of callback origins to the validation handshake, per client.
CREATE TABLE callback_origins (
    client_id TEXT NOT NULL,
    origin TEXT NOT NULL,
    allowed INTEGER NOT NULL,
    reason TEXT,
    checked_at REAL NOT NULL,
    PRIMARY KEY (client_id, origin)
);

-- Who erased which customer of which client; the customer is named only by
-- a keyed hash.
CREATE TABLE erasures (
    id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    customer_hash TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    erased_at REAL NOT NULL,
    rows_changed INTEGER NOT NULL,
    detail TEXT
);
