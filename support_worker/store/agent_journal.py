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


Key = tuple[int, str, str]  # (turn, kind, call id) within a run


async def write_once(
    pool: Executor, *, run_id: str, turn: int, kind: Kind, call_id: str, segment: int, payload: Any
) -> Any:
    """Write an entry unless one is there; return the entry as stored (the first one written)."""
    key = (turn, kind, call_id)
    return (await write_all(pool, run_id=run_id, segment=segment, entries=[(key, payload)]))[key]


async def write_all(pool: Executor, *, run_id: str, segment: int, entries: list[tuple[Key, Any]]) -> dict[Key, Any]:
    """Write entries (one statement) unless they are there; return each as stored: the first
    copy written wins, whoever wrote it."""
    # One row of VALUES per entry (array parameters would make asyncpg introspect their types,
    # which leaves a session setting behind on the connection: tests/test_pool_sessions.py).
    values = ", ".join(f"($1, $2, ${3 + 4 * n}, ${4 + 4 * n}, ${5 + 4 * n}, ${6 + 4 * n})" for n in range(len(entries)))
    # ASCII JSON: every character escaped that Postgres text cannot hold (NUL, lone surrogates).
    args = [value for (turn, kind, call_id), payload in entries for value in (turn, kind, call_id, json.dumps(payload))]
    rows = await pool.fetch(
        f"INSERT INTO agent_journal (run_id, segment, turn, kind, call_id, payload) VALUES {values}"
        " ON CONFLICT (run_id, turn, kind, call_id) DO NOTHING RETURNING turn, kind, call_id, payload",
        run_id,
        segment,
        *args,
    )
    stored = {(r["turn"], r["kind"], r["call_id"]): r["payload"] for r in rows}
    for key, _ in entries:
        if key not in stored:
            # Another copy of this call wrote it first (and has committed: the insert waited for it).
            stored[key] = await pool.fetchval(
                "SELECT payload FROM agent_journal WHERE run_id = $1 AND turn = $2 AND kind = $3 AND call_id = $4",
                run_id,
                *key,
            )
    return {key: json.loads(text) for key, text in stored.items()}


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
