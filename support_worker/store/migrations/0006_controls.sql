-- Controls a finance team asks for before it trusts an agent with money (issue 13):
-- four eyes on large refunds, and an audit trail that cannot be quietly edited.

-- ---------------------------------------------------------------- four eyes
-- How many distinct reviewers must approve, fixed when the request is opened (from
-- `refunds.refund_policy`), so changing REFUND_FOUR_EYES_CENTS never moves a request in flight.
ALTER TABLE refund_requests
    ADD COLUMN approvals_needed smallint NOT NULL DEFAULT 1 CHECK (approvals_needed BETWEEN 1 AND 2);

-- One row per reviewer who approved a request. The primary key is what makes "the same
-- reviewer approving twice counts once" a fact of the database, not of the code.
CREATE TABLE refund_approvals (
    request_id    text NOT NULL REFERENCES refund_requests (id),
    reviewer      text NOT NULL,
    decision_id   text NOT NULL,
    amount_cents  bigint CHECK (amount_cents > 0),  -- an edited (lower) amount; NULL = as requested
    reply         text,                             -- a reviewer's replacement reply, if any
    note          text,
    approved_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (request_id, reviewer)
);

-- ---------------------------------------------------------------- the audit chain
-- Each row carries sha256(canonical text of the row, including the previous row's hash).
-- `chain_seq` is the chain's order: ids are drawn before the head is locked, so two
-- concurrent writers may take ids in one order and the lock in the other.
ALTER TABLE audit_log
    ADD COLUMN chain_seq bigint UNIQUE,
    ADD COLUMN prev_hash bytea,
    ADD COLUMN row_hash  bytea;

-- The one-row chain head: every writer locks it, so the chain has one order however many
-- processes write at once. The lock is held until the writer's transaction ends.
CREATE TABLE audit_chain_head (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_seq   bigint NOT NULL DEFAULT 0,
    last_hash  bytea
);
INSERT INTO audit_chain_head DEFAULT VALUES;

-- The canonical text of a row: a JSON array of its fields (jsonb renders `detail` with its
-- keys in one fixed order), the time in UTC to the microsecond whatever the session's
-- TimeZone, and the previous hash in hex. `support-worker audit verify` hashes the same text.
CREATE FUNCTION audit_canonical(seq bigint, row_id bigint, at timestamptz, run_id text, customer_id text,
                                action text, detail jsonb, idempotency_key text, prev_hash bytea)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_array(
        seq, row_id, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        run_id, customer_id, action, detail, idempotency_key, encode(prev_hash, 'hex')
    )::text
$$;

-- BEFORE INSERT: lock the head, link the row to it, hash it and move the head, all under the
-- lock (held until the writer's transaction ends). A row whose idempotency key is already
-- written is skipped here, as ON CONFLICT DO NOTHING would skip it, because BEFORE triggers
-- run before the conflict check and must not move the head for a row that is then dropped.
-- Under the lock every earlier writer has committed, and READ COMMITTED gives each query in
-- this function a fresh snapshot, so the check sees every row written before.
-- SECURITY DEFINER (runs as the owner who migrated), so the app's role needs no right on
-- audit_chain_head at all and cannot move the head by hand (README "Controls", grants).
CREATE FUNCTION audit_chain_link() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    head audit_chain_head;
BEGIN
    SELECT * INTO STRICT head FROM audit_chain_head FOR UPDATE;
    IF NEW.idempotency_key IS NOT NULL
       AND EXISTS (SELECT 1 FROM audit_log WHERE idempotency_key = NEW.idempotency_key) THEN
        RETURN NULL;
    END IF;
    NEW.chain_seq := head.last_seq + 1;
    NEW.prev_hash := head.last_hash;
    NEW.row_hash := sha256(convert_to(audit_canonical(NEW.chain_seq, NEW.id, NEW.at, NEW.run_id,
        NEW.customer_id, NEW.action, NEW.detail, NEW.idempotency_key, NEW.prev_hash), 'UTF8'));
    UPDATE audit_chain_head SET last_seq = NEW.chain_seq, last_hash = NEW.row_hash;
    RETURN NEW;
END
$$;

CREATE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % is refused', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Audit rows are never changed or removed; record a new row that corrects the record.';
END
$$;

-- TRUNCATE empties the table (only the tests' reset does it; production refuses it by grants,
-- see README "Controls"), so the chain starts again from nothing.
CREATE FUNCTION audit_chain_reset() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    UPDATE audit_chain_head SET last_seq = 0, last_hash = NULL;
    RETURN NULL;
END
$$;

-- Rows written before this migration join the chain in id order, so verify covers them too.
DO $$
DECLARE
    r audit_log;
    seq bigint := 0;
    prev bytea;
BEGIN
    FOR r IN SELECT * FROM audit_log ORDER BY id LOOP
        seq := seq + 1;
        UPDATE audit_log SET chain_seq = seq, prev_hash = prev,
            row_hash = sha256(convert_to(audit_canonical(seq, r.id, r.at, r.run_id, r.customer_id,
                r.action, r.detail, r.idempotency_key, prev), 'UTF8'))
        WHERE id = r.id RETURNING row_hash INTO prev;
    END LOOP;
    UPDATE audit_chain_head SET last_seq = seq, last_hash = prev;
END
$$;

ALTER TABLE audit_log
    ALTER COLUMN chain_seq SET NOT NULL,
    ALTER COLUMN row_hash SET NOT NULL;

CREATE TRIGGER audit_log_chain_link BEFORE INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_chain_link();
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_log_chain_reset AFTER TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_chain_reset();
