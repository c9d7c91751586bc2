-- Identity and access: staff and patient users, MFA, sessions, scoped API keys, and the
-- security event log. Passwords are argon2id PHC strings; session tokens, recovery codes and
-- API keys are stored as SHA-256 (they are high-entropy random values, so a slow hash adds
-- nothing). The TOTP seed, which must be read back, is stored sealed under a data key (src/crypto).

CREATE TABLE facilities (
    id            TEXT PRIMARY KEY CHECK (id LIKE 'fac\_%' ESCAPE '\'),
    name          TEXT NOT NULL,
    created_at_us INTEGER NOT NULL
) STRICT;

-- A patient may belong to a facility; staff tied to a facility see only its patients.
ALTER TABLE patients ADD COLUMN facility_id TEXT REFERENCES facilities (id);
-- Guest pay: the access code printed on the patient's statement (SHA-256; it is random).
ALTER TABLE patients ADD COLUMN access_code_sha256 TEXT;
CREATE UNIQUE INDEX patients_access_code ON patients (access_code_sha256) WHERE access_code_sha256 IS NOT NULL;

CREATE TABLE users (
    seq                     INTEGER PRIMARY KEY AUTOINCREMENT,
    id                      TEXT NOT NULL UNIQUE CHECK (id LIKE 'usr\_%' ESCAPE '\'),
    kind                    TEXT NOT NULL CHECK (kind IN ('staff', 'patient')),
    -- Lowercased; at most 254 characters (RFC 5321).
    email                   TEXT NOT NULL UNIQUE CHECK (length(email) BETWEEN 3 AND 254),
    password_hash           TEXT CHECK (password_hash IS NULL OR password_hash LIKE '$argon2id$%'),
    role                    TEXT NOT NULL CHECK (role IN ('patient', 'front_desk', 'billing_clerk', 'billing_manager', 'accountant', 'auditor', 'admin')),
    patient_id              TEXT REFERENCES patients (id),
    facility_id             TEXT REFERENCES facilities (id),
    -- Federation (OpenID Connect): the identity provider's issuer and subject, when linked.
    external_issuer         TEXT,
    external_subject        TEXT,
    -- sealed under the sys:totp data key (src/crypto), never in clear
    totp_secret             TEXT CHECK (totp_secret LIKE 'v1.%'),
    -- The last TOTP time step accepted: a code is never accepted twice (RFC 6238 §5.2).
    totp_last_step          INTEGER,
    mfa_enrolled_at_us      INTEGER,
    status                  TEXT NOT NULL CHECK (status IN ('active', 'disabled')),
    password_reset_required INTEGER NOT NULL DEFAULT 0 CHECK (password_reset_required IN (0, 1)),
    failed_signins          INTEGER NOT NULL DEFAULT 0 CHECK (failed_signins >= 0),
    locked_until_us         INTEGER,
    created_at_us           INTEGER NOT NULL,
    updated_at_us           INTEGER NOT NULL,
    CHECK ((kind = 'patient') = (role = 'patient')),
    CHECK ((kind = 'patient') = (patient_id IS NOT NULL)),
    CHECK ((external_issuer IS NULL) = (external_subject IS NULL)),
    CHECK ((mfa_enrolled_at_us IS NULL) OR (totp_secret IS NOT NULL)),
    UNIQUE (external_issuer, external_subject)
) STRICT;

CREATE TABLE recovery_codes (
    user_id     TEXT NOT NULL REFERENCES users (id),
    code_sha256 TEXT NOT NULL CHECK (length(code_sha256) = 64),
    created_at_us INTEGER NOT NULL,
    used_at_us  INTEGER,
    PRIMARY KEY (user_id, code_sha256)
) STRICT;

CREATE TABLE sessions (
    id               TEXT PRIMARY KEY CHECK (id LIKE 'ses\_%' ESCAPE '\'),
    token_sha256     TEXT NOT NULL UNIQUE CHECK (length(token_sha256) = 64),
    user_id          TEXT REFERENCES users (id),
    -- Guest pay: a session for one patient's bill, opened with its access code and date of birth.
    guest_patient_id TEXT REFERENCES patients (id),
    kind             TEXT NOT NULL CHECK (kind IN ('cookie', 'bearer')),
    -- mfa_pending: password checked, TOTP not yet; mfa_enrollment: must enrol first; active.
    stage            TEXT NOT NULL CHECK (stage IN ('mfa_pending', 'mfa_enrollment', 'active')),
    csrf_sha256      TEXT CHECK (csrf_sha256 IS NULL OR length(csrf_sha256) = 64),
    ip               TEXT,
    created_at_us    INTEGER NOT NULL,
    last_seen_at_us  INTEGER NOT NULL,
    idle_timeout_us  INTEGER NOT NULL CHECK (idle_timeout_us > 0),
    expires_at_us    INTEGER NOT NULL,
    revoked_at_us    INTEGER,
    CHECK ((user_id IS NULL) <> (guest_patient_id IS NULL)),
    CHECK (kind = 'cookie' OR csrf_sha256 IS NULL)
) STRICT;
CREATE INDEX sessions_user ON sessions (user_id) WHERE revoked_at_us IS NULL;

-- Scoped API keys for accounting systems: space-separated scopes, an optional expiry, a name
-- and the key it replaced (rotation).
ALTER TABLE api_keys ADD COLUMN name TEXT;
ALTER TABLE api_keys ADD COLUMN scopes TEXT NOT NULL DEFAULT '';
ALTER TABLE api_keys ADD COLUMN expires_at_us INTEGER;
ALTER TABLE api_keys ADD COLUMN rotated_from TEXT;
ALTER TABLE api_keys ADD COLUMN created_by TEXT;

-- Security events: sign-ins (and failures), MFA events, permission denials, role and key
-- changes. Append-only; never a password, code or token.
CREATE TABLE security_events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    at_us      INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    actor      TEXT,
    subject    TEXT,
    ip         TEXT,
    detail     TEXT,
    request_id TEXT
) STRICT;
CREATE INDEX security_events_kind ON security_events (kind, seq);
CREATE TRIGGER security_events_no_update BEFORE UPDATE ON security_events
BEGIN SELECT RAISE(ABORT, 'security_events is append-only'); END;
CREATE TRIGGER security_events_no_delete BEFORE DELETE ON security_events
BEGIN SELECT RAISE(ABORT, 'security_events is append-only'); END;
