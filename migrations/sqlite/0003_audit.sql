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
-- why letting the purge delete is safe. Equivalent to the PostgreSQL migration.

CREATE TABLE audit_events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    at_us      INTEGER NOT NULL,
    actor      TEXT,
    action     TEXT NOT NULL,
    resource   TEXT,
    ip         TEXT,
    outcome    INTEGER NOT NULL,
    request_id TEXT
) STRICT;
CREATE INDEX audit_events_actor ON audit_events (actor, seq);
CREATE INDEX audit_events_at ON audit_events (at_us);

-- One seal per record (or per gap a rolled-back insert left): the chain. One table per log.
CREATE TABLE audit_seals (
    seq          INTEGER PRIMARY KEY,
    kind         TEXT NOT NULL CHECK (kind IN ('event', 'gap')),
    hash         TEXT NOT NULL CHECK (length(hash) = 64),
    sealed_at_us INTEGER NOT NULL
) STRICT;
CREATE TABLE security_event_seals (
    seq          INTEGER PRIMARY KEY,
    kind         TEXT NOT NULL CHECK (kind IN ('event', 'gap')),
    hash         TEXT NOT NULL CHECK (length(hash) = 64),
    sealed_at_us INTEGER NOT NULL
) STRICT;
CREATE TABLE export_audit_seals (
    seq          INTEGER PRIMARY KEY,
    kind         TEXT NOT NULL CHECK (kind IN ('event', 'gap')),
    hash         TEXT NOT NULL CHECK (length(hash) = 64),
    sealed_at_us INTEGER NOT NULL
) STRICT;

-- Retention checkpoints: a purge of chain `chain` removed its records and seals with
-- seq <= through_seq (those above prev_through_seq in this purge); `through_hash` is the seal
-- at through_seq, where `audit verify` now starts the walk. `hash` chains the checkpoints of a
-- chain among themselves (SHA-256 over the previous checkpoint's hash and this row).
--
-- Why letting the purge delete is safe. The logs and seal tables refuse UPDATE always, and
-- refuse DELETE of any row above the newest checkpoint of their chain. So:
-- - nothing can be deleted without first inserting a checkpoint that covers it, and a
--   checkpoint can never be changed or removed (this table is append-only): every deletion
--   leaves a permanent row saying up to where, how many, before which time, when and by whom;
-- - a checkpoint is accepted only if it continues the previous one of its chain
--   (prev_through_seq = the newest through_seq; unique) and its through_hash is the seal
--   actually stored at through_seq: it can only be placed on the real chain;
-- - the purge inserts the checkpoint and deletes the rows under it in one transaction, so after
--   commit nothing at or below a boundary is left to delete; rows above it stay undeletable;
-- - someone who bypasses these triggers (drops them) and forges or edits a checkpoint is caught
--   by `audit verify`: the checkpoints' own hash chain, the first seal after the boundary
--   (hashed over through_hash) and the rows left under a boundary are all checked.
CREATE TABLE audit_checkpoints (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    chain            TEXT NOT NULL CHECK (chain IN ('audit', 'security', 'export')),
    prev_through_seq INTEGER NOT NULL CHECK (prev_through_seq >= 0),
    through_seq      INTEGER NOT NULL,
    through_hash     TEXT NOT NULL CHECK (length(through_hash) = 64),
    records_purged   INTEGER NOT NULL CHECK (records_purged >= 0),
    seals_purged     INTEGER NOT NULL CHECK (seals_purged >= 0),
    purged_before_us INTEGER NOT NULL,
    at_us            INTEGER NOT NULL,
    actor            TEXT NOT NULL,
    hash             TEXT NOT NULL CHECK (length(hash) = 64),
    CHECK (through_seq > prev_through_seq),
    UNIQUE (chain, prev_through_seq)
) STRICT;
CREATE INDEX audit_checkpoints_chain ON audit_checkpoints (chain, through_seq);
CREATE TRIGGER audit_checkpoints_consistent BEFORE INSERT ON audit_checkpoints
WHEN NEW.prev_through_seq <> (
        SELECT COALESCE(max(through_seq), 0) FROM audit_checkpoints WHERE chain = NEW.chain)
    OR NEW.through_hash IS NOT (CASE NEW.chain
        WHEN 'audit' THEN (SELECT hash FROM audit_seals WHERE seq = NEW.through_seq)
        WHEN 'security' THEN (SELECT hash FROM security_event_seals WHERE seq = NEW.through_seq)
        ELSE (SELECT hash FROM export_audit_seals WHERE seq = NEW.through_seq) END)
BEGIN SELECT RAISE(ABORT, 'audit checkpoint does not continue its chain or match its seal'); END;
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit_checkpoints is append-only'); END;
CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit_checkpoints is append-only'); END;

-- UPDATE: never. DELETE: only rows at or below the newest checkpoint of the table's chain.
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
WHEN OLD.seq > (SELECT COALESCE(max(through_seq), 0) FROM audit_checkpoints WHERE chain = 'audit')
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END;
CREATE TRIGGER audit_seals_no_update BEFORE UPDATE ON audit_seals
BEGIN SELECT RAISE(ABORT, 'audit_seals is append-only'); END;
CREATE TRIGGER audit_seals_no_delete BEFORE DELETE ON audit_seals
WHEN OLD.seq > (SELECT COALESCE(max(through_seq), 0) FROM audit_checkpoints WHERE chain = 'audit')
BEGIN SELECT RAISE(ABORT, 'audit_seals is append-only'); END;

CREATE TRIGGER security_event_seals_no_update BEFORE UPDATE ON security_event_seals
BEGIN SELECT RAISE(ABORT, 'security_event_seals is append-only'); END;
CREATE TRIGGER security_event_seals_no_delete BEFORE DELETE ON security_event_seals
WHEN OLD.seq > (SELECT COALESCE(max(through_seq), 0) FROM audit_checkpoints WHERE chain = 'security')
BEGIN SELECT RAISE(ABORT, 'security_event_seals is append-only'); END;
CREATE TRIGGER export_audit_seals_no_update BEFORE UPDATE ON export_audit_seals
BEGIN SELECT RAISE(ABORT, 'export_audit_seals is append-only'); END;
CREATE TRIGGER export_audit_seals_no_delete BEFORE DELETE ON export_audit_seals
WHEN OLD.seq > (SELECT COALESCE(max(through_seq), 0) FROM audit_checkpoints WHERE chain = 'export')
BEGIN SELECT RAISE(ABORT, 'export_audit_seals is append-only'); END;

-- The security event log and the export log (created append-only in 0002 and 0001) now allow
-- the purge's DELETE under a checkpoint, like the audit trail.
DROP TRIGGER security_events_no_delete;
CREATE TRIGGER security_events_no_delete BEFORE DELETE ON security_events
WHEN OLD.seq > (SELECT COALESCE(max(through_seq), 0) FROM audit_checkpoints WHERE chain = 'security')
BEGIN SELECT RAISE(ABORT, 'security_events is append-only'); END;
DROP TRIGGER export_audit_no_delete;
CREATE TRIGGER export_audit_no_delete BEFORE DELETE ON export_audit
WHEN OLD.seq > (SELECT COALESCE(max(through_seq), 0) FROM audit_checkpoints WHERE chain = 'export')
BEGIN SELECT RAISE(ABORT, 'export_audit is append-only'); END;
