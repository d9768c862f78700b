-- Service-wide values, such as the check value of the master key and the
-- service's signing keys. The service encrypts or derives each value; the
-- store keeps the bytes as given.
CREATE TABLE service_settings (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    updated_at REAL NOT NULL
);
