-- carebill billing core, SQLite dialect: the twin of migrations/postgres/0001_core.sql (read
-- that file for the reasoning behind each table). Differences are only of dialect:
--   * STRICT tables, so SQLite enforces column types as PostgreSQL does;
--   * INTEGER PRIMARY KEY AUTOINCREMENT for `seq`, 0/1 for booleans;
--   * triggers written with RAISE(ABORT, …).

CREATE TABLE api_keys (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT NOT NULL UNIQUE,
    secret_sha256   TEXT NOT NULL UNIQUE,
    -- A key acts with a staff role (service accounts) or with scopes (accounting systems).
    role            TEXT CHECK (role IN ('front_desk', 'billing_clerk', 'billing_manager', 'accountant', 'auditor', 'admin')),
    created_at_us   INTEGER NOT NULL,
    last_used_at_us INTEGER,
    revoked_at_us   INTEGER
) STRICT;

CREATE TABLE chart_of_accounts (
    code        TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('asset', 'liability', 'revenue', 'contra_revenue', 'expense')),
    normal_side TEXT NOT NULL CHECK (normal_side IN ('debit', 'credit')),
    per_patient INTEGER NOT NULL CHECK (per_patient IN (0, 1))
) STRICT;

INSERT INTO chart_of_accounts (code, name, kind, normal_side, per_patient) VALUES
    ('1000', 'Bank',                        'asset',          'debit',  0),
    ('1010', 'Processor clearing',          'asset',          'debit',  0),
    ('1100', 'Disputed funds',              'asset',          'debit',  0),
    ('1200', 'Patient receivables',         'asset',          'debit',  1),
    ('2100', 'Patient credit balances',     'liability',      'credit', 1),
    ('2200', 'Refunds payable',             'liability',      'credit', 0),
    ('4000', 'Patient services revenue',    'revenue',        'credit', 0),
    ('4100', 'Insurance adjustments',       'contra_revenue', 'debit',  0),
    ('4200', 'Discounts',                   'contra_revenue', 'debit',  0),
    ('5100', 'Write-offs',                  'expense',        'debit',  0),
    ('5200', 'Processor fees',              'expense',        'debit',  0);

-- Patients. Name, date of birth, contact details and medical record number are health data:
-- each is stored as a ciphertext under the patient's own data key (src/crypto: AES-256-SIV,
-- `v1.` + base64url; the key is in data_keys, wrapped under a versioned KEK). The CHECKs refuse
-- a clear value written by mistake. Exact-match lookup goes through blind indexes (HMAC-SHA256
-- under the keyring's index key). Erasure (crypto-shredding) destroys the data key and clears
-- the blind indexes; the row, its id and the ledger stay.
CREATE TABLE patients (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
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
    erased_at_us      INTEGER,
    created_at_us     INTEGER NOT NULL,
    updated_at_us     INTEGER NOT NULL,
    CHECK (erased_at_us IS NULL OR (email_bidx IS NULL AND mrn_bidx IS NULL AND name_dob_bidx IS NULL))
) STRICT;
CREATE INDEX patients_email_bidx ON patients (email_bidx) WHERE email_bidx IS NOT NULL;
CREATE INDEX patients_mrn_bidx ON patients (mrn_bidx) WHERE mrn_bidx IS NOT NULL;
CREATE INDEX patients_name_dob_bidx ON patients (name_dob_bidx) WHERE name_dob_bidx IS NOT NULL;

CREATE TABLE accounts (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    id                TEXT NOT NULL UNIQUE,
    code              TEXT NOT NULL REFERENCES chart_of_accounts (code),
    currency          TEXT NOT NULL CHECK (currency IN ('usd','eur','gbp','cad','aud','chf','jpy','kwd','bhd')),
    patient_id        TEXT REFERENCES patients (id),
    balance_minor     INTEGER NOT NULL DEFAULT 0,
    posting_count     INTEGER NOT NULL DEFAULT 0 CHECK (posting_count >= 0),
    last_posted_at_us INTEGER NOT NULL DEFAULT 0,
    created_at_us     INTEGER NOT NULL
) STRICT;
CREATE UNIQUE INDEX accounts_code_currency_patient ON accounts (code, currency, COALESCE(patient_id, ''));

INSERT INTO accounts (id, code, currency, created_at_us)
SELECT 'acct_' || c.code || '_' || cur.column1, c.code, cur.column1, 0
FROM chart_of_accounts c
CROSS JOIN (VALUES ('usd'),('eur'),('gbp'),('cad'),('aud'),('chf'),('jpy'),('kwd'),('bhd')) AS cur
WHERE c.per_patient = 0;

CREATE TABLE journal_entries (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT NOT NULL UNIQUE,
    posted_at_us   INTEGER NOT NULL,
    effective_date TEXT NOT NULL,
    -- dispute_*, payout and processor_fee: Stripe's side of the money (src/stripe, src/reconcile.rs).
    kind           TEXT NOT NULL CHECK (kind IN ('invoice_finalized', 'invoice_adjustment', 'payment_captured',
                                                 'refund_succeeded', 'reversal', 'dispute_opened',
                                                 'dispute_won', 'dispute_lost', 'payout', 'processor_fee')),
    memo           TEXT NOT NULL,
    posting_count  INTEGER NOT NULL CHECK (posting_count >= 2),
    reverses_entry_id TEXT UNIQUE REFERENCES journal_entries (id),
    patient_id     TEXT REFERENCES patients (id),
    invoice_id     TEXT,
    payment_id     TEXT,
    refund_id      TEXT,
    adjustment_id  TEXT,
    -- Commit order: allocated from ledger_head under its write lock (see below).
    ledger_seq     INTEGER NOT NULL UNIQUE CHECK (ledger_seq >= 1),
    CHECK ((kind = 'reversal') = (reverses_entry_id IS NOT NULL))
) STRICT;
CREATE INDEX journal_entries_posted_at ON journal_entries (posted_at_us, seq);

-- The ledger's commit sequence. Each posting transaction increments `last_seq` and gives the
-- value to its entry; the row stays locked until the transaction commits, so ledger_seq order
-- is commit order and an export cursor (a ledger_seq) never skips an entry that commits later.
CREATE TABLE ledger_head (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    last_seq INTEGER NOT NULL CHECK (last_seq >= 0)
) STRICT;
INSERT INTO ledger_head (id, last_seq) VALUES (1, 0);
CREATE TRIGGER ledger_head_step BEFORE UPDATE ON ledger_head
WHEN NEW.last_seq <> OLD.last_seq + 1 OR NEW.id <> OLD.id
BEGIN SELECT RAISE(ABORT, 'ledger: the commit sequence only moves forward by one'); END;
CREATE TRIGGER ledger_head_no_delete BEFORE DELETE ON ledger_head
BEGIN SELECT RAISE(ABORT, 'ledger: the commit sequence cannot be removed'); END;
CREATE INDEX journal_entries_invoice ON journal_entries (invoice_id);

CREATE TABLE postings (
    seq                 INTEGER PRIMARY KEY AUTOINCREMENT,
    entry_id            TEXT NOT NULL REFERENCES journal_entries (id) DEFERRABLE INITIALLY DEFERRED,
    account_id          TEXT NOT NULL REFERENCES accounts (id),
    amount_minor        INTEGER NOT NULL CHECK (amount_minor <> 0),
    currency            TEXT NOT NULL,
    account_seq         INTEGER NOT NULL CHECK (account_seq >= 1),
    balance_after_minor INTEGER NOT NULL,
    posted_at_us        INTEGER NOT NULL,
    UNIQUE (account_id, account_seq)
) STRICT;
CREATE INDEX postings_entry ON postings (entry_id);
CREATE INDEX postings_account_time ON postings (account_id, posted_at_us, account_seq);

CREATE TRIGGER postings_before_insert BEFORE INSERT ON postings
BEGIN
    SELECT RAISE(ABORT, 'ledger: entry is sealed; postings cannot be added')
     WHERE EXISTS (SELECT 1 FROM journal_entries WHERE id = NEW.entry_id);
    SELECT RAISE(ABORT, 'ledger: posting currency differs from account currency')
     WHERE (SELECT currency FROM accounts WHERE id = NEW.account_id) IS NOT NEW.currency;
    SELECT RAISE(ABORT, 'ledger: posting does not continue the running balance of its account')
      FROM accounts a
     WHERE a.id = NEW.account_id
       AND (NEW.account_seq <> a.posting_count + 1
            OR NEW.balance_after_minor <> a.balance_minor + NEW.amount_minor
            OR NEW.posted_at_us < a.last_posted_at_us);
END;

CREATE TRIGGER postings_after_insert AFTER INSERT ON postings
BEGIN
    UPDATE accounts
       SET balance_minor = NEW.balance_after_minor,
           posting_count = NEW.account_seq,
           last_posted_at_us = NEW.posted_at_us
     WHERE id = NEW.account_id;
END;

-- SQLite has no trigger depth, so the guard checks the balance against the chain instead:
-- a stored balance can only ever equal the running balance of the account's last posting.
CREATE TRIGGER accounts_before_update BEFORE UPDATE ON accounts
BEGIN
    SELECT RAISE(ABORT, 'ledger: account balance must equal its last posting''s running balance')
     WHERE NEW.balance_minor <> COALESCE((SELECT balance_after_minor FROM postings
                                          WHERE account_id = NEW.id AND account_seq = NEW.posting_count), 0)
        OR EXISTS (SELECT 1 FROM postings WHERE account_id = NEW.id AND account_seq > NEW.posting_count)
        OR NEW.currency <> OLD.currency OR NEW.code <> OLD.code OR NEW.id <> OLD.id;
END;

CREATE TRIGGER journal_entries_before_insert BEFORE INSERT ON journal_entries
BEGIN
    SELECT RAISE(ABORT, 'ledger: entry must take the commit sequence number just allocated')
     WHERE NEW.ledger_seq <> (SELECT last_seq FROM ledger_head WHERE id = 1);
    SELECT RAISE(ABORT, 'ledger: entry has a different number of postings than declared')
     WHERE (SELECT COUNT(*) FROM postings WHERE entry_id = NEW.id) <> NEW.posting_count;
    SELECT RAISE(ABORT, 'ledger: entry does not balance')
     WHERE EXISTS (SELECT 1 FROM postings WHERE entry_id = NEW.id
                   GROUP BY currency HAVING SUM(amount_minor) <> 0);
END;

CREATE TRIGGER journal_entries_no_update BEFORE UPDATE ON journal_entries
BEGIN SELECT RAISE(ABORT, 'ledger: journal_entries rows are immutable; post a reversing entry instead'); END;
CREATE TRIGGER journal_entries_no_delete BEFORE DELETE ON journal_entries
BEGIN SELECT RAISE(ABORT, 'ledger: journal_entries rows are immutable; post a reversing entry instead'); END;
CREATE TRIGGER postings_no_update BEFORE UPDATE ON postings
BEGIN SELECT RAISE(ABORT, 'ledger: postings rows are immutable; post a reversing entry instead'); END;
CREATE TRIGGER postings_no_delete BEFORE DELETE ON postings
BEGIN SELECT RAISE(ABORT, 'ledger: postings rows are immutable; post a reversing entry instead'); END;

CREATE TABLE invoices (
    seq                   INTEGER PRIMARY KEY AUTOINCREMENT,
    id                    TEXT NOT NULL UNIQUE,
    patient_id            TEXT NOT NULL REFERENCES patients (id),
    currency              TEXT NOT NULL,
    status                TEXT NOT NULL CHECK (status IN ('draft', 'open', 'partially_paid', 'paid', 'void')),
    due_date              TEXT NOT NULL,
    total_minor           INTEGER NOT NULL CHECK (total_minor > 0),
    amount_adjusted_minor INTEGER NOT NULL DEFAULT 0 CHECK (amount_adjusted_minor >= 0),
    amount_paid_minor     INTEGER NOT NULL DEFAULT 0 CHECK (amount_paid_minor >= 0),
    amount_refunded_minor INTEGER NOT NULL DEFAULT 0 CHECK (amount_refunded_minor >= 0 AND amount_refunded_minor <= amount_paid_minor),
    amount_due_minor      INTEGER NOT NULL CHECK (amount_due_minor >= 0),
    finalize_entry_id     TEXT REFERENCES journal_entries (id) DEFERRABLE INITIALLY DEFERRED,
    void_entry_id         TEXT REFERENCES journal_entries (id) DEFERRABLE INITIALLY DEFERRED,
    created_at_us         INTEGER NOT NULL,
    finalized_at_us       INTEGER,
    voided_at_us          INTEGER,
    CHECK (amount_due_minor = CASE WHEN status = 'void' THEN 0
           ELSE total_minor - amount_adjusted_minor - amount_paid_minor + amount_refunded_minor END),
    CHECK ((status = 'draft') = (finalize_entry_id IS NULL AND voided_at_us IS NULL)
           OR (status = 'void' AND finalize_entry_id IS NULL))
) STRICT;
CREATE INDEX invoices_patient ON invoices (patient_id, seq);

CREATE TABLE invoice_lines (
    id                TEXT PRIMARY KEY,
    invoice_id        TEXT NOT NULL REFERENCES invoices (id),
    position          INTEGER NOT NULL,
    service_date      TEXT NOT NULL,
    -- the procedure code and its description are health data: ciphertexts under the
    -- patient's data key, like the patient's own fields
    code_enc          TEXT NOT NULL CHECK (code_enc LIKE 'v1.%'),
    description_enc   TEXT NOT NULL CHECK (description_enc LIKE 'v1.%'),
    quantity          INTEGER NOT NULL CHECK (quantity > 0),
    unit_amount_minor INTEGER NOT NULL CHECK (unit_amount_minor > 0),
    amount_minor      INTEGER NOT NULL CHECK (amount_minor = quantity * unit_amount_minor),
    UNIQUE (invoice_id, position)
) STRICT;

CREATE TABLE adjustments (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT NOT NULL UNIQUE,
    invoice_id       TEXT NOT NULL REFERENCES invoices (id),
    kind             TEXT NOT NULL CHECK (kind IN ('insurance_adjustment', 'discount', 'write_off')),
    amount_minor     INTEGER NOT NULL CHECK (amount_minor > 0),
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
    approved_at_us   INTEGER,
    rejected_by      TEXT,
    rejected_at_us   INTEGER,
    rejection_reason TEXT CHECK (rejection_reason LIKE 'v1.%'),
    created_at_us    INTEGER NOT NULL,
    CHECK ((status = 'posted') = (journal_entry_id IS NOT NULL)),
    CHECK (approved_by IS NULL OR approved_by <> requested_by),
    CHECK ((approved_by IS NULL) = (approved_at_us IS NULL)),
    CHECK ((rejected_by IS NULL) = (rejected_at_us IS NULL) AND (rejected_by IS NULL) = (rejection_reason IS NULL)),
    CHECK ((status = 'rejected') = (rejected_by IS NOT NULL)),
    CHECK ((approved_by IS NULL AND rejected_by IS NULL) OR approval_reasons IS NOT NULL),
    CHECK (status <> 'pending_approval' OR (approval_reasons IS NOT NULL AND approved_by IS NULL)),
    -- an adjustment that needs approval is posted only once approved
    CHECK (status <> 'posted' OR approval_reasons IS NULL OR approved_by IS NOT NULL)
) STRICT;
CREATE INDEX adjustments_invoice ON adjustments (invoice_id);

CREATE TABLE payments (
    seq                      INTEGER PRIMARY KEY AUTOINCREMENT,
    id                       TEXT NOT NULL UNIQUE,
    patient_id               TEXT NOT NULL REFERENCES patients (id),
    invoice_id               TEXT REFERENCES invoices (id),
    currency                 TEXT NOT NULL,
    amount_minor             INTEGER NOT NULL CHECK (amount_minor > 0),
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
    amount_applied_minor     INTEGER NOT NULL DEFAULT 0 CHECK (amount_applied_minor >= 0),
    amount_credited_minor    INTEGER NOT NULL DEFAULT 0 CHECK (amount_credited_minor >= 0),
    refunded_applied_minor   INTEGER NOT NULL DEFAULT 0 CHECK (refunded_applied_minor >= 0 AND refunded_applied_minor <= amount_applied_minor),
    refunded_credited_minor  INTEGER NOT NULL DEFAULT 0 CHECK (refunded_credited_minor >= 0 AND refunded_credited_minor <= amount_credited_minor),
    amount_refund_reserved_minor INTEGER NOT NULL DEFAULT 0 CHECK (amount_refund_reserved_minor >= 0),
    journal_entry_id         TEXT REFERENCES journal_entries (id) DEFERRABLE INITIALLY DEFERRED,
    created_at_us            INTEGER NOT NULL,
    updated_at_us            INTEGER NOT NULL,
    CHECK (status <> 'succeeded' OR amount_applied_minor + amount_credited_minor = amount_minor),
    CHECK (status = 'succeeded' OR (amount_applied_minor = 0 AND amount_credited_minor = 0)),
    CHECK (refunded_applied_minor + refunded_credited_minor + amount_refund_reserved_minor
           <= CASE WHEN status = 'succeeded' THEN amount_minor ELSE 0 END)
) STRICT;
CREATE INDEX payments_invoice ON payments (invoice_id);

CREATE TABLE refunds (
    seq                       INTEGER PRIMARY KEY AUTOINCREMENT,
    id                        TEXT NOT NULL UNIQUE,
    payment_id                TEXT NOT NULL REFERENCES payments (id),
    currency                  TEXT NOT NULL,
    amount_minor              INTEGER NOT NULL CHECK (amount_minor > 0),
    status                    TEXT NOT NULL CHECK (status IN ('pending_approval', 'pending', 'succeeded', 'failed', 'rejected')),
    reason                    TEXT NOT NULL CHECK (reason IN ('duplicate', 'requested_by_patient', 'overpayment', 'billing_error')),
    -- free text: sealed under the patient's data key (src/crypto/notes.rs)
    note                      TEXT CHECK (note LIKE 'v1.%'),
    processor_idempotency_key TEXT NOT NULL UNIQUE,
    processor_refund_id       TEXT,
    failure_code              TEXT,
    -- how the refund split once it succeeded: first from the payment's credited (overpaid)
    -- part, then from the part applied to the invoice (which re-opens that much of the bill)
    applied_minor             INTEGER NOT NULL DEFAULT 0 CHECK (applied_minor >= 0),
    credited_minor            INTEGER NOT NULL DEFAULT 0 CHECK (credited_minor >= 0),
    journal_entry_id          TEXT REFERENCES journal_entries (id) DEFERRABLE INITIALLY DEFERRED,
    -- where the money goes back to: NULL is the card the payment was made with; otherwise the
    -- payment method the request named (recorded and passed to the processor as metadata)
    payment_method            TEXT,
    -- dual control (the audit trail names both people): who asked, why a second person must
    -- approve (NULL: no approval needed; space-separated reasons), who approved or rejected it
    requested_by              TEXT NOT NULL,
    approval_reasons          TEXT CHECK (approval_reasons <> ''),
    approved_by               TEXT,
    approved_at_us            INTEGER,
    rejected_by               TEXT,
    rejected_at_us            INTEGER,
    rejection_reason          TEXT CHECK (rejection_reason LIKE 'v1.%'),
    created_at_us             INTEGER NOT NULL,
    updated_at_us             INTEGER NOT NULL,
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
) STRICT;
CREATE INDEX refunds_payment ON refunds (payment_id);
CREATE INDEX refunds_status ON refunds (status, seq);

CREATE TABLE idempotency_keys (
    principal_id        TEXT NOT NULL,
    key                 TEXT NOT NULL,
    -- HMAC-SHA256 (blind-index key) of the route and canonical body: a request may hold health data
    request_hmac        TEXT NOT NULL,
    phase               TEXT NOT NULL CHECK (phase IN ('started', 'processor_called', 'finished')),
    resource_id         TEXT,
    response_status     INTEGER,
    -- sealed under the sys:idempotency data key (it may hold health data)
    response_body       TEXT CHECK (response_body LIKE 'v1.%'),
    -- random per holder: a holder releases only its own lease
    lease_token         TEXT NOT NULL,
    locked_until_us     INTEGER NOT NULL,
    created_at_us       INTEGER NOT NULL,
    PRIMARY KEY (principal_id, key),
    CHECK ((phase = 'finished') = (response_status IS NOT NULL AND response_body IS NOT NULL))
) STRICT;
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at_us);

CREATE TABLE simulator_charges (
    idempotency_key TEXT PRIMARY KEY,
    charge_id       TEXT NOT NULL UNIQUE,
    amount_minor    INTEGER NOT NULL,
    request_sha256  TEXT NOT NULL,
    outcome_json    TEXT NOT NULL,
    created_at_us   INTEGER NOT NULL
) STRICT;
CREATE TABLE simulator_refunds (
    idempotency_key TEXT PRIMARY KEY,
    refund_id       TEXT NOT NULL UNIQUE,
    charge_id       TEXT NOT NULL,
    amount_minor    INTEGER NOT NULL,
    outcome_json    TEXT NOT NULL,
    created_at_us   INTEGER NOT NULL
) STRICT;

-- This deployment: an id (so an export cursor from another deployment is recognised). The key
-- of the patient pseudonyms in exports is the sys:export-pseudonyms data key (data_keys, wrapped
-- under the KEK). Created by the application on first use.
CREATE TABLE deployment (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    deployment_id TEXT NOT NULL,
    created_at_us INTEGER NOT NULL
) STRICT;

-- Every ledger export, recorded before its first byte is sent.
CREATE TABLE export_audit (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    at_us        INTEGER NOT NULL,
    requested_by TEXT NOT NULL,
    format       TEXT NOT NULL,
    from_date    TEXT,
    to_date      TEXT,
    after_seq    INTEGER NOT NULL,
    cursor       TEXT NOT NULL,
    identified   INTEGER NOT NULL CHECK (identified IN (0, 1)),
    entries      INTEGER NOT NULL
) STRICT;
CREATE TRIGGER export_audit_no_update BEFORE UPDATE ON export_audit
BEGIN SELECT RAISE(ABORT, 'export_audit is append-only'); END;
CREATE TRIGGER export_audit_no_delete BEFORE DELETE ON export_audit
BEGIN SELECT RAISE(ABORT, 'export_audit is append-only'); END;
