-- One row per command: its descriptor and its current status, kept by the command-log worker
-- from the events in command_events (which hold the whole timeline).

CREATE TABLE commands (
    id          uuid PRIMARY KEY,
    device_id   uuid NOT NULL,
    owner_id    uuid,
    name        text NOT NULL,
    args        jsonb NOT NULL DEFAULT '{}'::jsonb,
    ttl_seconds integer NOT NULL,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    status      text NOT NULL,
    attempt     integer NOT NULL DEFAULT 0,
    result      jsonb,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX commands_device_created_idx ON commands (device_id, created_at DESC, id DESC);
CREATE INDEX commands_status_idx ON commands (device_id, status);
