-- The agent's journal (issue 19): one durable step runs the Agents SDK agent for as long as it
-- can, and every model turn's output and every tool result is written here before the agent
-- goes on. A retried or redelivered step reads what is here instead of asking the model (or a
-- tool) again; a second copy of the same call that races the first keeps the first's row
-- (INSERT ... ON CONFLICT DO NOTHING, then read). Rows are removed after
-- AGENT_JOURNAL_RETENTION_DAYS by the daily clean-up (support_worker/store/agent_journal.py).
--
-- A row is one entry of a run: `turn` counts the run's model turns from its start (0 before
-- the first: the run's intake), `kind` says what it holds, `call_id` names the tool call it
-- belongs to ('' for the intake and a model turn). `segment` says which agent step wrote it:
-- 0 for `run-agent`, 1 for the first `resume-agent-<request>`, and so on.

CREATE TABLE agent_journal (
    run_id      text NOT NULL CHECK (run_id <> ''),
    turn        integer NOT NULL CHECK (turn >= 0),
    kind        text NOT NULL CHECK (kind IN ('intake', 'model', 'tool', 'gate')),
    call_id     text NOT NULL DEFAULT '',
    segment     integer NOT NULL CHECK (segment >= 0),
    -- JSON as text, ASCII-escaped: jsonb refuses \u0000 and lone surrogates, which a model
    -- may write; the journal must hold whatever the model said.
    payload     text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, turn, kind, call_id)
);
CREATE INDEX agent_journal_recorded_idx ON agent_journal (recorded_at);
