-- Key custody for field encryption: the SQLite twin of migrations/postgres/0004_keys.sql (read
-- that file's comments). SQLite has one writer at a time, so a wrap and a retirement cannot
-- interleave and the checks need no locks.

CREATE TABLE kek_versions (
    version       INTEGER PRIMARY KEY CHECK (version >= 1),
    check_value   TEXT NOT NULL CHECK (length(check_value) = 16),
    status        TEXT NOT NULL CHECK (status IN ('active', 'retired')),
    created_at_us INTEGER NOT NULL,
    retired_at_us INTEGER,
    CHECK ((status = 'retired') = (retired_at_us IS NOT NULL))
) STRICT;

CREATE TABLE index_key (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    check_value   TEXT NOT NULL CHECK (length(check_value) = 16),
    created_at_us INTEGER NOT NULL
) STRICT;

CREATE TABLE data_keys (
    owner            TEXT PRIMARY KEY CHECK (owner LIKE 'pat\_%' ESCAPE '\' OR owner LIKE 'sys:%'),
    kek_version      INTEGER NOT NULL REFERENCES kek_versions (version),
    wrapped_key      BLOB CHECK (length(wrapped_key) = 80),
    created_at_us    INTEGER NOT NULL,
    rewrapped_at_us  INTEGER,
    destroyed_at_us  INTEGER,
    CHECK ((wrapped_key IS NULL) = (destroyed_at_us IS NOT NULL))
) STRICT;
CREATE INDEX data_keys_version ON data_keys (kek_version) WHERE wrapped_key IS NOT NULL;

CREATE TRIGGER data_keys_no_delete BEFORE DELETE ON data_keys
BEGIN SELECT RAISE(ABORT, 'data_keys rows are never deleted: destroy the key instead'); END;
CREATE TRIGGER data_keys_keep_owner BEFORE UPDATE ON data_keys
WHEN NEW.owner <> OLD.owner OR NEW.created_at_us <> OLD.created_at_us
BEGIN SELECT RAISE(ABORT, 'a data key keeps its owner'); END;
CREATE TRIGGER data_keys_no_resurrection BEFORE UPDATE ON data_keys
WHEN OLD.wrapped_key IS NULL AND NEW.wrapped_key IS NOT NULL
BEGIN SELECT RAISE(ABORT, 'a destroyed data key cannot come back'); END;
CREATE TRIGGER data_keys_active_kek_insert BEFORE INSERT ON data_keys
WHEN NEW.wrapped_key IS NOT NULL
 AND (SELECT status FROM kek_versions WHERE version = NEW.kek_version) IS NOT 'active'
BEGIN SELECT RAISE(ABORT, 'KEK version is retired: nothing may be wrapped under it'); END;
CREATE TRIGGER data_keys_active_kek_update BEFORE UPDATE ON data_keys
WHEN NEW.wrapped_key IS NOT NULL
 AND (SELECT status FROM kek_versions WHERE version = NEW.kek_version) IS NOT 'active'
BEGIN SELECT RAISE(ABORT, 'KEK version is retired: nothing may be wrapped under it'); END;

CREATE TRIGGER kek_versions_no_delete BEFORE DELETE ON kek_versions
BEGIN SELECT RAISE(ABORT, 'kek_versions rows are never deleted'); END;
CREATE TRIGGER kek_versions_fixed BEFORE UPDATE ON kek_versions
WHEN NEW.version <> OLD.version OR NEW.check_value <> OLD.check_value
BEGIN SELECT RAISE(ABORT, 'a KEK version keeps its number and key'); END;
CREATE TRIGGER kek_versions_retired_for_good BEFORE UPDATE ON kek_versions
WHEN OLD.status = 'retired' AND NEW.status <> 'retired'
BEGIN SELECT RAISE(ABORT, 'a retired KEK version is retired for good'); END;
CREATE TRIGGER kek_versions_retire_unused BEFORE UPDATE ON kek_versions
WHEN NEW.status = 'retired' AND OLD.status = 'active'
 AND EXISTS (SELECT 1 FROM data_keys WHERE kek_version = NEW.version AND wrapped_key IS NOT NULL)
BEGIN SELECT RAISE(ABORT, 'KEK version still wraps data keys: run carebill keys rewrap first'); END;

CREATE TRIGGER index_key_no_update BEFORE UPDATE ON index_key
BEGIN SELECT RAISE(ABORT, 'the blind-index key is fixed for the life of the database'); END;
CREATE TRIGGER index_key_no_delete BEFORE DELETE ON index_key
BEGIN SELECT RAISE(ABORT, 'the blind-index key is fixed for the life of the database'); END;
