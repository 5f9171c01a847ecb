-- The maintenance job deletes finished commands not updated within their retention
-- (IOT_COMMANDS_RETENTION_DAYS), a batch at a time: this index finds them without a scan of
-- every command. Pending commands are not in it.

CREATE INDEX commands_finished_idx ON commands (updated_at)
    WHERE status IN ('succeeded', 'failed', 'rejected', 'expired', 'cancelled', 'dead');
