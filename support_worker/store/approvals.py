"""Four eyes: the approvals each refund request has collected, one row per reviewer.

The primary key (request_id, reviewer) is what makes the same reviewer approving twice count
once, whoever asks and however often a decision is redelivered. `decisions.record_decision`
decides what the approvals mean; this module only stores and reads them.
"""

from __future__ import annotations

from pydantic import BaseModel

from db import Executor


class Approval(BaseModel):
    """One reviewer's approval of one request, with the edits they asked for."""

    request_id: str
    reviewer: str
    decision_id: str
    amount_cents: int | None  # an edited (lower) amount; None approves the requested amount
    reply: str | None
    note: str | None


_COLUMNS = "request_id, reviewer, decision_id, amount_cents, reply, note"


async def add_approval(
    conn: Executor,
    *,
    request_id: str,
    reviewer: str,
    decision_id: str,
    amount_cents: int | None,
    reply: str | None,
    note: str | None,
) -> bool:
    """Store one approval; False when this reviewer had already approved the request."""
    inserted = await conn.fetchval(
        f"INSERT INTO refund_approvals ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"
        " ON CONFLICT (request_id, reviewer) DO NOTHING RETURNING reviewer",
        request_id,
        reviewer,
        decision_id,
        amount_cents,
        reply,
        note,
    )
    return inserted is not None


async def list_approvals(conn: Executor, *, request_id: str) -> list[Approval]:
    """The request's approvals, first approver first."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM refund_approvals WHERE request_id = $1 ORDER BY approved_at, reviewer", request_id
    )
    return [Approval(**dict(r)) for r in rows]


async def approvals_by_request(conn: Executor, *, request_ids: list[str]) -> dict[str, list[Approval]]:
    """Approvals of several requests at once (the desk's list), first approver first."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM refund_approvals WHERE request_id = ANY($1::text[]) ORDER BY approved_at, reviewer",
        request_ids,
    )
    found: dict[str, list[Approval]] = {}
    for row in rows:
        found.setdefault(row["request_id"], []).append(Approval(**dict(row)))
    return found
