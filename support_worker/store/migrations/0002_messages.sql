-- Claim-check for customer messages (issues 12 and 14): every message is stored once, here,
-- and events, step outputs and audit rows carry its id, a digest and a short excerpt instead
-- of the body. Attachments are stored once per message and position, as bytea.

CREATE TABLE messages (
    -- The reference events carry: Postmark's MessageID, or "event:<event id>" for an
    -- email event that arrived with its body inline.
    id                  text PRIMARY KEY CHECK (id <> '' AND length(id) <= 300),
    source              text NOT NULL CHECK (source IN ('postmark', 'event')),
    customer_id         text,  -- known at intake; null when the sender is not a customer
    sender              text,
    subject             text,
    -- The text the agent reads: StrippedTextReply for a reply, else TextBody, else the text
    -- derived from HtmlBody (text_from_html).
    text_body           text NOT NULL,
    text_from_html      boolean NOT NULL DEFAULT false,
    html_body           text,
    -- RawEmail when Postmark sent it, and the rest of Postmark's JSON (addresses, headers,
    -- attachment metadata) without the bodies and attachment contents stored elsewhere.
    raw_email           text,
    payload             jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- The conversation this message belongs to: MailboxHash, or the root Message-ID of its
    -- References/In-Reply-To chain, or its own Message-ID header.
    thread_key          text,
    header_message_id   text,  -- the RFC 5322 Message-ID header, which replies reference
    digest              text NOT NULL,  -- sha256 of text_body, hex
    text_bytes          integer NOT NULL,
    attachment_count    integer NOT NULL DEFAULT 0,
    attachment_bytes    bigint NOT NULL DEFAULT 0,
    received_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_thread_idx ON messages (thread_key, received_at);
CREATE INDEX messages_header_message_id_idx ON messages (header_message_id);

CREATE TABLE message_attachments (
    message_id    text NOT NULL REFERENCES messages (id),
    position      integer NOT NULL CHECK (position >= 0),
    name          text NOT NULL,
    content_type  text NOT NULL,
    content_id    text,
    size_bytes    bigint NOT NULL CHECK (size_bytes >= 0),
    content       bytea NOT NULL,
    PRIMARY KEY (message_id, position)
);

-- The desk asks on every page whether reviewer notifications are misconfigured
-- (store/notifier.py): the latest row of one action, and any delivery after it.
CREATE INDEX audit_log_action_at_idx ON audit_log (action, at);
