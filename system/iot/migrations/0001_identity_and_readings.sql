-- Users, devices, sensor readings and the command event log.

CREATE TABLE users (
    id            uuid PRIMARY KEY,
    username      text NOT NULL UNIQUE CHECK (username ~ '^[A-Za-z0-9_.@-]{1,64}$'),
    password_hash text NOT NULL,
    is_admin      boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE devices (
    id         uuid PRIMARY KEY,
    owner_id   uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name       text NOT NULL CHECK (length(name) BETWEEN 1 AND 128),
    token_hash text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    token_rotated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX devices_owner_idx ON devices (owner_id);

-- One row per (device, sensor, instant): a redelivered or retried reading never adds a row.
-- No foreign key to devices: readings of a device deleted while they were queued are dropped
-- by the insert itself instead of failing the worker forever.
CREATE TABLE readings (
    device_id   uuid NOT NULL,
    sensor      text NOT NULL,
    ts          timestamptz NOT NULL,
    value       double precision NOT NULL,
    client_id   text,
    received_at timestamptz NOT NULL,
    stored_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, sensor, ts)
);

-- Every command transition; event_id makes a redelivered event harmless.
CREATE TABLE command_events (
    event_id   uuid PRIMARY KEY,
    command_id uuid NOT NULL,
    device_id  uuid NOT NULL,
    status     text NOT NULL,
    attempt    integer NOT NULL DEFAULT 0,
    at         timestamptz NOT NULL,
    detail     jsonb NOT NULL DEFAULT '{}'::jsonb,
    stored_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX command_events_command_idx ON command_events (command_id, at);
CREATE INDEX command_events_device_idx ON command_events (device_id, at DESC);
