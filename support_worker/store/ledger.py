"""The audit trail's hash chain, checked from outside the database's own triggers.

Postgres links and hashes every `audit_log` row as it is inserted (a BEFORE INSERT trigger
under a lock on the one-row `audit_chain_head`, migrations/0006_controls.sql). This module
recomputes the chain: it reads each row's canonical text (the SQL function `audit_canonical`,
the one definition of what is hashed), hashes it here with Python's sha256, and checks each
row's link to the row before it and the head's link to the last row. The first row that does
not match is named.
"""

from __future__ import annotations

import hashlib

import asyncpg
from pydantic import BaseModel

_ROWS = """
    SELECT id, chain_seq, prev_hash, row_hash,
           audit_canonical(chain_seq, id, at, run_id, customer_id, action, detail, idempotency_key, prev_hash)
               AS canonical
    FROM audit_log ORDER BY chain_seq
"""


class ChainBreak(BaseModel):
    """The first place the chain does not hold, and what is wrong there."""

    audit_id: int | None  # the audit_log row named, or None when the head is what disagrees
    chain_seq: int
    why: str


class ChainReport(BaseModel):
    verified: int  # rows whose hash and link matched before the first break (all of them if none)
    head_hash: str | None  # hex; write it down elsewhere to detect a rewrite of the whole tail later
    broken: ChainBreak | None


def _check_row(row: asyncpg.Record, *, seq: int, prev: bytes | None) -> str | None:
    """Why this row breaks the chain, or None when it holds."""
    if row["chain_seq"] != seq:
        return f"rows are missing before it: the chain jumps from position {seq - 1} to {row['chain_seq']}"
    if row["prev_hash"] != prev:
        return "it does not link to the row before it (prev_hash differs): that row was altered or removed"
    if hashlib.sha256(row["canonical"].encode()).digest() != row["row_hash"]:
        return "its content does not match its hash: the row was altered after it was written"
    return None


async def verify_chain(pool: asyncpg.Pool, *, batch: int = 1000) -> ChainReport:
    """Recompute the whole chain in one consistent snapshot (writers may go on meanwhile)."""
    seq, prev = 0, None
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        async for row in conn.cursor(_ROWS, prefetch=batch):
            why = _check_row(row, seq=seq + 1, prev=prev)
            if why is not None:
                return ChainReport(
                    verified=seq,
                    head_hash=None,
                    broken=ChainBreak(audit_id=row["id"], chain_seq=row["chain_seq"], why=why),
                )
            seq, prev = row["chain_seq"], row["row_hash"]
        head = await conn.fetchrow("SELECT last_seq, last_hash FROM audit_chain_head")
    if head is None or head["last_seq"] != seq or head["last_hash"] != prev:
        last_seq = head["last_seq"] if head else None
        why = f"the chain head is at position {last_seq} but the last row is at {seq}: rows after it were removed"
        return ChainReport(verified=seq, head_hash=None, broken=ChainBreak(audit_id=None, chain_seq=seq, why=why))
    return ChainReport(verified=seq, head_hash=prev.hex() if prev else None, broken=None)
