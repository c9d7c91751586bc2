-- The audit trail: one record per API request (who, what, which resource, when, from where,
-- outcome, request id; never the data itself). Records are written in batches by a background
-- writer and chained by a background sealer into `audit_seals` (SHA-256 over each record's
-- canonical content and the previous seal), so no request waits on one chain lock. The two
-- other append-only logs, `security_events` (0002) and `export_audit` (0001), are chained the
-- same way into seal tables of their own. `carebill audit verify` walks the three chains and
-- names the first broken record.
--
-- Retention: `carebill audit purge` (and the server's daily job) removes records older than
-- the retention period, a prefix of each chain at a time, writing first a checkpoint row
-- (`audit_checkpoints`) in the same transaction. See the comment above `audit_checkpoints` for
-- why letting the purge delete is safe.

CREATE TABLE audit_events (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at_us      BIGINT NOT NULL,
    actor      TEXT,
    action     TEXT NOT NULL,
    resource   TEXT,
    ip         TEXT,
    outcome    BIGINT NOT NULL,
    request_id TEXT
);
CREATE INDEX audit_events_actor ON audit_events (actor, seq);
CREATE INDEX audit_events_at ON audit_events (at_us);

-- One seal per record (or per gap a rolled-back insert left): the chain. One table per log.
CREATE TABLE audit_seals (
    seq          BIGINT PRIMARY KEY,
    kind         TEXT NOT NULL CHECK (kind IN ('event', 'gap')),
    hash         TEXT NOT NULL CHECK (length(hash) = 64),
    sealed_at_us BIGINT NOT NULL
);
CREATE TABLE security_event_seals (
    seq          BIGINT PRIMARY KEY,
    kind         TEXT NOT NULL CHECK (kind IN ('event', 'gap')),
    hash         TEXT NOT NULL CHECK (length(hash) = 64),
    sealed_at_us BIGINT NOT NULL
);
CREATE TABLE export_audit_seals (
    seq          BIGINT PRIMARY KEY,
    kind         TEXT NOT NULL CHECK (kind IN ('event', 'gap')),
    hash         TEXT NOT NULL CHECK (length(hash) = 64),
    sealed_at_us BIGINT NOT NULL
);

-- Retention checkpoints: a purge of chain `chain` removed its records and seals with
-- seq <= through_seq (those above prev_through_seq in this purge); `through_hash` is the seal
-- at through_seq, where `audit verify` now starts the walk. `hash` chains the checkpoints of a
-- chain among themselves (SHA-256 over the previous checkpoint's hash and this row).
--
-- Why letting the purge delete is safe. The logs and seal tables refuse UPDATE and TRUNCATE
-- always, and refuse DELETE of any row above the newest checkpoint of their chain. So:
-- - nothing can be deleted without first inserting a checkpoint that covers it, and a
--   checkpoint can never be changed or removed (this table is append-only): every deletion
--   leaves a permanent row saying up to where, how many, before which time, when and by whom;
-- - a checkpoint is accepted only if it continues the previous one of its chain
--   (prev_through_seq = the newest through_seq; unique, so two racing purges cannot both
--   succeed) and its through_hash is the seal actually stored at through_seq: it can only be
--   placed on the real chain;
-- - the purge inserts the checkpoint and deletes the rows under it in one transaction, so after
--   commit nothing at or below a boundary is left to delete; rows above it stay undeletable;
-- - someone who bypasses these triggers (DDL rights) and forges or edits a checkpoint is caught
--   by `audit verify`: the checkpoints' own hash chain, the first seal after the boundary
--   (hashed over through_hash) and the rows left under a boundary are all checked.
CREATE TABLE audit_checkpoints (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    chain            TEXT NOT NULL CHECK (chain IN ('audit', 'security', 'export')),
    prev_through_seq BIGINT NOT NULL CHECK (prev_through_seq >= 0),
    through_seq      BIGINT NOT NULL,
    through_hash     TEXT NOT NULL CHECK (length(through_hash) = 64),
    records_purged   BIGINT NOT NULL CHECK (records_purged >= 0),
    seals_purged     BIGINT NOT NULL CHECK (seals_purged >= 0),
    purged_before_us BIGINT NOT NULL,
    at_us            BIGINT NOT NULL,
    actor            TEXT NOT NULL,
    hash             TEXT NOT NULL CHECK (length(hash) = 64),
    CHECK (through_seq > prev_through_seq),
    UNIQUE (chain, prev_through_seq)
);
CREATE INDEX audit_checkpoints_chain ON audit_checkpoints (chain, through_seq);

CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END $$;

-- UPDATE: never. DELETE: only rows at or below the newest checkpoint of chain TG_ARGV[0].
CREATE FUNCTION audit_purge_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND OLD.seq <= (
        SELECT COALESCE(max(through_seq), 0) FROM audit_checkpoints WHERE chain = TG_ARGV[0]
    ) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END $$;

-- A checkpoint must continue its chain's previous one and name the seal really stored at its
-- boundary.
CREATE FUNCTION audit_checkpoint_consistent() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    boundary BIGINT;
    sealed   TEXT;
BEGIN
    SELECT COALESCE(max(through_seq), 0) INTO boundary
        FROM audit_checkpoints WHERE chain = NEW.chain;
    IF NEW.prev_through_seq <> boundary THEN
        RAISE EXCEPTION 'audit checkpoint must continue from % of chain %', boundary, NEW.chain;
    END IF;
    IF NEW.chain = 'audit' THEN
        SELECT hash INTO sealed FROM audit_seals WHERE seq = NEW.through_seq;
    ELSIF NEW.chain = 'security' THEN
        SELECT hash INTO sealed FROM security_event_seals WHERE seq = NEW.through_seq;
    ELSE
        SELECT hash INTO sealed FROM export_audit_seals WHERE seq = NEW.through_seq;
    END IF;
    IF sealed IS DISTINCT FROM NEW.through_hash THEN
        RAISE EXCEPTION 'audit checkpoint does not match the seal at %', NEW.through_seq;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER audit_checkpoints_consistent BEFORE INSERT ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_checkpoint_consistent();
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();

CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_purge_only('audit');
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_seals_append_only BEFORE UPDATE OR DELETE ON audit_seals
    FOR EACH ROW EXECUTE FUNCTION audit_purge_only('audit');
CREATE TRIGGER audit_seals_no_truncate BEFORE TRUNCATE ON audit_seals
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();

CREATE TRIGGER security_event_seals_append_only BEFORE UPDATE OR DELETE ON security_event_seals
    FOR EACH ROW EXECUTE FUNCTION audit_purge_only('security');
CREATE TRIGGER security_event_seals_no_truncate BEFORE TRUNCATE ON security_event_seals
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER export_audit_seals_append_only BEFORE UPDATE OR DELETE ON export_audit_seals
    FOR EACH ROW EXECUTE FUNCTION audit_purge_only('export');
CREATE TRIGGER export_audit_seals_no_truncate BEFORE TRUNCATE ON export_audit_seals
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();

-- The security event log and the export log (created append-only in 0002 and 0001) now allow
-- the purge's DELETE under a checkpoint, like the audit trail.
DROP TRIGGER security_events_append_only ON security_events;
CREATE TRIGGER security_events_append_only BEFORE UPDATE OR DELETE ON security_events
    FOR EACH ROW EXECUTE FUNCTION audit_purge_only('security');
DROP TRIGGER export_audit_append_only ON export_audit;
CREATE TRIGGER export_audit_append_only BEFORE UPDATE OR DELETE ON export_audit
    FOR EACH ROW EXECUTE FUNCTION audit_purge_only('export');
CREATE TRIGGER export_audit_no_truncate BEFORE TRUNCATE ON export_audit
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
