-- Outbound webhooks for accounting systems (src/webhooks): registered endpoints, the outbox of
-- events, and one delivery per (event, endpoint). The PostgreSQL migration of the same number
-- is the same schema and explains it.
--
-- Payloads hold ids, amounts, currencies and statuses only, never health data.

CREATE TABLE webhook_endpoints (
    seq                       INTEGER PRIMARY KEY AUTOINCREMENT,
    id                        TEXT NOT NULL UNIQUE CHECK (id LIKE 'we\_%' ESCAPE '\'),
    url                       TEXT NOT NULL CHECK (length(url) BETWEEN 8 AND 2048),
    description               TEXT CHECK (description IS NULL OR length(description) <= 500),
    status                    TEXT NOT NULL CHECK (status IN ('enabled', 'disabled', 'deleted')),
    disabled_reason           TEXT CHECK (disabled_reason IS NULL OR disabled_reason IN ('manual', 'failing')),
    secret_sealed             TEXT NOT NULL CHECK (secret_sealed LIKE 'v1.%'),
    previous_secret_sealed    TEXT CHECK (previous_secret_sealed IS NULL OR previous_secret_sealed LIKE 'v1.%'),
    previous_secret_expires_at_us INTEGER,
    failing_since_us          INTEGER,
    lease_until_us            INTEGER,
    created_by                TEXT NOT NULL,
    created_at_us             INTEGER NOT NULL,
    updated_at_us             INTEGER NOT NULL,
    CHECK ((status = 'disabled') = (disabled_reason IS NOT NULL)),
    CHECK ((previous_secret_sealed IS NULL) = (previous_secret_expires_at_us IS NULL))
) STRICT;

CREATE TABLE webhook_endpoint_events (
    endpoint_id TEXT NOT NULL REFERENCES webhook_endpoints (id),
    event_type  TEXT NOT NULL CHECK (length(event_type) BETWEEN 1 AND 64),
    PRIMARY KEY (endpoint_id, event_type)
) STRICT;
CREATE INDEX webhook_endpoint_events_type ON webhook_endpoint_events (event_type, endpoint_id);

CREATE TABLE webhook_events (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    id            TEXT NOT NULL UNIQUE CHECK (id LIKE 'evt\_%' ESCAPE '\'),
    type          TEXT NOT NULL CHECK (length(type) BETWEEN 1 AND 64),
    payload       TEXT NOT NULL,
    created_at_us INTEGER NOT NULL
) STRICT;

CREATE TRIGGER webhook_events_no_update BEFORE UPDATE ON webhook_events
BEGIN
    SELECT RAISE(ABORT, 'webhook_events is append-only');
END;
CREATE TRIGGER webhook_events_no_delete BEFORE DELETE ON webhook_events
BEGIN
    SELECT RAISE(ABORT, 'webhook_events is append-only');
END;

CREATE TABLE webhook_deliveries (
    seq                INTEGER PRIMARY KEY AUTOINCREMENT,
    id                 TEXT NOT NULL UNIQUE CHECK (id LIKE 'whd\_%' ESCAPE '\'),
    event_id           TEXT NOT NULL REFERENCES webhook_events (id),
    endpoint_id        TEXT NOT NULL REFERENCES webhook_endpoints (id),
    status             TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'dead', 'canceled')),
    attempts           INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at_us INTEGER NOT NULL,
    last_status        INTEGER,
    last_error         TEXT CHECK (last_error IS NULL OR length(last_error) <= 200),
    last_attempt_at_us INTEGER,
    replay_of          TEXT REFERENCES webhook_deliveries (id),
    created_at_us      INTEGER NOT NULL,
    updated_at_us      INTEGER NOT NULL
) STRICT;
CREATE INDEX webhook_deliveries_queue ON webhook_deliveries (endpoint_id, status, seq);
CREATE INDEX webhook_deliveries_event ON webhook_deliveries (event_id);
