"""``python -m upload_service.db_role``: the upload service's own PostgreSQL role, with only its rights.

Run it as the pipeline's role, which owns the tables (docs/deploy.md runs it as a Cloud Run job);
``QA_PG_DSN`` (or ``--dsn``) names the database, libpq's ``PGPASSWORD`` the password. It

1. applies the pipeline's schema migrations if the pipeline has not run yet (they are the
   pipeline's own, run as the pipeline's role: the service itself never runs DDL);
2. creates the role if it is missing (``LOGIN``, no password: set one with
   ``gcloud sql users set-password`` or ``ALTER ROLE``);
3. takes away every right the role has on the tables and grants exactly what the service's SQL
   uses (``upload_service/services/sql.py``): reading the schema version, ``qa_files`` and
   ``qa_answers``, and reading and writing its own rows in ``qa_uploads``;
4. checks that the role has no way to run DDL (superuser, CREATEDB, CREATEROLE, CREATE on the
   schema, or membership of a table owner) and fails with one ``error:`` line if it has.

``--print-sql`` prints the statements of step 3 instead (docs/deploy.md shows them).
"""

from __future__ import annotations

import argparse
import os
import re
import sys

import psycopg
from psycopg import sql

from beam_qa.store.schema import SCHEMA_VERSION_TABLE, ensure_schema

DEFAULT_ROLE = "beam_qa_upload"
READ_ONLY = (SCHEMA_VERSION_TABLE, "qa_files", "qa_answers")
OWN_TABLE = "qa_uploads"
# Completing a claimed upload (UPDATE) and dropping a claim whose object failed (DELETE).
OWN_RIGHTS = ("SELECT", "INSERT", "UPDATE", "DELETE")

_ROLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def grants(database: str, role: str) -> list[sql.Composed]:
    """The statements that leave ``role`` with exactly the service's rights in ``database``."""
    who = sql.Identifier(role)
    return [
        sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {}").format(who),
        sql.SQL("REVOKE CREATE ON SCHEMA public FROM {}").format(who),
        sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database), who),
        sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(who),
        sql.SQL("GRANT SELECT ON {} TO {}").format(sql.SQL(", ").join(map(sql.Identifier, READ_ONLY)), who),
        sql.SQL("GRANT {} ON {} TO {}").format(sql.SQL(", ".join(OWN_RIGHTS)), sql.Identifier(OWN_TABLE), who),
    ]


def script(database: str, role: str) -> str:
    """The grants as SQL text, one statement a line."""
    return "".join(f"{statement.as_string()};\n" for statement in grants(database, role))


DDL_ROUTES = """
SELECT r.rolsuper, r.rolcreatedb, r.rolcreaterole, has_schema_privilege(r.oid, 'public', 'CREATE'),
       has_database_privilege(r.oid, current_database(), 'CREATE'),
       ARRAY(SELECT t.tablename::text FROM pg_tables t WHERE t.schemaname = 'public'
             AND pg_has_role(r.oid, t.tableowner, 'USAGE') ORDER BY 1)
FROM pg_roles r WHERE r.rolname = %s
"""


def ddl_routes(conn, role: str) -> list[str]:
    """Every way ``role`` could still change the schema (empty when it cannot)."""
    superuser, createdb, createrole, create_schema, create_db, owned = conn.execute(DDL_ROUTES, (role,)).fetchone()
    routes = [name for name, found in (("SUPERUSER", superuser), ("CREATEDB", createdb), ("CREATEROLE", createrole),
                                       ("CREATE on schema public", create_schema),
                                       ("CREATE on the database", create_db)) if found]
    routes += [f"owner of {table} (through a role it belongs to)" for table in owned]
    return routes


def apply(conn, role: str) -> list[int]:
    """Steps 1 to 3 on an autocommit connection; returns the migrations applied.

    Raises:
        RuntimeError: the role can still run DDL (step 4).
    """
    applied = ensure_schema(conn)
    if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    database = conn.execute("SELECT current_database()").fetchone()[0]
    with conn.transaction():
        for statement in grants(database, role):
            conn.execute(statement)
    routes = ddl_routes(conn, role)
    if routes:
        raise RuntimeError(f"role {role} can still change the schema: {', '.join(routes)}; revoke that (for CREATE "
                           "on schema public granted to PUBLIC: REVOKE CREATE ON SCHEMA public FROM PUBLIC)")
    return applied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m upload_service.db_role", description=__doc__.splitlines()[0])
    parser.add_argument("--role", default=DEFAULT_ROLE, help=f"the service's role (default {DEFAULT_ROLE})")
    parser.add_argument("--dsn", default=os.environ.get("QA_PG_DSN", ""),
                        help="libpq DSN of the database, as the tables' owner (default $QA_PG_DSN)")
    parser.add_argument("--print-sql", metavar="DATABASE", help="print the grants for DATABASE; connect to nothing")
    args = parser.parse_args(argv)
    if not _ROLE_NAME.fullmatch(args.role):
        print(f"error: --role {args.role!r} must be lowercase letters, digits and _", file=sys.stderr)
        return 2
    if args.print_sql:
        print(script(args.print_sql, args.role), end="")
        return 0
    if not args.dsn:
        print("error: no database: set QA_PG_DSN (or --dsn) to the pipeline's database, as its role", file=sys.stderr)
        return 2
    try:
        with psycopg.connect(args.dsn, autocommit=True, connect_timeout=10) as conn:
            applied = apply(conn, args.role)
    except (psycopg.Error, RuntimeError) as exc:
        print(f"error: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    if applied:
        print(f"applied the pipeline's schema migrations {applied}")
    print(f"role {args.role}: SELECT on {', '.join(READ_ONLY)}; {', '.join(OWN_RIGHTS)} on {OWN_TABLE}; no DDL")
    return 0


if __name__ == "__main__":
    sys.exit(main())
