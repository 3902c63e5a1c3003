"""The inbox: each email event's stored message, waiting for the one run that answers it.

A message is answered by the run that owns its `message_received` audit row (key
`message_received:<event id>`); "waiting" means no run owns it yet. Sweep marks record, per
customer, the latest event time a run has gathered through: a message stored after a sweep
that should have taken it learns so here, and asks for a run of its own (see intake.py).
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from db import CustomerId, Executor

_CLAIMED = "EXISTS (SELECT 1 FROM audit_log a WHERE a.idempotency_key = 'message_received:' || i.event_id)"


class Entry(BaseModel):
    event_id: str
    message_id: str
    subject: str | None
    event_at: datetime


async def add(
    conn: Executor,
    *,
    event_id: str,
    customer_id: CustomerId,
    message_id: str,
    subject: str | None,
    event_at: datetime,
) -> None:
    """Put the event's message in the inbox; a redelivered event finds it there already."""
    await conn.execute(
        "INSERT INTO inbox (event_id, customer_id, message_id, subject, event_at) VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (event_id) DO NOTHING",
        event_id,
        customer_id,
        message_id,
        subject,
        event_at,
    )


async def mark_swept(conn: Executor, *, customer_id: CustomerId, through: datetime) -> None:
    """A run is about to gather everything waiting for this customer up to `through`."""
    await conn.execute(
        "INSERT INTO inbox_sweeps (customer_id, swept_through) VALUES ($1, $2) ON CONFLICT (customer_id)"
        " DO UPDATE SET swept_through = greatest(inbox_sweeps.swept_through, EXCLUDED.swept_through)",
        customer_id,
        through,
    )


async def waiting(conn: Executor, *, customer_id: CustomerId, limit: int) -> list[Entry]:
    """The customer's messages no run has taken yet, oldest first."""
    rows = await conn.fetch(
        f"SELECT event_id, message_id, subject, event_at FROM inbox i WHERE customer_id = $1 AND NOT {_CLAIMED}"
        " ORDER BY event_at, event_id LIMIT $2",
        customer_id,
        limit,
    )
    return [Entry(**dict(r)) for r in rows]


async def passed_over(conn: Executor, *, event_id: str) -> bool:
    """Still waiting although a run has already gathered through its time: that run missed it
    (it was stored a moment too late), and no later sweep is sure to come for it."""
    return bool(
        await conn.fetchval(
            f"SELECT NOT {_CLAIMED} AND EXISTS (SELECT 1 FROM inbox_sweeps s"
            " WHERE s.customer_id = i.customer_id AND s.swept_through >= i.event_at)"
            " FROM inbox i WHERE i.event_id = $1",
            event_id,
        )
    )


async def answered_with(conn: Executor, *, event_id: str) -> str | None:
    """The event whose run took this message into its answer, if it was gathered."""
    value = await conn.fetchval(
        "SELECT detail->>'answered_with' FROM audit_log WHERE idempotency_key = 'message_received:' || $1", event_id
    )
    return str(value) if value is not None else None


async def for_run(
    conn: Executor, *, customer_id: CustomerId, run_id: str, answered_with: str, limit: int
) -> list[Entry]:
    """What a run answering `answered_with` takes, oldest first: the customer's waiting messages,
    those it took already (a retried step must take them again), and those a failed run had
    gathered with the same event (a replay answers them)."""
    rows = await conn.fetch(
        "SELECT i.event_id, i.message_id, i.subject, i.event_at FROM inbox i"
        " LEFT JOIN audit_log a ON a.idempotency_key = 'message_received:' || i.event_id"
        " WHERE i.customer_id = $1 AND i.event_id <> $3 AND (a.idempotency_key IS NULL OR a.run_id = $2"
        "  OR (a.detail->>'answered_with' = $3"
        "      AND EXISTS (SELECT 1 FROM audit_log f WHERE f.run_id = a.run_id AND f.action = 'run_failed')))"
        " ORDER BY i.event_at, i.event_id LIMIT $4",
        customer_id,
        run_id,
        answered_with,
        limit,
    )
    return [Entry(**dict(r)) for r in rows]
