-- Key custody for field encryption (src/crypto). The keys themselves are never here in clear:
-- the KEKs live in the keyring (file, environment or a KMS), the data keys only wrapped.
--
--   * kek_versions: each key-encrypting key version the deployment has used, by its check value
--     (which identifies the key without revealing it; a wrong keyring is refused at start).
--     Retired once `carebill keys rewrap` has moved every data key off it: nothing may be
--     wrapped under a retired version again, and a retired version never becomes active.
--   * index_key: the check value of the blind-index key (a different key breaks every lookup,
--     so it is refused at start).
--   * data_keys: one data key per patient (owner = the patient id) and per system purpose
--     (owner = 'sys:…'), wrapped under a KEK version. Destroying a key (crypto-shredding) sets
--     wrapped_key to NULL for good; rows are never deleted, so the erasure itself stays on
--     record.

CREATE TABLE kek_versions (
    version       BIGINT PRIMARY KEY CHECK (version >= 1),
    check_value   TEXT NOT NULL CHECK (length(check_value) = 16),
    status        TEXT NOT NULL CHECK (status IN ('active', 'retired')),
    created_at_us BIGINT NOT NULL,
    retired_at_us BIGINT,
    CHECK ((status = 'retired') = (retired_at_us IS NOT NULL))
);

CREATE TABLE index_key (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    check_value   TEXT NOT NULL CHECK (length(check_value) = 16),
    created_at_us BIGINT NOT NULL
);

CREATE TABLE data_keys (
    owner            TEXT PRIMARY KEY CHECK (owner LIKE 'pat\_%' OR owner LIKE 'sys:%'),
    kek_version      BIGINT NOT NULL REFERENCES kek_versions (version),
    wrapped_key      BYTEA CHECK (length(wrapped_key) = 80),
    created_at_us    BIGINT NOT NULL,
    rewrapped_at_us  BIGINT,
    destroyed_at_us  BIGINT,
    CHECK ((wrapped_key IS NULL) = (destroyed_at_us IS NOT NULL))
);
CREATE INDEX data_keys_version ON data_keys (kek_version) WHERE wrapped_key IS NOT NULL;

-- A key is wrapped only under an active version (the row lock taken here orders a wrap and a
-- concurrent retirement: whichever commits second sees the other); a destroyed key stays
-- destroyed; no row is ever deleted.
CREATE FUNCTION data_keys_guard() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    kek_status TEXT;
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'data_keys rows are never deleted: destroy the key instead';
    END IF;
    IF TG_OP = 'UPDATE' THEN
        IF NEW.owner <> OLD.owner OR NEW.created_at_us <> OLD.created_at_us THEN
            RAISE EXCEPTION 'a data key keeps its owner';
        END IF;
        IF OLD.wrapped_key IS NULL AND NEW.wrapped_key IS NOT NULL THEN
            RAISE EXCEPTION 'a destroyed data key cannot come back';
        END IF;
    END IF;
    IF NEW.wrapped_key IS NOT NULL THEN
        SELECT status INTO kek_status FROM kek_versions WHERE version = NEW.kek_version FOR SHARE;
        IF kek_status IS DISTINCT FROM 'active' THEN
            RAISE EXCEPTION 'KEK version % is retired: nothing may be wrapped under it', NEW.kek_version;
        END IF;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER data_keys_guard BEFORE INSERT OR UPDATE OR DELETE ON data_keys
    FOR EACH ROW EXECUTE FUNCTION data_keys_guard();

CREATE FUNCTION kek_versions_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'kek_versions rows are never deleted';
    END IF;
    IF NEW.version <> OLD.version OR NEW.check_value <> OLD.check_value THEN
        RAISE EXCEPTION 'a KEK version keeps its number and key';
    END IF;
    IF OLD.status = 'retired' AND NEW.status <> 'retired' THEN
        RAISE EXCEPTION 'KEK version % is retired for good', OLD.version;
    END IF;
    IF NEW.status = 'retired' AND OLD.status = 'active'
       AND EXISTS (SELECT 1 FROM data_keys WHERE kek_version = NEW.version AND wrapped_key IS NOT NULL) THEN
        RAISE EXCEPTION 'KEK version % still wraps data keys: run carebill keys rewrap first', NEW.version;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER kek_versions_guard BEFORE UPDATE OR DELETE ON kek_versions
    FOR EACH ROW EXECUTE FUNCTION kek_versions_guard();

CREATE FUNCTION index_key_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the blind-index key is fixed for the life of the database';
END $$;
CREATE TRIGGER index_key_guard BEFORE UPDATE OR DELETE ON index_key
    FOR EACH ROW EXECUTE FUNCTION index_key_guard();
