-- One answer to a burst (issue 13): every email event's message waits here until one run of
-- the email function answers it. With debounce on, Inngest runs that function once per
-- customer's burst, with the burst's last event only; a recorder function stores every event's
-- message here first, and the run answers everything of its customer that is waiting.
-- Which run answers a message is not a column: it is the message's `message_received` audit
-- row (idempotency key `message_received:<event id>`), the one claim both paths share.

CREATE TABLE inbox (
    event_id     text PRIMARY KEY CHECK (event_id <> ''),
    customer_id  text NOT NULL REFERENCES customers (id),
    message_id   text NOT NULL REFERENCES messages (id),
    subject      text,
    -- The event's own time (set by Inngest): the order of the burst, the same on every retry.
    event_at     timestamptz NOT NULL,
    stored_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX inbox_customer_idx ON inbox (customer_id, event_at);

-- Per customer, the latest event time a run of the email function has gathered through. A
-- message stored after such a sweep, but older than it, would wait for no run: the recorder
-- sees the mark and asks for a run of its own (intake.py, "passed over").
CREATE TABLE inbox_sweeps (
    customer_id    text PRIMARY KEY REFERENCES customers (id),
    swept_through  timestamptz NOT NULL
);
