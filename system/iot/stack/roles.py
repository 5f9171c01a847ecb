"""Least-privilege Postgres roles: who may do what to which table.

The owner role (``IOT_POSTGRES_USER``, ``iot``) runs the migrations and owns every table; only it
(and the cluster's superuser) may create, alter, drop or truncate them. Each of our processes
connects as a role named ``<owner>_<role>`` that holds only the data privileges its work needs:

- ``api``: reads and writes rows of every table (not the migration bookkeeping); tables a later
  migration creates get the same through the owner's default privileges.
- ``sensors`` (the readings writer): inserts and corrects readings, sees device ids only (to drop
  readings of deleted devices); never users, nor device token hashes.
- ``commandlog``: stores commands and their events, sees device ids only.

A table a later migration adds is reachable by ``sensors`` and ``commandlog`` only once it is
listed here. Roles are created by the superuser with their passwords (``setup.bootstrap_database``);
the grants are applied by the owner after every migration run (``apply``), revoking first, so the
privileges are exactly these whatever a migration did (a table recreated under the same name gets
them back). Rows inserted through a partitioned table's parent need privileges on the parent only,
so partitions the owner creates later need nothing here.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

ROLES = ("api", "sensors", "commandlog")
DML = "SELECT, INSERT, UPDATE, DELETE"
# role -> table -> privileges (a column list in parentheses narrows SELECT to those columns).
GRANTS: dict[str, dict[str, str]] = {
    "sensors": {"readings": "SELECT, INSERT, UPDATE", "devices": "SELECT (id)"},
    "commandlog": {
        "commands": "SELECT, INSERT",
        "command_events": "SELECT, INSERT",
        "devices": "SELECT (id)",
    },
}
_OWN_TABLES = (
    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
    " AND tableowner = current_user AND tablename NOT LIKE '%%yoyo%%' ORDER BY tablename"
)


def apply(conn: psycopg.Connection[Any]) -> list[str]:
    """Grant each existing product role exactly its privileges, as the owner, in one
    transaction (no moment without them). Returns the roles granted to."""
    owner = conn.execute("SELECT current_user").fetchone()[0]  # type: ignore[index]
    tables = [r[0] for r in conn.execute(_OWN_TABLES).fetchall()]
    done = []
    with conn.transaction():
        for role in ROLES:
            name = f"{owner}_{role}"
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
                continue
            statements = [
                "REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}",
                "REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {role}",
            ]
            if role == "api":
                wanted = {t: DML for t in tables}
                statements += [
                    "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT "
                    + DML
                    + " ON TABLES TO {role}",
                    "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES"
                    " TO {role}",
                    "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}",
                ]
            else:
                wanted = {t: p for t, p in GRANTS[role].items() if t in tables}
            statements += [f"GRANT {p} ON {{table_{t}}} TO {{role}}" for t, p in wanted.items()]
            names = {"role": sql.Identifier(name)} | {
                f"table_{t}": sql.Identifier(t) for t in wanted
            }
            for statement in statements:
                conn.execute(sql.SQL(statement).format(**names))
            done.append(name)
    return done


def create(conn: psycopg.Connection[Any], roles: dict[str, str]) -> None:
    """Create (or set the password of) each login role, as the cluster's superuser.
    ``roles``: name -> password. No role may create databases, roles or other roles' objects."""
    for name, password in roles.items():
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
        verb = "ALTER" if exists else "CREATE"
        conn.execute(
            sql.SQL(verb + " ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(password)
            )
        )
