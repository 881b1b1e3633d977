-- The changeguard audit store (the change ledger) on PostgreSQL: the table, its indexes and the
-- triggers that make it append-only, created by the table's OWNER; the workers' role may only
-- append and read. Run it as the owner, once, and again after an upgrade (it is idempotent):
--
--   psql "postgresql://changeguard_audit_owner@db.internal/changeguard_audit" \
--        -v ON_ERROR_STOP=1 -f infra/postgres/audit-schema.sql
--
-- Roles (see init-audit-db.sh and docs/production.md, "Audit store"):
--   changeguard_audit_owner  owns the table and the trigger function: only it (or a superuser) can
--                            drop or disable a trigger. Keep its password away from workers.
--   changeguard_worker       what workers connect as: INSERT and SELECT, nothing else. No UPDATE,
--                            DELETE, TRUNCATE, no ownership, so no ALTER TABLE ... DISABLE TRIGGER;
--                            not a superuser, so no SET session_replication_role = replica either.
--
-- The DDL below is activities/audit_postgres.py's postgres_schema(), verbatim (a test checks it); a
-- store whose table, columns, unique index and triggers exist is used by workers without any DDL.

CREATE TABLE IF NOT EXISTS audit_records (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    record_id TEXT NOT NULL UNIQUE,
    action TEXT NOT NULL,
    actor TEXT NOT NULL,
    at TIMESTAMPTZ NOT NULL,
    change_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    guardrail TEXT NOT NULL,
    policy_hash TEXT NOT NULL,
    report_hash TEXT NOT NULL,
    reason TEXT NOT NULL,
    expires_at TIMESTAMPTZ,
    detail JSONB NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
ALTER TABLE audit_records ADD COLUMN IF NOT EXISTS prev_hash TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_records ADD COLUMN IF NOT EXISTS record_hash TEXT NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS audit_records_change_at ON audit_records (change_id, at, seq);
CREATE INDEX IF NOT EXISTS audit_records_at ON audit_records (at, seq);
CREATE UNIQUE INDEX IF NOT EXISTS audit_records_started_once ON audit_records (change_id)
    WHERE action = 'started';
CREATE OR REPLACE FUNCTION audit_records_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_records is append-only: % is refused', TG_OP;
END
$$;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgrelid = 'audit_records'::regclass AND tgname = 'audit_records_append_only') THEN
        CREATE TRIGGER audit_records_append_only BEFORE UPDATE OR DELETE ON audit_records
            FOR EACH ROW EXECUTE FUNCTION audit_records_refuse();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgrelid = 'audit_records'::regclass AND tgname = 'audit_records_no_truncate') THEN
        CREATE TRIGGER audit_records_no_truncate BEFORE TRUNCATE ON audit_records
            FOR EACH STATEMENT EXECUTE FUNCTION audit_records_refuse();
    END IF;
END
$$;

-- The workers' role: append and read. The identity column needs no sequence grant for INSERT.
REVOKE ALL ON audit_records FROM PUBLIC;
GRANT SELECT, INSERT ON audit_records TO changeguard_worker;
