#!/bin/sh
# The audit store's own database and role (CHANGEGUARD_AUDIT_URL), beside Temporal's databases on
# the same PostgreSQL server but owned by another role: Temporal's user cannot touch the audit
# trail, and the audit role nothing of Temporal's. The workers create the table on first use.
#
# Run once by the postgres image on an empty data directory (/docker-entrypoint-initdb.d); also
# works by hand: PGHOST=... PGUSER=<superuser> CHANGEGUARD_AUDIT_PASSWORD=... sh init-audit-db.sh
set -eu
: "${CHANGEGUARD_AUDIT_PASSWORD:?password of the changeguard role}"

psql -v ON_ERROR_STOP=1 --dbname postgres -v password="$CHANGEGUARD_AUDIT_PASSWORD" <<'SQL'
CREATE ROLE changeguard LOGIN PASSWORD :'password';
CREATE DATABASE changeguard_audit OWNER changeguard;
REVOKE ALL ON DATABASE changeguard_audit FROM PUBLIC;
SQL
echo "init-audit-db: created role changeguard and database changeguard_audit"
