-- Indexes for the retention sweep and for erasing a customer. Each sweep
-- then reads only the rows it deletes and the few that a pending or held
-- delivery keeps, however many older rows were scrubbed before.
CREATE INDEX scores_by_valid_until ON scores (valid_until);
CREATE INDEX score_requests_by_score ON score_requests (score_id)
    WHERE score_id IS NOT NULL;
CREATE INDEX score_requests_with_metadata ON score_requests (completed_at)
    WHERE metadata IS NOT NULL;
CREATE INDEX timeline_by_time ON timeline_entries (at);
CREATE INDEX idempotency_keys_by_created ON idempotency_keys (created_at);
CREATE INDEX idempotency_keys_by_request ON idempotency_keys (correlation_id);
CREATE INDEX computations_by_customer ON computations (client_id, customer_id);
CREATE INDEX erasures_by_client ON erasures (client_id, erased_at);
