"""The agent's journal in Postgres (migration 0010): each model turn's output and each tool
result of a durable agent run, written before the agent goes on, read back by a retried step.

Entries are keyed by run, turn, kind and tool call (see the migration); `segment` records which
agent step wrote one. Writing is insert-or-read: a second copy of the same call (a duplicate or
concurrent delivery) that reaches an entry already written gets the first copy's payload back.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

from db import Executor

Kind = Literal["intake", "model", "tool", "gate"]
# Rows one clean-up statement deletes: small enough not to hold locks for long.
CLEAN_BATCH = 10_000


class Entry(BaseModel):
    turn: int
    kind: Kind
    call_id: str
    segment: int
    payload: Any
    recorded_at: datetime


async def load(pool: Executor, *, run_id: str) -> dict[tuple[int, str, str], Any]:
    """Every entry of a run, by (turn, kind, call id): one round trip per agent step."""
    rows = await pool.fetch("SELECT turn, kind, call_id, payload FROM agent_journal WHERE run_id = $1", run_id)
    return {(r["turn"], r["kind"], r["call_id"]): json.loads(r["payload"]) for r in rows}


async def write_once(
    pool: Executor, *, run_id: str, turn: int, kind: Kind, call_id: str, segment: int, payload: Any
) -> Any:
    """Write an entry unless one is there; return the entry as stored (the first one written)."""
    stored = await pool.fetchval(
        "INSERT INTO agent_journal (run_id, turn, kind, call_id, segment, payload) VALUES ($1, $2, $3, $4, $5, $6)"
        " ON CONFLICT (run_id, turn, kind, call_id) DO NOTHING RETURNING payload",
        run_id,
        turn,
        kind,
        call_id,
        segment,
        json.dumps(payload),  # ASCII: every character escaped that Postgres text cannot hold
    )
    if stored is None:
        # Another copy of this call wrote it first (and has committed: the insert waited for it).
        stored = await pool.fetchval(
            "SELECT payload FROM agent_journal WHERE run_id = $1 AND turn = $2 AND kind = $3 AND call_id = $4",
            run_id,
            turn,
            kind,
            call_id,
        )
    return json.loads(stored)


async def entries(pool: Executor, *, run_id: str) -> list[Entry]:
    """A run's entries in the order they were made (`support-worker run <run-id>`)."""
    rows = await pool.fetch(
        "SELECT turn, kind, call_id, segment, payload, recorded_at FROM agent_journal WHERE run_id = $1"
        " ORDER BY segment, turn, (kind = 'tool' OR kind = 'gate'), recorded_at, call_id",
        run_id,
    )
    return [Entry(**(dict(r) | {"payload": json.loads(r["payload"])})) for r in rows]


async def delete_older_than(pool: Executor, *, days: int, batch: int = CLEAN_BATCH) -> int:
    """Delete entries recorded more than `days` days ago, a batch per statement; how many went."""
    deleted = 0
    while True:
        status = await pool.execute(
            "DELETE FROM agent_journal WHERE ctid = ANY(ARRAY("
            "SELECT ctid FROM agent_journal WHERE recorded_at < now() - make_interval(days => $1) LIMIT $2))",
            days,
            batch,
        )
        count = int(status.split()[-1])
        deleted += count
        if count < batch:
            return deleted
