#!/bin/sh
# Create (or upgrade) Temporal's two PostgreSQL databases: persistence and visibility.
# Runs in temporalio/admin-tools (temporal-sql-tool) before the server starts; infra/compose.yaml.
# Re-running is safe: existing databases are kept, and update-schema applies only newer versions.
set -eu

host=${POSTGRES_SEEDS:-postgresql}
port=${DB_PORT:-5432}
schema=/etc/temporal/schema/postgresql/v12

# The password travels in SQL_PASSWORD (read by temporal-sql-tool), not on the command line.
export SQL_PASSWORD="${SQL_PASSWORD:-$POSTGRES_PWD}"
sql() {
    temporal-sql-tool --plugin postgres12 --ep "$host" -p "$port" -u "$POSTGRES_USER" "$@"
}

for db in temporal:temporal temporal_visibility:visibility; do
    name=${db%%:*}
    dir=${db##*:}
    echo "setup-schema: $name"
    # `create` fails when the database exists; that is the one failure to tolerate.
    sql --db "$name" create 2>/dev/null || echo "setup-schema: $name exists"
    sql --db "$name" setup-schema -v 0.0
    sql --db "$name" update-schema -d "$schema/$dir/versioned"
done
echo "setup-schema: done"
