-- Rollouts: one command to many devices in phases (docs/design.md §8 Rollouts; the rules are
-- iot/rollouts/rules.py, the statements iot/rollouts/store.py).

-- A device's labels, set by its owner ({"site": "north", "model": "esp32-s3"}); a rollout can
-- target the devices whose labels contain a selector (labels @> selector: the GIN index).
ALTER TABLE devices ADD COLUMN labels jsonb NOT NULL DEFAULT '{}'::jsonb
    CHECK (jsonb_typeof(labels) = 'object');
CREATE INDEX devices_labels_idx ON devices USING gin (labels jsonb_path_ops);

CREATE TABLE rollouts (
    id                 uuid PRIMARY KEY,
    owner_id           uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    state              text NOT NULL CHECK (state IN
                           ('scheduled', 'running', 'paused', 'completed', 'aborted', 'cancelled')),
    command_name       text NOT NULL,
    command_args       jsonb NOT NULL,
    command_ttl        integer NOT NULL CHECK (command_ttl > 0),
    target             jsonb NOT NULL,            -- as asked: device ids, a label selector, all
    total              integer NOT NULL,          -- targets, fixed when the rollout is created
    phase_ends         integer[] NOT NULL,        -- cumulative targets sent by each phase's end
    phase              integer NOT NULL DEFAULT 0,  -- the phase being sent (0-based)
    rate_per_minute    double precision NOT NULL CHECK (rate_per_minute > 0),
    phase_wait_seconds double precision NOT NULL DEFAULT 0,
    approval           boolean NOT NULL DEFAULT false,  -- pause at each phase's end
    max_failure_share  double precision NOT NULL,
    min_finished       integer NOT NULL,
    sent               integer NOT NULL DEFAULT 0,  -- targets handled (sent or refused)
    run_seconds        double precision NOT NULL DEFAULT 0,  -- running time before running_since
    running_since      timestamptz,               -- set while running: the rate counts from it
    phase_done_at      timestamptz,               -- the current phase finished (its wait runs)
    driver             text,                      -- the replica driving it, until driver_until
    driver_until       timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    finished_at        timestamptz,
    -- aborted or cancelled: its commands not yet final were cancelled (by a driver, after)
    commands_cancelled boolean NOT NULL DEFAULT false
);
CREATE INDEX rollouts_owner_idx ON rollouts (owner_id, created_at);
CREATE INDEX rollouts_active_idx ON rollouts (state)
    WHERE state = 'running' OR (state IN ('aborted', 'cancelled') AND NOT commands_cancelled);

-- The targets, in the order the rollout reaches them. command_id is derived from the rollout
-- and the device (the Idempotency-Key of POST /commands): however often a driver retries or
-- crashes, a device gets at most one command of a rollout.
CREATE TABLE rollout_targets (
    rollout_id uuid NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
    position   integer NOT NULL,
    device_id  uuid NOT NULL,
    phase      integer NOT NULL,
    command_id uuid NOT NULL,
    sent_at    timestamptz,
    refused    text,                              -- why no command was sent (cap, deleted)
    PRIMARY KEY (rollout_id, position),
    UNIQUE (rollout_id, device_id)
);
CREATE INDEX rollout_targets_command_idx ON rollout_targets (command_id);

-- Why a rollout paused, advanced, stopped: who (a person, or the driver) and when.
CREATE TABLE rollout_decisions (
    rollout_id uuid NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
    at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor      text NOT NULL,
    decision   text NOT NULL,
    reason     text NOT NULL DEFAULT ''
);
CREATE INDEX rollout_decisions_idx ON rollout_decisions (rollout_id, at);
