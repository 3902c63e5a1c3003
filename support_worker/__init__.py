"""support-worker: a customer-support agent (OpenAI Agents SDK + Postgres) made durable by Inngest.

The rooms, bottom to top: `core` (settings, money, fields, the event contract), `store`
(SQL beyond `db.py`, migrations, sample data), `agent` (the offline model), `workflows`
(refunds, decisions, escalations, policy), `conversation` (the agent's loop and intake),
`durable` (engine-free step bodies `inngest_app.py` drives), `doors` (webhook, desk, host),
then `cli` and `ops` on top. The root's `worker.py`, `db.py` and `inngest_app.py` sit
between them: the agent above the workflows, the store's entry point above `core`, the
durable layer above the doors.
"""

__version__ = "0.2.0"
