-- The card vault's own database. Nothing here is readable without the key-encrypting key,
-- which is never stored: card numbers and cardholder names are AES-SIV ciphertexts under data
-- keys that are themselves stored wrapped. The same schema as the SQLite dialect.

CREATE TABLE kek (
    id                  INTEGER PRIMARY KEY CHECK (id = 1),
    check_value         TEXT NOT NULL CHECK (length(check_value) = 64),
    components_required INTEGER NOT NULL CHECK (components_required >= 2),
    created_at          BIGINT NOT NULL
);

CREATE TABLE data_keys (
    purpose    TEXT NOT NULL CHECK (purpose IN ('pan', 'fingerprint')),
    version    BIGINT NOT NULL CHECK (version >= 1),
    state      TEXT NOT NULL CHECK (state IN ('primary', 'active', 'retired')),
    wrapped    BYTEA,
    created_at BIGINT NOT NULL,
    retired_at BIGINT,
    PRIMARY KEY (purpose, version),
    CHECK ((state = 'retired') = (wrapped IS NULL)),
    CHECK ((state = 'retired') = (retired_at IS NOT NULL))
);
CREATE UNIQUE INDEX data_keys_one_primary ON data_keys (purpose) WHERE state = 'primary';

CREATE TABLE keyring_generation (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    generation BIGINT NOT NULL
);
INSERT INTO keyring_generation (id, generation) VALUES (1, 0);

CREATE TABLE cards (
    id          TEXT PRIMARY KEY CHECK (id LIKE 'tok\_%'),
    key_version BIGINT,
    pan_ct      BYTEA UNIQUE,
    name_ct     BYTEA,
    fingerprint TEXT NOT NULL CHECK (length(fingerprint) = 32),
    brand       TEXT NOT NULL CHECK (brand IN ('visa', 'mastercard', 'amex', 'discover', 'jcb', 'diners', 'unionpay', 'unknown')),
    last4       TEXT NOT NULL CHECK (length(last4) = 4),
    exp_month   BIGINT NOT NULL CHECK (exp_month BETWEEN 1 AND 12),
    exp_year    BIGINT NOT NULL CHECK (exp_year BETWEEN 2000 AND 2200),
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    deleted_at  BIGINT,
    CHECK ((deleted_at IS NULL) = (pan_ct IS NOT NULL)),
    CHECK ((pan_ct IS NULL) = (key_version IS NULL)),
    CHECK (pan_ct IS NOT NULL OR name_ct IS NULL)
);
CREATE UNIQUE INDEX cards_live_fingerprint ON cards (fingerprint) WHERE pan_ct IS NOT NULL;
CREATE INDEX cards_by_key_version ON cards (key_version, id) WHERE pan_ct IS NOT NULL;

CREATE FUNCTION vault_card_key_live() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.key_version IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM data_keys WHERE purpose = 'pan' AND version = NEW.key_version AND state <> 'retired') THEN
        RAISE EXCEPTION 'card ciphertext under a missing or retired key';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER cards_key_version_live BEFORE INSERT OR UPDATE OF key_version ON cards
FOR EACH ROW EXECUTE FUNCTION vault_card_key_live();

CREATE FUNCTION vault_data_key_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'data keys are retired, never deleted';
    END IF;
    IF OLD.state = 'retired' THEN
        RAISE EXCEPTION 'a retired key cannot change';
    END IF;
    IF NEW.state = 'retired' AND NEW.purpose = 'pan' AND EXISTS (
        SELECT 1 FROM cards WHERE key_version = NEW.version AND pan_ct IS NOT NULL) THEN
        RAISE EXCEPTION 'key version still in use by cards';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER data_keys_guard BEFORE UPDATE OR DELETE ON data_keys
FOR EACH ROW EXECUTE FUNCTION vault_data_key_guard();

CREATE TABLE audit_log (
    seq        BIGINT PRIMARY KEY,
    at         BIGINT NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    token      TEXT,
    outcome    TEXT NOT NULL,
    request_id TEXT,
    prev_hash  TEXT NOT NULL UNIQUE CHECK (length(prev_hash) = 64),
    hash       TEXT NOT NULL UNIQUE CHECK (length(hash) = 64)
);
CREATE FUNCTION vault_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END $$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
FOR EACH ROW EXECUTE FUNCTION vault_audit_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
FOR EACH STATEMENT EXECUTE FUNCTION vault_audit_append_only();
-- Appends are serialized on this one row, so the chain never forks under concurrency.
CREATE TABLE audit_head (
    id  INTEGER PRIMARY KEY CHECK (id = 1)
);
INSERT INTO audit_head (id) VALUES (1);
