-- The Stripe processor: webhook events applied once, disputes, payouts and processor fees.
-- The SQLite twin of migrations/postgres/0005_processor.sql (read that file's comments).

-- A payment whose card holder must act (3-D Secure): Stripe's next action and the
-- PaymentIntent's client secret, handed back to the caller; cleared once the payment is final.
ALTER TABLE payments ADD COLUMN processor_next_action TEXT;
ALTER TABLE payments ADD COLUMN processor_client_secret TEXT;
CREATE INDEX payments_processor_charge ON payments (processor_charge_id) WHERE processor_charge_id IS NOT NULL;
CREATE INDEX payments_in_flight ON payments (status) WHERE status IN ('pending', 'processing');
CREATE INDEX refunds_processor_refund ON refunds (processor_refund_id) WHERE processor_refund_id IS NOT NULL;

-- Every Stripe event we acted on (or acknowledged and ignored), by Stripe's id. The row is
-- inserted in the same transaction as the event's effect: a duplicate delivery finds it and
-- changes nothing; a failed effect rolls the row back too, so Stripe's retry is applied.
CREATE TABLE stripe_events (
    id              TEXT PRIMARY KEY CHECK (id LIKE 'evt\_%' ESCAPE '\' AND length(id) <= 255),
    type            TEXT NOT NULL CHECK (length(type) BETWEEN 1 AND 100),
    created_us      INTEGER NOT NULL,
    -- applied (an effect), ignored (a type we do not handle), unknown_object (nothing of ours),
    -- noop (our state already said so: a duplicate or an out-of-order event).
    outcome         TEXT NOT NULL CHECK (outcome IN ('applied', 'ignored', 'unknown_object', 'noop')),
    object_id       TEXT,
    received_at_us  INTEGER NOT NULL
) STRICT;

-- Disputes (chargebacks). Opening moves the disputed amount out of processor clearing into
-- 1100 Disputed funds; closing moves it back (won) or to 5100 Write-offs (lost).
CREATE TABLE disputes (
    seq                  INTEGER PRIMARY KEY AUTOINCREMENT,
    processor_dispute_id TEXT NOT NULL UNIQUE,
    payment_id           TEXT NOT NULL REFERENCES payments (id),
    currency             TEXT NOT NULL,
    amount_minor         INTEGER NOT NULL CHECK (amount_minor > 0),
    status               TEXT NOT NULL CHECK (status IN ('open', 'won', 'lost')),
    reason               TEXT,
    opened_entry_id      TEXT NOT NULL REFERENCES journal_entries (id) DEFERRABLE INITIALLY DEFERRED,
    closed_entry_id      TEXT REFERENCES journal_entries (id) DEFERRABLE INITIALLY DEFERRED,
    created_at_us        INTEGER NOT NULL,
    updated_at_us        INTEGER NOT NULL,
    CHECK ((status = 'open') = (closed_entry_id IS NULL))
) STRICT;

-- Stripe payouts paid into the bank: processor clearing (1010) → bank (1000), once per payout
-- whether the webhook or the reconciler saw it first.
CREATE TABLE processor_payouts (
    processor_payout_id TEXT PRIMARY KEY,
    currency            TEXT NOT NULL,
    amount_minor        INTEGER NOT NULL CHECK (amount_minor > 0),
    entry_id            TEXT NOT NULL REFERENCES journal_entries (id) DEFERRABLE INITIALLY DEFERRED,
    arrival_date        TEXT,
    created_at_us       INTEGER NOT NULL
) STRICT;

-- Processor fees from Stripe's balance transactions: 5200 Processor fees ← clearing, once per
-- balance transaction (the reconciler posts them).
CREATE TABLE processor_fees (
    balance_transaction_id TEXT PRIMARY KEY,
    currency               TEXT NOT NULL,
    amount_minor           INTEGER NOT NULL CHECK (amount_minor > 0),
    entry_id               TEXT NOT NULL REFERENCES journal_entries (id) DEFERRABLE INITIALLY DEFERRED,
    created_at_us          INTEGER NOT NULL
) STRICT;
