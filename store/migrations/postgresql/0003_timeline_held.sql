-- Fetch tracking, held deliveries, request timelines, receiver health,
-- callback handshakes and the audit of erasures.

ALTER TABLE score_requests ADD COLUMN delivered_at TIMESTAMPTZ;
ALTER TABLE score_requests ADD COLUMN fetched_at TIMESTAMPTZ;
CREATE INDEX score_requests_unfetched ON score_requests (delivered_at)
    WHERE fetched_at IS NULL AND delivered_at IS NOT NULL;

ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_status_check
    CHECK (status IN ('pending', 'delivered', 'failed', 'cancelled', 'held'));
-- A held delivery becomes failed at this time unless its receiver recovers.
ALTER TABLE deliveries ADD COLUMN held_until TIMESTAMPTZ;
CREATE INDEX deliveries_held ON deliveries (client_id, host, created_at)
    WHERE status = 'held';
CREATE INDEX deliveries_held_until ON deliveries (held_until) WHERE status = 'held';

-- Steps of a score request, written in the transaction of each change.
CREATE TABLE timeline_entries (
    id BIGSERIAL PRIMARY KEY,
    correlation_id TEXT NOT NULL,
    at TIMESTAMPTZ NOT NULL,
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
    failing_since TIMESTAMPTZ,
    last_error TEXT,
    last_error_at TIMESTAMPTZ,
    last_success_at TIMESTAMPTZ,
    PRIMARY KEY (client_id, host)
);

-- Answers of callback origins to the validation handshake, per client.
CREATE TABLE callback_origins (
    client_id TEXT NOT NULL,
    origin TEXT NOT NULL,
    allowed BOOLEAN NOT NULL,
    reason TEXT,
    checked_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (client_id, origin)
);

-- Who erased which customer of which client; the customer is named only by
-- a keyed hash.
CREATE TABLE erasures (
    id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    customer_hash TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    erased_at TIMESTAMPTZ NOT NULL,
    rows_changed INTEGER NOT NULL,
    detail TEXT
);
