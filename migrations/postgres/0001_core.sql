-- carebill billing core, PostgreSQL dialect. The SQLite twin lives in migrations/sqlite/ and
-- must stay equivalent: same tables, same columns, same constraints, same triggers.
--
-- Conventions:
--   * `id` is the public prefixed id (TEXT); `seq` is an identity used only for stable
--     ordering and cursor pagination.
--   * Amounts are BIGINT minor units, suffixed `_minor`; currencies are lowercase ISO 4217.
--   * Timestamps are BIGINT microseconds since the Unix epoch, suffixed `_us`: one portable,
--     indexable representation on both backends. Calendar dates are TEXT 'YYYY-MM-DD'.
--   * Foreign keys to journal_entries are checked at commit (DEFERRABLE INITIALLY DEFERRED):
--     code posts the entry last in its transaction, after the rows that point at it, so the
--     hot ledger accounts stay locked as briefly as possible (src/ledger/posting.rs).
--   * Every money rule the code asserts is asserted here again (CHECKs and triggers), so a bug
--     in the code is refused by the database instead of corrupting the books.

-- API keys: the temporary access model of the core (the identity issue replaces it).
-- Only a SHA-256 of the secret is stored: keys are 192-bit random, so a slow hash adds nothing.
CREATE TABLE api_keys (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id              TEXT NOT NULL UNIQUE,
    secret_sha256   TEXT NOT NULL UNIQUE,
    -- A key acts with a staff role (service accounts) or with scopes (accounting systems).
    role            TEXT CHECK (role IN ('front_desk', 'billing_clerk', 'billing_manager', 'accountant', 'auditor', 'admin')),
    created_at_us   BIGINT NOT NULL,
    last_used_at_us BIGINT,
    revoked_at_us   BIGINT
);

-- The chart of accounts: one template row per account; ledger accounts are instantiated from it
-- per currency (and, for the patient sub-ledgers, per patient).
CREATE TABLE chart_of_accounts (
    code        TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('asset', 'liability', 'revenue', 'contra_revenue', 'expense')),
    normal_side TEXT NOT NULL CHECK (normal_side IN ('debit', 'credit')),
    per_patient BOOLEAN NOT NULL
);

INSERT INTO chart_of_accounts (code, name, kind, normal_side, per_patient) VALUES
    ('1000', 'Bank',                        'asset',          'debit',  FALSE),
    ('1010', 'Processor clearing',          'asset',          'debit',  FALSE),
    ('1100', 'Disputed funds',              'asset',          'debit',  FALSE),
    ('1200', 'Patient receivables',         'asset',          'debit',  TRUE),
    ('2100', 'Patient credit balances',     'liability',      'credit', TRUE),
    ('2200', 'Refunds payable',             'liability',      'credit', FALSE),
    ('4000', 'Patient services revenue',    'revenue',        'credit', FALSE),
    ('4100', 'Insurance adjustments',       'contra_revenue', 'debit',  FALSE),
    ('4200', 'Discounts',                   'contra_revenue', 'debit',  FALSE),
    ('5100', 'Write-offs',                  'expense',        'debit',  FALSE),
    ('5200', 'Processor fees',              'expense',        'debit',  FALSE);

-- Patients. Name, date of birth, contact details and medical record number are health data:
-- each is stored as a ciphertext under the patient's own data key (src/crypto: AES-256-SIV,
-- `v1.` + base64url; the key is in data_keys, wrapped under a versioned KEK). The CHECKs refuse
-- a clear value written by mistake. Exact-match lookup goes through blind indexes (HMAC-SHA256
-- under the keyring's index key). Erasure (crypto-shredding) destroys the data key and clears
-- the blind indexes; the row, its id and the ledger stay.
CREATE TABLE patients (
    seq               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                TEXT NOT NULL UNIQUE,
    name_enc          TEXT NOT NULL CHECK (name_enc LIKE 'v1.%'),
    date_of_birth_enc TEXT NOT NULL CHECK (date_of_birth_enc LIKE 'v1.%'),
    email_enc         TEXT CHECK (email_enc LIKE 'v1.%'),
    phone_enc         TEXT CHECK (phone_enc LIKE 'v1.%'),
    address_enc       TEXT CHECK (address_enc LIKE 'v1.%'),
    mrn_enc           TEXT CHECK (mrn_enc LIKE 'v1.%'),
    email_bidx        TEXT CHECK (length(email_bidx) = 64),
    mrn_bidx          TEXT CHECK (length(mrn_bidx) = 64),
    name_dob_bidx     TEXT CHECK (length(name_dob_bidx) = 64),
    erased_at_us      BIGINT,
    created_at_us     BIGINT NOT NULL,
    updated_at_us     BIGINT NOT NULL,
    CHECK (erased_at_us IS NULL OR (email_bidx IS NULL AND mrn_bidx IS NULL AND name_dob_bidx IS NULL))
);
CREATE INDEX patients_email_bidx ON patients (email_bidx) WHERE email_bidx IS NOT NULL;
CREATE INDEX patients_mrn_bidx ON patients (mrn_bidx) WHERE mrn_bidx IS NOT NULL;
CREATE INDEX patients_name_dob_bidx ON patients (name_dob_bidx) WHERE name_dob_bidx IS NOT NULL;

-- Ledger accounts. `balance_minor` is signed (debits positive, credits negative) and is only
-- ever moved by the posting trigger below, in the same transaction as the posting.
CREATE TABLE accounts (
    seq               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                TEXT NOT NULL UNIQUE,
    code              TEXT NOT NULL REFERENCES chart_of_accounts (code),
    currency          TEXT NOT NULL CHECK (currency IN ('usd','eur','gbp','cad','aud','chf','jpy','kwd','bhd')),
    patient_id        TEXT REFERENCES patients (id),
    balance_minor     BIGINT NOT NULL DEFAULT 0,
    posting_count     BIGINT NOT NULL DEFAULT 0 CHECK (posting_count >= 0),
    last_posted_at_us BIGINT NOT NULL DEFAULT 0,
    created_at_us     BIGINT NOT NULL
);
CREATE UNIQUE INDEX accounts_code_currency_patient ON accounts (code, currency, COALESCE(patient_id, ''));

INSERT INTO accounts (id, code, currency, created_at_us)
SELECT 'acct_' || c.code || '_' || cur.currency, c.code, cur.currency, 0
FROM chart_of_accounts c
CROSS JOIN (VALUES ('usd'),('eur'),('gbp'),('cad'),('aud'),('chf'),('jpy'),('kwd'),('bhd')) AS cur (currency)
WHERE NOT c.per_patient;

-- Journal entries: the header of a balanced set of postings. Immutable (triggers below).
-- An entry is inserted *after* its postings (the postings' foreign key is deferred) so that the
-- insert trigger can check, in one place, that the postings exist and balance per currency;
-- a posting for an entry that already exists is refused, so a sealed entry stays balanced.
CREATE TABLE journal_entries (
    seq            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id             TEXT NOT NULL UNIQUE,
    posted_at_us   BIGINT NOT NULL,
    effective_date TEXT NOT NULL,
    -- dispute_*, payout and processor_fee: Stripe's side of the money (src/stripe, src/reconcile.rs).
    kind           TEXT NOT NULL CHECK (kind IN ('invoice_finalized', 'invoice_adjustment', 'payment_captured',
                                                 'refund_succeeded', 'reversal', 'dispute_opened',
                                                 'dispute_won', 'dispute_lost', 'payout', 'processor_fee')),
    memo           TEXT NOT NULL,
    posting_count  BIGINT NOT NULL CHECK (posting_count >= 2),
    reverses_entry_id TEXT UNIQUE REFERENCES journal_entries (id),
    patient_id     TEXT REFERENCES patients (id),
    invoice_id     TEXT,
    payment_id     TEXT,
    refund_id      TEXT,
    adjustment_id  TEXT,
    -- Commit order: allocated from ledger_head under its row lock (see below).
    ledger_seq     BIGINT NOT NULL UNIQUE CHECK (ledger_seq >= 1),
    CHECK ((kind = 'reversal') = (reverses_entry_id IS NOT NULL))
);
CREATE INDEX journal_entries_posted_at ON journal_entries (posted_at_us, seq);

-- The ledger's commit sequence. Each posting transaction increments `last_seq` and gives the
-- value to its entry; the row stays locked until the transaction commits, so ledger_seq order
-- is commit order and an export cursor (a ledger_seq) never skips an entry that commits later.
CREATE TABLE ledger_head (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    last_seq BIGINT NOT NULL CHECK (last_seq >= 0)
);
INSERT INTO ledger_head (id, last_seq) VALUES (1, 0);
CREATE FUNCTION ledger_head_step() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'UPDATE' OR NEW.last_seq <> OLD.last_seq + 1 OR NEW.id <> OLD.id THEN
        RAISE EXCEPTION 'ledger: the commit sequence only moves forward by one'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER ledger_head_step BEFORE UPDATE OR DELETE ON ledger_head
    FOR EACH ROW EXECUTE FUNCTION ledger_head_step();
CREATE INDEX journal_entries_invoice ON journal_entries (invoice_id);

-- Postings: one signed amount on one account. `account_seq` numbers the account's postings
-- 1, 2, 3…; `balance_after_minor` is the account's running balance after this posting, so a
-- point-in-time balance is a single indexed read.
CREATE TABLE postings (
    seq                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entry_id            TEXT NOT NULL REFERENCES journal_entries (id) DEFERRABLE INITIALLY DEFERRED,
    account_id          TEXT NOT NULL REFERENCES accounts (id),
    amount_minor        BIGINT NOT NULL CHECK (amount_minor <> 0),
    currency            TEXT NOT NULL,
    account_seq         BIGINT NOT NULL CHECK (account_seq >= 1),
    balance_after_minor BIGINT NOT NULL,
    posted_at_us        BIGINT NOT NULL,
    UNIQUE (account_id, account_seq)
);
CREATE INDEX postings_entry ON postings (entry_id);
CREATE INDEX postings_account_time ON postings (account_id, posted_at_us, account_seq);

-- A posting must continue its account's chain exactly: same currency, next sequence number,
-- running balance = previous balance + amount, time never going backwards; and its entry must
-- not be sealed yet. Then the account's stored balance moves, in the same transaction.
-- (One BEFORE trigger does both: the hot accounts are locked while it runs, so it is kept lean.)
CREATE FUNCTION postings_before_insert() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    acct accounts%ROWTYPE;
BEGIN
    IF EXISTS (SELECT 1 FROM journal_entries WHERE id = NEW.entry_id) THEN
        RAISE EXCEPTION 'ledger: entry % is sealed; postings cannot be added', NEW.entry_id
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT * INTO acct FROM accounts WHERE id = NEW.account_id;
    IF acct.currency <> NEW.currency THEN
        RAISE EXCEPTION 'ledger: posting currency differs from account currency'
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.account_seq <> acct.posting_count + 1
       OR NEW.balance_after_minor <> acct.balance_minor + NEW.amount_minor
       OR NEW.posted_at_us < acct.last_posted_at_us THEN
        RAISE EXCEPTION 'ledger: posting does not continue the running balance of %', NEW.account_id
            USING ERRCODE = 'check_violation';
    END IF;
    UPDATE accounts
       SET balance_minor = NEW.balance_after_minor,
           posting_count = NEW.account_seq,
           last_posted_at_us = NEW.posted_at_us
     WHERE id = NEW.account_id;
    RETURN NEW;
END $$;
CREATE TRIGGER postings_before_insert BEFORE INSERT ON postings
    FOR EACH ROW EXECUTE FUNCTION postings_before_insert();

-- Only the posting trigger may move a stored balance: an UPDATE of the balance columns from
-- anywhere else (trigger depth 1, a statement of its own) is refused.
CREATE FUNCTION accounts_before_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF pg_trigger_depth() < 2
       AND (NEW.balance_minor <> OLD.balance_minor OR NEW.posting_count <> OLD.posting_count
            OR NEW.last_posted_at_us <> OLD.last_posted_at_us) THEN
        RAISE EXCEPTION 'ledger: account % balance moves only by posting', NEW.id
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.currency <> OLD.currency OR NEW.code <> OLD.code OR NEW.id <> OLD.id THEN
        RAISE EXCEPTION 'ledger: account % identity is immutable', NEW.id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER accounts_before_update BEFORE UPDATE ON accounts
    FOR EACH ROW EXECUTE FUNCTION accounts_before_update();

-- An entry seals its postings: there must be exactly `posting_count` of them, at least two,
-- and they must sum to zero in every currency.
CREATE FUNCTION journal_entries_before_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.ledger_seq <> (SELECT last_seq FROM ledger_head WHERE id = 1) THEN
        RAISE EXCEPTION 'ledger: entry % must take the commit sequence number just allocated', NEW.id
            USING ERRCODE = 'check_violation';
    END IF;
    IF (SELECT COUNT(*) FROM postings WHERE entry_id = NEW.id) <> NEW.posting_count THEN
        RAISE EXCEPTION 'ledger: entry % has a different number of postings than declared', NEW.id
            USING ERRCODE = 'check_violation';
    END IF;
    IF EXISTS (SELECT 1 FROM postings WHERE entry_id = NEW.id
               GROUP BY currency HAVING SUM(amount_minor) <> 0) THEN
        RAISE EXCEPTION 'ledger: entry % does not balance', NEW.id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER journal_entries_before_insert BEFORE INSERT ON journal_entries
    FOR EACH ROW EXECUTE FUNCTION journal_entries_before_insert();

-- The ledger is append-only: corrections are reversing entries, never edits.
CREATE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger: % rows are immutable; post a reversing entry instead', TG_TABLE_NAME
        USING ERRCODE = 'check_violation';
END $$;
CREATE TRIGGER journal_entries_immutable BEFORE UPDATE OR DELETE ON journal_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER postings_immutable BEFORE UPDATE OR DELETE ON postings
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER journal_entries_no_truncate BEFORE TRUNCATE ON journal_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER postings_no_truncate BEFORE TRUNCATE ON postings
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

-- Invoices. The amounts are a cache of the ledger facts, kept in the same transaction, and the
-- CHECK below is the issue's invariant: due = charges - adjustments - payments + refunds.
CREATE TABLE invoices (
    seq                   BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                    TEXT NOT NULL UNIQUE,
    patient_id            TEXT NOT NULL REFERENCES patients (id),
    currency              TEXT NOT NULL,
    status                TEXT NOT NULL CHECK (status IN ('draft', 'open', 'partially_paid', 'paid', 'void')),
    due_date              TEXT NOT NULL,
    total_minor           BIGINT NOT NULL CHECK (total_minor > 0),
    amount_adjusted_minor BIGINT NOT NULL DEFAULT 0 CHECK (amount_adjusted_minor >= 0),
    amount_paid_minor     BIGINT NOT NULL DEFAULT 0 CHECK (amount_paid_minor >= 0),
    amount_refunded_minor BIGINT NOT NULL DEFAULT 0 CHECK (amount_refunded_minor >= 0 AND amount_refunded_minor <= amount_paid_minor),
    amount_due_minor      BIGINT NOT NULL CHECK (amount_due_minor >= 0),
    finalize_entry_id     TEXT REFERENCES journal_entries (id) DEFERRABLE INITIALLY DEFERRED,
    void_entry_id         TEXT REFERENCES journal_entries (id) DEFERRABLE INITIALLY DEFERRED,
    created_at_us         BIGINT NOT NULL,
    finalized_at_us       BIGINT,
    voided_at_us          BIGINT,
    CHECK (amount_due_minor = CASE WHEN status = 'void' THEN 0
           ELSE total_minor - amount_adjusted_minor - amount_paid_minor + amount_refunded_minor END),
    CHECK ((status = 'draft') = (finalize_entry_id IS NULL AND voided_at_us IS NULL)
           OR (status = 'void' AND finalize_entry_id IS NULL))
);
CREATE INDEX invoices_patient ON invoices (patient_id, seq);

CREATE TABLE invoice_lines (
    id                TEXT PRIMARY KEY,
    invoice_id        TEXT NOT NULL REFERENCES invoices (id),
    position          BIGINT NOT NULL,
    service_date      TEXT NOT NULL,
    -- the procedure code and its description are health data: ciphertexts under the
    -- patient's data key, like the patient's own fields
    code_enc          TEXT NOT NULL CHECK (code_enc LIKE 'v1.%'),
    description_enc   TEXT NOT NULL CHECK (description_enc LIKE 'v1.%'),
    quantity          BIGINT NOT NULL CHECK (quantity > 0),
    unit_amount_minor BIGINT NOT NULL CHECK (unit_amount_minor > 0),
    amount_minor      BIGINT NOT NULL CHECK (amount_minor = quantity * unit_amount_minor),
    UNIQUE (invoice_id, position)
);

CREATE TABLE adjustments (
    seq              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id               TEXT NOT NULL UNIQUE,
    invoice_id       TEXT NOT NULL REFERENCES invoices (id),
    kind             TEXT NOT NULL CHECK (kind IN ('insurance_adjustment', 'discount', 'write_off')),
    amount_minor     BIGINT NOT NULL CHECK (amount_minor > 0),
    currency         TEXT NOT NULL,
    -- free text (may describe care): sealed under the patient's data key (src/crypto/notes.rs)
    reason           TEXT NOT NULL CHECK (reason LIKE 'v1.%'),
    -- posted: on the ledger and in the invoice's amounts. pending_approval: a write-off above the
    -- dual-control threshold, waiting for a second billing manager; nothing is posted and the
    -- invoice is untouched until then. rejected: never posted.
    status           TEXT NOT NULL CHECK (status IN ('pending_approval', 'posted', 'rejected')),
    journal_entry_id TEXT REFERENCES journal_entries (id) DEFERRABLE INITIALLY DEFERRED,
    -- dual control (the audit trail names both people): who asked, why a second person must
    -- approve (NULL: no approval needed), who approved or rejected it
    requested_by     TEXT NOT NULL,
    approval_reasons TEXT CHECK (approval_reasons <> ''),
    approved_by      TEXT,
    approved_at_us   BIGINT,
    rejected_by      TEXT,
    rejected_at_us   BIGINT,
    rejection_reason TEXT CHECK (rejection_reason LIKE 'v1.%'),
    created_at_us    BIGINT NOT NULL,
    CHECK ((status = 'posted') = (journal_entry_id IS NOT NULL)),
    CHECK (approved_by IS NULL OR approved_by <> requested_by),
    CHECK ((approved_by IS NULL) = (approved_at_us IS NULL)),
    CHECK ((rejected_by IS NULL) = (rejected_at_us IS NULL) AND (rejected_by IS NULL) = (rejection_reason IS NULL)),
    CHECK ((status = 'rejected') = (rejected_by IS NOT NULL)),
    CHECK ((approved_by IS NULL AND rejected_by IS NULL) OR approval_reasons IS NOT NULL),
    CHECK (status <> 'pending_approval' OR (approval_reasons IS NOT NULL AND approved_by IS NULL)),
    -- an adjustment that needs approval is posted only once approved
    CHECK (status <> 'posted' OR approval_reasons IS NULL OR approved_by IS NOT NULL)
);
CREATE INDEX adjustments_invoice ON adjustments (invoice_id);

-- Payments. A payment is recorded before the processor is called (status 'pending' until the
-- processor answers), so a crash in between leaves a row the retry completes.
-- amount = applied to the invoice + credited to the patient's credit balance (overpayment).
CREATE TABLE payments (
    seq                      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                       TEXT NOT NULL UNIQUE,
    patient_id               TEXT NOT NULL REFERENCES patients (id),
    invoice_id               TEXT REFERENCES invoices (id),
    currency                 TEXT NOT NULL,
    amount_minor             BIGINT NOT NULL CHECK (amount_minor > 0),
    status                   TEXT NOT NULL CHECK (status IN ('pending', 'processing', 'succeeded', 'failed')),
    -- what the client sent: a processor payment-method id (pm_...) or a card vault token (tok_...);
    -- no card number ever reaches billing
    payment_method           TEXT NOT NULL,
    -- what the processor is asked to charge: payment_method itself, or the pm_... id the vault
    -- made for the token; a resumed payment charges exactly this again
    processor_payment_method TEXT NOT NULL,
    processor_idempotency_key TEXT NOT NULL UNIQUE,
    processor_charge_id      TEXT,
    -- brand and last four: the vault's for a token (from tx A), else the processor's
    card_brand               TEXT,
    card_last4               TEXT,
    failure_code             TEXT,
    failure_message          TEXT,
    amount_applied_minor     BIGINT NOT NULL DEFAULT 0 CHECK (amount_applied_minor >= 0),
    amount_credited_minor    BIGINT NOT NULL DEFAULT 0 CHECK (amount_credited_minor >= 0),
    refunded_applied_minor   BIGINT NOT NULL DEFAULT 0 CHECK (refunded_applied_minor >= 0 AND refunded_applied_minor <= amount_applied_minor),
    refunded_credited_minor  BIGINT NOT NULL DEFAULT 0 CHECK (refunded_credited_minor >= 0 AND refunded_credited_minor <= amount_credited_minor),
    amount_refund_reserved_minor BIGINT NOT NULL DEFAULT 0 CHECK (amount_refund_reserved_minor >= 0),
    journal_entry_id         TEXT REFERENCES journal_entries (id) DEFERRABLE INITIALLY DEFERRED,
    created_at_us            BIGINT NOT NULL,
    updated_at_us            BIGINT NOT NULL,
    CHECK (status <> 'succeeded' OR amount_applied_minor + amount_credited_minor = amount_minor),
    CHECK (status = 'succeeded' OR (amount_applied_minor = 0 AND amount_credited_minor = 0)),
    -- refunds (done and in flight) never exceed what was captured
    CHECK (refunded_applied_minor + refunded_credited_minor + amount_refund_reserved_minor
           <= CASE WHEN status = 'succeeded' THEN amount_minor ELSE 0 END)
);
CREATE INDEX payments_invoice ON payments (invoice_id);

CREATE TABLE refunds (
    seq                       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                        TEXT NOT NULL UNIQUE,
    payment_id                TEXT NOT NULL REFERENCES payments (id),
    currency                  TEXT NOT NULL,
    amount_minor              BIGINT NOT NULL CHECK (amount_minor > 0),
    status                    TEXT NOT NULL CHECK (status IN ('pending_approval', 'pending', 'succeeded', 'failed', 'rejected')),
    reason                    TEXT NOT NULL CHECK (reason IN ('duplicate', 'requested_by_patient', 'overpayment', 'billing_error')),
    -- free text: sealed under the patient's data key (src/crypto/notes.rs)
    note                      TEXT CHECK (note LIKE 'v1.%'),
    processor_idempotency_key TEXT NOT NULL UNIQUE,
    processor_refund_id       TEXT,
    failure_code              TEXT,
    -- how the refund split once it succeeded: first from the payment's credited (overpaid)
    -- part, then from the part applied to the invoice (which re-opens that much of the bill)
    applied_minor             BIGINT NOT NULL DEFAULT 0 CHECK (applied_minor >= 0),
    credited_minor            BIGINT NOT NULL DEFAULT 0 CHECK (credited_minor >= 0),
    journal_entry_id          TEXT REFERENCES journal_entries (id) DEFERRABLE INITIALLY DEFERRED,
    -- where the money goes back to: NULL is the card the payment was made with; otherwise the
    -- payment method the request named (recorded and passed to the processor as metadata)
    payment_method            TEXT,
    -- dual control (the audit trail names both people): who asked, why a second person must
    -- approve (NULL: no approval needed; space-separated reasons), who approved or rejected it
    requested_by              TEXT NOT NULL,
    approval_reasons          TEXT CHECK (approval_reasons <> ''),
    approved_by               TEXT,
    approved_at_us            BIGINT,
    rejected_by               TEXT,
    rejected_at_us            BIGINT,
    rejection_reason          TEXT CHECK (rejection_reason LIKE 'v1.%'),
    created_at_us             BIGINT NOT NULL,
    updated_at_us             BIGINT NOT NULL,
    CHECK (status <> 'succeeded' OR applied_minor + credited_minor = amount_minor),
    CHECK (status = 'succeeded' OR (applied_minor = 0 AND credited_minor = 0)),
    -- nobody approves their own request
    CHECK (approved_by IS NULL OR approved_by <> requested_by),
    CHECK ((approved_by IS NULL) = (approved_at_us IS NULL)),
    CHECK ((rejected_by IS NULL) = (rejected_at_us IS NULL) AND (rejected_by IS NULL) = (rejection_reason IS NULL)),
    CHECK ((status = 'rejected') = (rejected_by IS NOT NULL)),
    CHECK ((approved_by IS NULL AND rejected_by IS NULL) OR approval_reasons IS NOT NULL),
    CHECK (status <> 'pending_approval' OR (approval_reasons IS NOT NULL AND approved_by IS NULL)),
    -- a refund that needs approval goes to the processor (pending, then succeeded or failed)
    -- only once approved, and a refund to another card always needs it
    CHECK (status IN ('pending_approval', 'rejected') OR approval_reasons IS NULL OR approved_by IS NOT NULL),
    CHECK (payment_method IS NULL OR approval_reasons IS NOT NULL)
);
CREATE INDEX refunds_payment ON refunds (payment_id);
CREATE INDEX refunds_status ON refunds (status, seq);

-- Idempotency keys, scoped to the caller. `phase` is how far the request got:
-- started -> processor_called -> finished. `locked_until_us` is the lease of the request that
-- owns the key: a duplicate inside the lease gets 409; after it (a crash) a retry takes over
-- and resumes from the phase. `resource_id` names the payment/refund a resumed request finishes.
CREATE TABLE idempotency_keys (
    principal_id        TEXT NOT NULL,
    key                 TEXT NOT NULL,
    -- HMAC-SHA256 (blind-index key) of the route and canonical body: a request may hold health data
    request_hmac        TEXT NOT NULL,
    phase               TEXT NOT NULL CHECK (phase IN ('started', 'processor_called', 'finished')),
    resource_id         TEXT,
    response_status     BIGINT,
    -- sealed under the sys:idempotency data key (it may hold health data)
    response_body       TEXT CHECK (response_body LIKE 'v1.%'),
    -- random per holder: a holder releases only its own lease
    lease_token         TEXT NOT NULL,
    locked_until_us     BIGINT NOT NULL,
    created_at_us       BIGINT NOT NULL,
    PRIMARY KEY (principal_id, key),
    CHECK ((phase = 'finished') = (response_status IS NOT NULL AND response_body IS NOT NULL))
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at_us);

-- The built-in processor simulator's own store. It stands for the processor's side of the
-- wire, so it is written outside the billing transaction (autocommit) and survives a crash of
-- the billing request, as a real processor's record would.
CREATE TABLE simulator_charges (
    idempotency_key TEXT PRIMARY KEY,
    charge_id       TEXT NOT NULL UNIQUE,
    amount_minor    BIGINT NOT NULL,
    request_sha256  TEXT NOT NULL,
    outcome_json    TEXT NOT NULL,
    created_at_us   BIGINT NOT NULL
);
CREATE TABLE simulator_refunds (
    idempotency_key TEXT PRIMARY KEY,
    refund_id       TEXT NOT NULL UNIQUE,
    charge_id       TEXT NOT NULL,
    amount_minor    BIGINT NOT NULL,
    outcome_json    TEXT NOT NULL,
    created_at_us   BIGINT NOT NULL
);

-- This deployment: an id (so an export cursor from another deployment is recognised). The key
-- of the patient pseudonyms in exports is the sys:export-pseudonyms data key (data_keys, wrapped
-- under the KEK). Created by the application on first use.
CREATE TABLE deployment (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    deployment_id TEXT NOT NULL,
    created_at_us BIGINT NOT NULL
);

-- Every ledger export, recorded before its first byte is sent.
CREATE TABLE export_audit (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at_us        BIGINT NOT NULL,
    requested_by TEXT NOT NULL,
    format       TEXT NOT NULL,
    from_date    TEXT,
    to_date      TEXT,
    after_seq    BIGINT NOT NULL,
    cursor       TEXT NOT NULL,
    identified   BIGINT NOT NULL CHECK (identified IN (0, 1)),
    entries      BIGINT NOT NULL
);
CREATE TRIGGER export_audit_append_only BEFORE UPDATE OR DELETE ON export_audit
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_head_no_truncate BEFORE TRUNCATE ON ledger_head
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
