-- The card vault's own database. Nothing here is readable without the key-encrypting key,
-- which is never stored: card numbers and cardholder names are AES-SIV ciphertexts under data
-- keys that are themselves stored wrapped.

-- The KEK's check value: proves at start that the custodians' components combine to the KEK
-- the data keys were wrapped under, without revealing it.
CREATE TABLE kek (
    id                  INTEGER PRIMARY KEY CHECK (id = 1),
    check_value         TEXT NOT NULL CHECK (length(check_value) = 64),
    components_required INTEGER NOT NULL CHECK (components_required >= 2),
    created_at          INTEGER NOT NULL
) STRICT;

-- Data keys, wrapped under the KEK. `pan` keys encrypt card numbers (one primary, older ones
-- active for lookup and decryption until re-encryption empties them); the `fingerprint` key is
-- the HMAC key of card fingerprints. A retired key is destroyed: its wrapped bytes are gone.
CREATE TABLE data_keys (
    purpose    TEXT NOT NULL CHECK (purpose IN ('pan', 'fingerprint')),
    version    INTEGER NOT NULL CHECK (version >= 1),
    state      TEXT NOT NULL CHECK (state IN ('primary', 'active', 'retired')),
    wrapped    BLOB,
    created_at INTEGER NOT NULL,
    retired_at INTEGER,
    PRIMARY KEY (purpose, version),
    CHECK ((state = 'retired') = (wrapped IS NULL)),
    CHECK ((state = 'retired') = (retired_at IS NOT NULL))
) STRICT;
CREATE UNIQUE INDEX data_keys_one_primary ON data_keys (purpose) WHERE state = 'primary';

-- Bumped by every key change, so a running vault notices a rotation made by the CLI.
CREATE TABLE keyring_generation (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    generation INTEGER NOT NULL
) STRICT;
INSERT INTO keyring_generation (id, generation) VALUES (1, 0);

CREATE TABLE cards (
    id          TEXT PRIMARY KEY CHECK (id LIKE 'tok\_%' ESCAPE '\'),
    key_version INTEGER,
    pan_ct      BLOB UNIQUE,
    name_ct     BLOB,
    fingerprint TEXT NOT NULL CHECK (length(fingerprint) = 32),
    brand       TEXT NOT NULL CHECK (brand IN ('visa', 'mastercard', 'amex', 'discover', 'jcb', 'diners', 'unionpay', 'unknown')),
    last4       TEXT NOT NULL CHECK (length(last4) = 4),
    exp_month   INTEGER NOT NULL CHECK (exp_month BETWEEN 1 AND 12),
    exp_year    INTEGER NOT NULL CHECK (exp_year BETWEEN 2000 AND 2200),
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    deleted_at  INTEGER,
    -- A deleted card keeps no ciphertext; a live one always has one, under a known version.
    CHECK ((deleted_at IS NULL) = (pan_ct IS NOT NULL)),
    CHECK ((pan_ct IS NULL) = (key_version IS NULL)),
    CHECK (pan_ct IS NOT NULL OR name_ct IS NULL)
) STRICT;
-- One live token per card, whatever key version its ciphertext is under.
CREATE UNIQUE INDEX cards_live_fingerprint ON cards (fingerprint) WHERE pan_ct IS NOT NULL;
CREATE INDEX cards_by_key_version ON cards (key_version, id) WHERE pan_ct IS NOT NULL;

-- A card's ciphertext must be under a pan key that exists and is not retired.
CREATE TRIGGER cards_key_version_live_insert BEFORE INSERT ON cards
WHEN NEW.key_version IS NOT NULL AND NOT EXISTS (
    SELECT 1 FROM data_keys WHERE purpose = 'pan' AND version = NEW.key_version AND state <> 'retired')
BEGIN SELECT RAISE(ABORT, 'card ciphertext under a missing or retired key'); END;
CREATE TRIGGER cards_key_version_live_update BEFORE UPDATE OF key_version ON cards
WHEN NEW.key_version IS NOT NULL AND NOT EXISTS (
    SELECT 1 FROM data_keys WHERE purpose = 'pan' AND version = NEW.key_version AND state <> 'retired')
BEGIN SELECT RAISE(ABORT, 'card ciphertext under a missing or retired key'); END;
-- A key still used by a live card cannot be retired; a retired key never comes back.
CREATE TRIGGER data_keys_retire_unused BEFORE UPDATE OF state ON data_keys
WHEN NEW.state = 'retired' AND NEW.purpose = 'pan' AND EXISTS (
    SELECT 1 FROM cards WHERE key_version = NEW.version AND pan_ct IS NOT NULL)
BEGIN SELECT RAISE(ABORT, 'key version still in use by cards'); END;
CREATE TRIGGER data_keys_retired_final BEFORE UPDATE ON data_keys
WHEN OLD.state = 'retired'
BEGIN SELECT RAISE(ABORT, 'a retired key cannot change'); END;
CREATE TRIGGER data_keys_no_delete BEFORE DELETE ON data_keys
BEGIN SELECT RAISE(ABORT, 'data keys are retired, never deleted'); END;

-- The audit trail: append-only and hash-chained. Each row's hash covers its fields and the
-- previous row's hash; UNIQUE(prev_hash) makes a fork impossible, the triggers make rows
-- immutable, and `tokenizer audit verify` recomputes the chain. Never a card number.
CREATE TABLE audit_log (
    seq        INTEGER PRIMARY KEY,
    at         INTEGER NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    token      TEXT,
    outcome    TEXT NOT NULL,
    request_id TEXT,
    prev_hash  TEXT NOT NULL UNIQUE CHECK (length(prev_hash) = 64),
    hash       TEXT NOT NULL UNIQUE CHECK (length(hash) = 64)
) STRICT;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TABLE audit_head (id INTEGER PRIMARY KEY CHECK (id = 1)) STRICT;
INSERT INTO audit_head (id) VALUES (1);
