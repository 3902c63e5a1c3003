-- The escalation gate (issue 13): a hand-off to a human, decided on the desk like a refund,
-- posted to the senior support channel at most once; and each model turn's token usage, so a
-- conversation's cost can be capped from what was recorded (deterministic on replay).

CREATE TABLE escalations (
    id             text PRIMARY KEY,                     -- esc_<hex>, made on the server
    customer_id    text NOT NULL REFERENCES customers (id),
    run_id         text NOT NULL,
    -- What asked for it within the run: a tool-call id, or the fault's name. A redelivered
    -- step finds the escalation the first delivery opened.
    source_key     text NOT NULL,
    source         text NOT NULL CHECK (source IN ('agent', 'model_fault', 'budget')),
    reason         text NOT NULL,
    urgency        text NOT NULL CHECK (urgency IN ('low', 'normal', 'high', 'urgent')),
    summary        text NOT NULL,
    draft          text NOT NULL,                        -- what the senior channel gets on approve
    customer_message text NOT NULL DEFAULT '',
    status         text NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'approved', 'edited', 'rejected', 'timed_out')),
    reviewer       text,
    edited_text    text,
    decision_id    text,
    decided_at     timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    UNIQUE (run_id, source_key)
);
CREATE INDEX escalations_status_expires_idx ON escalations (status, expires_at);

-- One row per escalation and channel once delivered ('reviewers', 'senior'): the unique key
-- that makes a retried notification or post send nothing.
CREATE TABLE escalation_deliveries (
    escalation_id  text NOT NULL REFERENCES escalations (id),
    channel        text NOT NULL,
    sent_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (escalation_id, channel)
);

-- Token usage per model turn of a run, written once per (run, turn).
CREATE TABLE model_usage (
    run_id         text NOT NULL,
    turn           integer NOT NULL CHECK (turn > 0),
    input_tokens   bigint NOT NULL DEFAULT 0,
    output_tokens  bigint NOT NULL DEFAULT 0,
    total_tokens   bigint NOT NULL DEFAULT 0,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, turn)
);
