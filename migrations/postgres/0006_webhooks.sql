-- Outbound webhooks for accounting systems (src/webhooks): registered endpoints, the outbox of
-- events, and one delivery per (event, endpoint).
--
-- The outbox is written in the same transaction as the change that causes an event (a payment
-- that succeeds, an entry that is posted…): no event without its change, no change without its
-- event. The delivery worker reads it afterwards; no request waits on a receiver.
--
-- Payloads hold ids, amounts, currencies and statuses only, never health data (names, dates of
-- birth, line codes or descriptions), so this table needs no field encryption.

CREATE TABLE webhook_endpoints (
    seq                       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                        TEXT NOT NULL UNIQUE CHECK (id LIKE 'we\_%'),
    url                       TEXT NOT NULL CHECK (length(url) BETWEEN 8 AND 2048),
    description               TEXT CHECK (description IS NULL OR length(description) <= 500),
    -- 'disabled' by an operator, or by the worker after failing for days (disabled_reason).
    status                    TEXT NOT NULL CHECK (status IN ('enabled', 'disabled', 'deleted')),
    disabled_reason           TEXT CHECK (disabled_reason IS NULL OR disabled_reason IN ('manual', 'failing')),
    -- The signing secret (whsec_…), sealed under the sys:webhooks data key; never in clear.
    secret_sealed             TEXT NOT NULL CHECK (secret_sealed LIKE 'v1.%'),
    -- After a rotation the old secret still signs (a second v1 signature) until it expires.
    previous_secret_sealed    TEXT CHECK (previous_secret_sealed IS NULL OR previous_secret_sealed LIKE 'v1.%'),
    previous_secret_expires_at_us BIGINT,
    -- Since when every attempt has failed (NULL after a success): the auto-disable clock.
    failing_since_us          BIGINT,
    -- The worker that delivers this endpoint's queue holds it until then (per-endpoint order
    -- across several server processes).
    lease_until_us            BIGINT,
    created_by                TEXT NOT NULL,
    created_at_us             BIGINT NOT NULL,
    updated_at_us             BIGINT NOT NULL,
    CHECK ((status = 'disabled') = (disabled_reason IS NOT NULL)),
    CHECK ((previous_secret_sealed IS NULL) = (previous_secret_expires_at_us IS NULL))
);

-- The event types an endpoint receives; '*' is every type.
CREATE TABLE webhook_endpoint_events (
    endpoint_id TEXT NOT NULL REFERENCES webhook_endpoints (id),
    event_type  TEXT NOT NULL CHECK (length(event_type) BETWEEN 1 AND 64),
    PRIMARY KEY (endpoint_id, event_type)
);
CREATE INDEX webhook_endpoint_events_type ON webhook_endpoint_events (event_type, endpoint_id);

-- The outbox. Append-only: an event is what happened, once.
CREATE TABLE webhook_events (
    seq           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id            TEXT NOT NULL UNIQUE CHECK (id LIKE 'evt\_%'),
    type          TEXT NOT NULL CHECK (length(type) BETWEEN 1 AND 64),
    -- The whole JSON body sent (the Standard Webhooks payload: type, timestamp, data).
    payload       TEXT NOT NULL,
    created_at_us BIGINT NOT NULL
);

CREATE FUNCTION webhook_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'webhook_events is append-only';
END $$;
CREATE TRIGGER webhook_events_no_update BEFORE UPDATE OR DELETE ON webhook_events
    FOR EACH ROW EXECUTE FUNCTION webhook_events_append_only();

-- One delivery per (event, endpoint subscribed when the event happened); a replay adds another.
-- An endpoint's deliveries go out in `seq` order: a later one waits while an earlier one is
-- pending.
CREATE TABLE webhook_deliveries (
    seq                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                 TEXT NOT NULL UNIQUE CHECK (id LIKE 'whd\_%'),
    event_id           TEXT NOT NULL REFERENCES webhook_events (id),
    endpoint_id        TEXT NOT NULL REFERENCES webhook_endpoints (id),
    -- pending → succeeded | dead (every attempt failed) | canceled (endpoint deleted)
    status             TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'dead', 'canceled')),
    attempts           BIGINT NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at_us BIGINT NOT NULL,
    -- The last attempt: HTTP status (NULL: no answer) and a short error code, never a body.
    last_status        BIGINT,
    last_error         TEXT CHECK (last_error IS NULL OR length(last_error) <= 200),
    last_attempt_at_us BIGINT,
    replay_of          TEXT REFERENCES webhook_deliveries (id),
    created_at_us      BIGINT NOT NULL,
    updated_at_us      BIGINT NOT NULL
);
CREATE INDEX webhook_deliveries_queue ON webhook_deliveries (endpoint_id, status, seq);
CREATE INDEX webhook_deliveries_event ON webhook_deliveries (event_id);
