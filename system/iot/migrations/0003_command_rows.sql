-- Commands live as rows (docs/design.md §5 Commands): a device costs rows, not a broker
-- queue. The row is the command's state (status, attempt, lease); command_events holds its
-- timeline, written in the same transaction as each change.

ALTER TABLE commands ADD COLUMN leased_until timestamptz;
ALTER TABLE commands ADD COLUMN requeues integer NOT NULL DEFAULT 0;

-- A poll claims its device's pending commands oldest first.
CREATE INDEX commands_pending_idx ON commands (device_id, created_at, id)
    WHERE status IN ('queued', 'delivered');
-- The sweep finds pending commands past their ttl, and delivered ones whose lease lapsed.
CREATE INDEX commands_expiry_idx ON commands (expires_at)
    WHERE status IN ('queued', 'delivered');
CREATE INDEX commands_lease_idx ON commands (leased_until)
    WHERE status = 'delivered';
