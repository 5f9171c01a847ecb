-- A person's own cap on registered devices (NULL: the default, IOT_MAX_DEVICES_PER_USER).
ALTER TABLE users ADD COLUMN max_devices integer CHECK (max_devices >= 0);

-- Every API replica caches who a token belongs to and hears changes on the `iot_devices`
-- channel (LISTEN, commands/wakeups.py): a person deleted or made or unmade an admin, and a
-- device deleted however it happens (deleting a person deletes their devices), are announced
-- in the same transaction, so the change holds on every replica at once.
CREATE FUNCTION announce_credential_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('iot_devices', OLD.id::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER users_credential_change AFTER DELETE OR UPDATE OF is_admin ON users
    FOR EACH ROW EXECUTE FUNCTION announce_credential_change();
CREATE TRIGGER devices_credential_change AFTER DELETE ON devices
    FOR EACH ROW EXECUTE FUNCTION announce_credential_change();
