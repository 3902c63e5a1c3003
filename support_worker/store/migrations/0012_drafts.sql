-- The reply is a draft (issue 20; 003 D3's `save-draft-reply`): every run saves the reply it
-- would send here, once (one draft per run: a retried step finds the first), with what a
-- sent reply needs to stay in the customer's thread. Sending is a separate, optional step
-- (POSTMARK_SERVER_TOKEN and REPLY_FROM_EMAIL): a draft is sent at most once, by its id, and
-- records Postmark's MessageID, or why Postmark refused it.

CREATE TABLE drafts (
    id                   text PRIMARY KEY,                  -- dr_<hex>, made on the server
    run_id               text NOT NULL UNIQUE,              -- one draft per run
    customer_id          text NOT NULL REFERENCES customers (id),
    to_email             text NOT NULL,
    subject              text NOT NULL,
    body                 text NOT NULL,
    -- Threading (RFC 5322): the Message-ID of the customer's latest message and the chain
    -- before it, so the customer's mail client shows the reply in the same conversation.
    in_reply_to          text,
    "references"         text,
    thread_key           text,
    status               text NOT NULL DEFAULT 'drafted' CHECK (status IN ('drafted', 'sent', 'send_failed')),
    provider_message_id  text,                              -- Postmark's MessageID once sent
    failure              jsonb,                             -- Postmark's ErrorCode and Message
    -- When an attempt to send began: a second attempt waits for it (a lease of two minutes),
    -- so two deliveries of the sending step never both post the same draft.
    send_started_at      timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    sent_at              timestamptz
);
CREATE INDEX drafts_waiting_idx ON drafts (created_at) WHERE status = 'drafted';
CREATE INDEX drafts_thread_idx ON drafts (customer_id, created_at);
