"""The SQL of the escalation gate and of per-turn token usage.

Every write a retried step could repeat is keyed: an escalation once per (run, source key),
a delivery once per (escalation, channel), a turn's usage once per (run, turn).
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel

from db import CustomerId, Executor, iso

EscalationStatus = Literal["pending", "approved", "edited", "rejected", "timed_out"]
Source = Literal["agent", "model_fault", "budget"]
Urgency = Literal["low", "normal", "high", "urgent"]


class Escalation(BaseModel):
    id: str
    customer_id: CustomerId
    run_id: str
    source_key: str
    source: Source
    reason: str
    urgency: Urgency
    summary: str
    draft: str
    customer_message: str
    status: EscalationStatus
    reviewer: str | None
    edited_text: str | None
    decision_id: str | None
    created_at: str
    expires_at: str
    seconds_left: float = 0.0  # by the database's clock; negative once the deadline passed


_COLUMNS = "*, EXTRACT(EPOCH FROM expires_at - now())::float8 AS seconds_left"


def _escalation(row: asyncpg.Record | dict[str, Any]) -> Escalation:
    data = dict(row)
    data["created_at"] = iso(data["created_at"])
    data["expires_at"] = iso(data["expires_at"])
    data.pop("decided_at", None)
    return Escalation(**data)


async def insert_escalation(
    conn: Executor,
    *,
    customer_id: CustomerId,
    run_id: str,
    source_key: str,
    source: Source,
    reason: str,
    urgency: Urgency,
    summary: str,
    draft: str,
    customer_message: str,
    ttl_seconds: float,
) -> tuple[Escalation, bool]:
    """An escalation once per (run, source key); a repeat gets the first one and False."""
    row = await conn.fetchrow(
        "INSERT INTO escalations (id, customer_id, run_id, source_key, source, reason, urgency, summary, draft,"
        " customer_message, expires_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now() + make_interval(secs => $11))"
        f" ON CONFLICT (run_id, source_key) DO NOTHING RETURNING {_COLUMNS}",
        f"esc_{uuid.uuid4().hex}",
        customer_id,
        run_id,
        source_key,
        source,
        reason,
        urgency,
        summary,
        draft,
        customer_message,
        float(ttl_seconds),
    )
    if row is not None:
        return _escalation(row), True
    existing = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM escalations WHERE run_id = $1 AND source_key = $2", run_id, source_key
    )
    if existing is None:
        raise RuntimeError(f"escalation for {run_id}/{source_key} conflicted but is missing")
    return _escalation(existing), False


async def get_escalation(pool: Executor, *, escalation_id: str) -> Escalation | None:
    row = await pool.fetchrow(f"SELECT {_COLUMNS} FROM escalations WHERE id = $1", escalation_id)
    return _escalation(row) if row else None


async def lock_escalation(conn: Executor, *, escalation_id: str) -> Escalation | None:
    """Read an escalation and hold its row until the transaction ends, so deciders queue."""
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM escalations WHERE id = $1 FOR UPDATE", escalation_id)
    return _escalation(row) if row else None


async def set_escalation_decision(
    conn: Executor,
    *,
    escalation_id: str,
    status: EscalationStatus,
    reviewer: str,
    edited_text: str | None,
    decision_id: str,
) -> Escalation:
    row = await conn.fetchrow(
        "UPDATE escalations SET status = $2, reviewer = $3, edited_text = $4, decision_id = $5, decided_at = now()"
        f" WHERE id = $1 RETURNING {_COLUMNS}",
        escalation_id,
        status,
        reviewer,
        edited_text,
        decision_id,
    )
    if row is None:
        raise RuntimeError(f"escalation {escalation_id} disappeared while locked")
    return _escalation(row)


async def time_out_escalation(pool: Executor, *, escalation_id: str) -> Escalation | None:
    """Mark a still-pending escalation timed out; None when it was no longer pending."""
    row = await pool.fetchrow(
        "UPDATE escalations SET status = 'timed_out', reviewer = 'timeout', decided_at = now()"
        f" WHERE id = $1 AND status = 'pending' RETURNING {_COLUMNS}",
        escalation_id,
    )
    return _escalation(row) if row else None


async def list_pending_escalations(pool: Executor) -> list[tuple[Escalation, str]]:
    """Pending escalations that still have time, soonest deadline first, with the customer's name."""
    rows = await pool.fetch(
        "SELECT e.*, EXTRACT(EPOCH FROM e.expires_at - now())::float8 AS seconds_left, c.name AS customer_name"
        " FROM escalations e JOIN customers c ON c.id = e.customer_id"
        " WHERE e.status = 'pending' AND e.expires_at > now() ORDER BY e.expires_at"
    )
    result = []
    for row in rows:
        data = dict(row)
        name = data.pop("customer_name")
        result.append((_escalation(data), name))
    return result


async def delivered(pool: Executor, *, escalation_id: str, channel: str) -> bool:
    return bool(
        await pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM escalation_deliveries WHERE escalation_id = $1 AND channel = $2)",
            escalation_id,
            channel,
        )
    )


async def mark_delivered(pool: Executor, *, escalation_id: str, channel: str) -> bool:
    """Remember a delivery; False when it was already remembered."""
    inserted = await pool.fetchval(
        "INSERT INTO escalation_deliveries (escalation_id, channel) VALUES ($1, $2)"
        " ON CONFLICT DO NOTHING RETURNING escalation_id",
        escalation_id,
        channel,
    )
    return inserted is not None


# --------------------------------------------------------------------------- token usage


async def record_usage(
    pool: Executor, *, run_id: str, turn: int, input_tokens: int, output_tokens: int, total_tokens: int
) -> None:
    """A turn's usage, once per (run, turn): a replayed turn writes nothing new."""
    await pool.execute(
        "INSERT INTO model_usage (run_id, turn, input_tokens, output_tokens, total_tokens)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (run_id, turn) DO NOTHING",
        run_id,
        turn,
        input_tokens,
        output_tokens,
        total_tokens,
    )


async def decidable_escalation_ids(pool: Executor, *, customer_id: str, decision_id: str) -> list[str]:
    """The customer's escalations a decision naming only the customer could mean: pending and
    live, or already decided by this very decision."""
    rows = await pool.fetch(
        "SELECT id FROM escalations WHERE customer_id = $1"
        " AND ((status = 'pending' AND expires_at > now()) OR decision_id = $2) ORDER BY created_at",
        customer_id,
        decision_id,
    )
    return [row["id"] for row in rows]
