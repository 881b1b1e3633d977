#!/bin/sh
# The audit store's database, beside Temporal's on the same PostgreSQL server but apart from them,
# with the two roles docs/production.md ("Audit store") asks for:
#   changeguard_audit_owner  owns the database; the audit-schema job creates the table, its
#                            indexes and append-only triggers with it (changeguard audit --limit 1);
#   changeguard_worker       what the workers connect as: INSERT and SELECT on the tables the owner
#                            creates (default privileges), nothing that could drop a trigger.
# Temporal's role gets nothing here, and these roles nothing of Temporal's. Outside compose, create
# the table with audit-schema.sql as the owner instead (it grants changeguard_worker explicitly).
#
# Run once by the postgres image on an empty data directory (/docker-entrypoint-initdb.d); also
# by hand: PGHOST=... PGUSER=<superuser> CHANGEGUARD_AUDIT_OWNER_PASSWORD=... \
#   CHANGEGUARD_AUDIT_PASSWORD=... sh init-audit-db.sh
set -eu
: "${CHANGEGUARD_AUDIT_OWNER_PASSWORD:?password of changeguard_audit_owner}"
: "${CHANGEGUARD_AUDIT_PASSWORD:?password of changeguard_worker}"

psql -v ON_ERROR_STOP=1 --dbname postgres \
    -v owner_password="$CHANGEGUARD_AUDIT_OWNER_PASSWORD" \
    -v worker_password="$CHANGEGUARD_AUDIT_PASSWORD" <<'SQL'
CREATE ROLE changeguard_audit_owner LOGIN PASSWORD :'owner_password';
CREATE ROLE changeguard_worker LOGIN PASSWORD :'worker_password';
CREATE DATABASE changeguard_audit OWNER changeguard_audit_owner;
REVOKE ALL ON DATABASE changeguard_audit FROM PUBLIC;
GRANT CONNECT ON DATABASE changeguard_audit TO changeguard_audit_owner, changeguard_worker;
\connect changeguard_audit
GRANT USAGE ON SCHEMA public TO changeguard_worker;
ALTER DEFAULT PRIVILEGES FOR ROLE changeguard_audit_owner IN SCHEMA public
    GRANT INSERT, SELECT ON TABLES TO changeguard_worker;
SQL
echo "init-audit-db: created database changeguard_audit, roles changeguard_audit_owner and changeguard_worker"
