-- GET /sensors pages a person's devices by id (WHERE owner_id = $1 AND id > $2 ORDER BY id
-- LIMIT n): with this index a page reads its own rows only, however many devices the person
-- has. It serves every lookup by owner_id too, so the index on owner_id alone goes.
CREATE INDEX devices_owner_id_idx ON devices (owner_id, id);
DROP INDEX devices_owner_idx;
