-- Pending deliveries by receiver host and due time. A claim walks the hosts
-- through this index when the oldest due rows belong to hosts it must skip
-- (an open circuit, or all slots in use), so a large backlog of one host
-- costs a claim one index seek instead of a scan past every row.
CREATE INDEX deliveries_due_by_host
    ON deliveries (host, next_attempt_at) WHERE status = 'pending';
