-- IDs are text chosen by the service.

CREATE TABLE clients (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    api_key_hash TEXT NOT NULL UNIQUE,
    -- Encrypted by the service; the store never sees a signing secret.
    signing_secrets BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);

-- One job at the backend for one customer of one client.
CREATE TABLE computations (
    id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL REFERENCES clients (id),
    customer_id TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'ready', 'failed')),
    created_at TIMESTAMPTZ NOT NULL,
    completed_at TIMESTAMPTZ,
    -- Canonical form of the first result, to tell a repeat from a contradiction.
    result_fingerprint TEXT,
    failure_reason TEXT
);
CREATE UNIQUE INDEX computations_one_pending
    ON computations (client_id, customer_id) WHERE status = 'pending';

CREATE TABLE scores (
    id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL REFERENCES clients (id),
    customer_id TEXT NOT NULL,
    computation_id TEXT NOT NULL REFERENCES computations (id),
    value INTEGER NOT NULL,
    computed_at TIMESTAMPTZ NOT NULL,
    valid_until TIMESTAMPTZ NOT NULL
);
CREATE INDEX scores_by_customer ON scores (client_id, customer_id, valid_until);

CREATE TABLE score_requests (
    correlation_id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL REFERENCES clients (id),
    customer_id TEXT NOT NULL,
    callback_url TEXT NOT NULL,
    metadata TEXT,
    status TEXT NOT NULL CHECK (status IN ('pending', 'ready', 'failed')),
    created_at TIMESTAMPTZ NOT NULL,
    completed_at TIMESTAMPTZ,
    computation_id TEXT REFERENCES computations (id),
    score_id TEXT REFERENCES scores (id),
    failure_reason TEXT
);
CREATE INDEX score_requests_by_computation ON score_requests (computation_id);
CREATE INDEX score_requests_by_customer ON score_requests (client_id, customer_id);

CREATE TABLE idempotency_keys (
    client_id TEXT NOT NULL REFERENCES clients (id),
    key TEXT NOT NULL,
    request_fingerprint TEXT NOT NULL,
    correlation_id TEXT NOT NULL REFERENCES score_requests (correlation_id),
    status_code INTEGER NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (client_id, key)
);

CREATE TABLE deliveries (
    id TEXT PRIMARY KEY,
    -- The Standard Webhooks message ID, kept by every retry and replay.
    message_id TEXT NOT NULL,
    -- NULL for events to the scoring backend.
    client_id TEXT REFERENCES clients (id),
    correlation_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    url TEXT NOT NULL,
    host TEXT NOT NULL,
    payload BYTEA NOT NULL,
    status TEXT NOT NULL
        CHECK (status IN ('pending', 'delivered', 'failed', 'cancelled')),
    attempt_count INTEGER NOT NULL DEFAULT 0,
    -- Attempts made since the last replay; the retry schedule counts these.
    attempts_in_round INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    lease_owner TEXT,
    lease_expires_at TIMESTAMPTZ,
    last_error TEXT,
    last_status_code INTEGER,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_by_created ON deliveries (created_at, id);
CREATE INDEX deliveries_by_correlation ON deliveries (correlation_id);

CREATE TABLE attempts (
    delivery_id TEXT NOT NULL REFERENCES deliveries (id),
    number INTEGER NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    duration_ms DOUBLE PRECISION NOT NULL,
    status_code INTEGER,
    error TEXT,
    response_excerpt TEXT,
    PRIMARY KEY (delivery_id, number)
);
