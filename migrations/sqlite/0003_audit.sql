-- The audit trail: one record per API request (who, what, which resource, when, from where,
-- outcome, request id; never the data itself). Records are written in batches by a background
-- writer and chained by a background sealer into `audit_seals` (SHA-256 over each record's
-- canonical content and the previous seal), so no request waits on one chain lock. Both tables
-- are append-only; `carebill audit verify` walks the chain and names the first broken record.

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
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END;

-- One seal per record (or per gap a rolled-back insert left): the chain.
CREATE TABLE audit_seals (
    seq          INTEGER PRIMARY KEY,
    kind         TEXT NOT NULL CHECK (kind IN ('event', 'gap')),
    hash         TEXT NOT NULL CHECK (length(hash) = 64),
    sealed_at_us INTEGER NOT NULL
) STRICT;
CREATE TRIGGER audit_seals_no_update BEFORE UPDATE ON audit_seals
BEGIN SELECT RAISE(ABORT, 'audit_seals is append-only'); END;
CREATE TRIGGER audit_seals_no_delete BEFORE DELETE ON audit_seals
BEGIN SELECT RAISE(ABORT, 'audit_seals is append-only'); END;
