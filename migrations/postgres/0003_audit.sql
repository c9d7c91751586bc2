-- The audit trail: one record per API request (who, what, which resource, when, from where,
-- outcome, request id; never the data itself). Records are written in batches by a background
-- writer and chained by a background sealer into `audit_seals` (SHA-256 over each record's
-- canonical content and the previous seal), so no request waits on one chain lock. Both tables
-- are append-only; `carebill audit verify` walks the chain and names the first broken record.

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

CREATE TABLE audit_seals (
    seq          BIGINT PRIMARY KEY,
    kind         TEXT NOT NULL CHECK (kind IN ('event', 'gap')),
    hash         TEXT NOT NULL CHECK (length(hash) = 64),
    sealed_at_us BIGINT NOT NULL
);

CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END $$;
CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_seals_append_only BEFORE UPDATE OR DELETE ON audit_seals
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_seals_no_truncate BEFORE TRUNCATE ON audit_seals
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
