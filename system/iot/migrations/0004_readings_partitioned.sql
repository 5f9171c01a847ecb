-- Readings partitioned by day of ts (UTC). The maintenance job (iot.maintenance) creates the
-- partitions ahead of time, drops those past the retention and moves rows out of the default
-- partition. The default partition takes any ts that has no partition (yet), so an insert never
-- fails for want of one: "2xx means durable" holds for far-past and far-future readings too.
--
-- The existing table becomes the default partition as it is (no copy here; the job moves its
-- rows into day partitions). Identity stays (device, sensor, ts): the key includes the partition
-- key, so INSERT ... ON CONFLICT (device_id, sensor, ts) keeps working through the parent. The
-- key's index also carries value, so a history query reads the index only (docs/scaling.md).

ALTER TABLE readings RENAME TO readings_default;
ALTER TABLE readings_default DROP CONSTRAINT readings_pkey;

CREATE TABLE readings (
    device_id   uuid NOT NULL,
    sensor      text NOT NULL,
    ts          timestamptz NOT NULL,
    value       double precision NOT NULL,
    client_id   text,
    received_at timestamptz NOT NULL,
    stored_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, sensor, ts) INCLUDE (value)
) PARTITION BY RANGE (ts);

-- Builds the key's index on the old rows; the only scan this migration makes.
ALTER TABLE readings ATTACH PARTITION readings_default DEFAULT;

-- The roles that could use the old table keep their privileges on the new one in this same
-- transaction, so no writer ever meets a readings table it may not insert into.
DO $$
DECLARE g record;
BEGIN
    FOR g IN
        SELECT a.grantee::regrole::text AS grantee, a.privilege_type
        FROM pg_class c, aclexplode(c.relacl) a
        WHERE c.oid = 'readings_default'::regclass AND a.grantee <> 0
          AND a.grantee <> c.relowner
    LOOP
        EXECUTE format('GRANT %s ON readings TO %I', g.privilege_type, g.grantee);
    END LOOP;
END
$$;
