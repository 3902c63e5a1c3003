"""The SQL of drafted replies: one per run, sent at most once, and a thread's history.

A draft is inserted once per run (`run_id` is unique, so a retried step finds the first) and
its text never changes; sending only sets its status, Postmark's MessageID or the failure.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel

from db import CustomerId, Executor, iso

DraftStatus = Literal["drafted", "sent", "send_failed"]


class StoredDraft(BaseModel):
    id: str
    run_id: str
    customer_id: CustomerId
    to_email: str
    subject: str
    body: str
    in_reply_to: str | None
    references: str | None
    thread_key: str | None
    status: DraftStatus
    provider_message_id: str | None
    failure: dict[str, Any] | None
    created_at: str


def _draft(row: asyncpg.Record) -> StoredDraft:
    data = dict(row)
    data["created_at"] = iso(data["created_at"])
    data["failure"] = json.loads(data["failure"]) if isinstance(data["failure"], str) else data["failure"]
    data.pop("sent_at", None)
    data.pop("send_started_at", None)
    return StoredDraft(**data)


async def insert_draft(
    conn: Executor,
    *,
    run_id: str,
    customer_id: CustomerId,
    to_email: str,
    subject: str,
    body: str,
    in_reply_to: str | None,
    references: str | None,
    thread_key: str | None,
) -> tuple[StoredDraft, bool]:
    """The run's draft, and whether this call created it (a repeat gets the first)."""
    row = await conn.fetchrow(
        'INSERT INTO drafts (id, run_id, customer_id, to_email, subject, body, in_reply_to, "references", thread_key)'
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (run_id) DO NOTHING RETURNING *",
        f"dr_{uuid.uuid4().hex}",
        run_id,
        customer_id,
        to_email,
        subject,
        body,
        in_reply_to,
        references,
        thread_key,
    )
    if row is not None:
        return _draft(row), True
    existing = await conn.fetchrow("SELECT * FROM drafts WHERE run_id = $1", run_id)
    if existing is None:
        raise RuntimeError(f"the draft of run {run_id} conflicted but is missing")
    return _draft(existing), False


async def get_draft(conn: Executor, *, draft_id: str, lock: bool = False) -> StoredDraft | None:
    row = await conn.fetchrow(f"SELECT * FROM drafts WHERE id = $1{' FOR UPDATE' if lock else ''}", draft_id)
    return _draft(row) if row else None


# How long one attempt may hold a draft before another may send it (a crashed attempt's lease).
SEND_LEASE_SECONDS = 120


async def claim_for_sending(conn: Executor, *, draft_id: str) -> bool:
    """Take the draft for one attempt to send it; False while another attempt holds it, or once
    it is sent or refused."""
    claimed = await conn.fetchval(
        "UPDATE drafts SET send_started_at = now() WHERE id = $1 AND status = 'drafted'"
        " AND (send_started_at IS NULL OR send_started_at < now() - make_interval(secs => $2)) RETURNING id",
        draft_id,
        SEND_LEASE_SECONDS,
    )
    return claimed is not None


async def release(conn: Executor, *, draft_id: str) -> None:
    """Give the draft back after an attempt Postmark turned away for now (5xx, 429)."""
    await conn.execute("UPDATE drafts SET send_started_at = NULL WHERE id = $1 AND status = 'drafted'", draft_id)


async def mark_sent(conn: Executor, *, draft_id: str, provider_message_id: str) -> None:
    await conn.execute(
        "UPDATE drafts SET status = 'sent', provider_message_id = $2, sent_at = now() WHERE id = $1",
        draft_id,
        provider_message_id,
    )


async def mark_failed(conn: Executor, *, draft_id: str, failure: dict[str, Any]) -> None:
    await conn.execute(
        "UPDATE drafts SET status = 'send_failed', failure = $2 WHERE id = $1", draft_id, json.dumps(failure)
    )


async def list_waiting(conn: Executor, *, limit: int = 50) -> list[StoredDraft]:
    """Drafts no one has sent, oldest first (the desk shows them when sending is off)."""
    rows = await conn.fetch("SELECT * FROM drafts WHERE status = 'drafted' ORDER BY created_at LIMIT $1", limit)
    return [_draft(r) for r in rows]


class ThreadItem(BaseModel):
    """One earlier message of a conversation, by reference: the customer's (a stored message)
    or ours (a draft). The text is read when the agent's input is built, never memoized."""

    kind: Literal["customer", "reply"]
    id: str
    at: str


async def thread_items(
    conn: Executor, *, customer_id: CustomerId, thread_key: str | None, exclude: list[str], limit: int
) -> list[ThreadItem]:
    """The conversation before this run's messages, newest `limit`, oldest first: the thread's
    messages and our drafts in it (or, for messages without a thread, the customer's)."""
    rows = await conn.fetch(
        """
        SELECT * FROM (
            SELECT 'customer' AS kind, id, received_at AS at FROM messages
            WHERE customer_id = $1 AND ($2::text IS NULL OR thread_key = $2)
              AND NOT (id = ANY($3::text[]))
            UNION ALL
            SELECT 'reply', id, created_at FROM drafts
            WHERE customer_id = $1 AND ($2::text IS NULL OR thread_key = $2)
            ORDER BY at DESC LIMIT $4
        ) recent ORDER BY at
        """,
        customer_id,
        thread_key,
        exclude,
        limit,
    )
    return [ThreadItem(kind=r["kind"], id=r["id"], at=iso(r["at"])) for r in rows]


async def thread_texts(conn: Executor, items: list[ThreadItem]) -> dict[str, tuple[str | None, str]]:
    """Subject and text of each item, by id: one query for the lot."""
    messages = [i.id for i in items if i.kind == "customer"]
    replies = [i.id for i in items if i.kind == "reply"]
    rows = await conn.fetch(
        "SELECT id, subject, text_body AS text FROM messages WHERE id = ANY($1::text[])"
        " UNION ALL SELECT id, subject, body FROM drafts WHERE id = ANY($2::text[])",
        messages,
        replies,
    )
    return {r["id"]: (r["subject"], r["text"]) for r in rows}


async def threading_of(conn: Executor, *, message_ids: list[str]) -> tuple[str | None, str | None, str | None]:
    """(In-Reply-To, References, sender) for a reply to the latest of these messages: its
    Message-ID header, and its own References followed by that id."""
    if not message_ids:
        return None, None, None
    row = await conn.fetchrow(
        "SELECT header_message_id, sender, payload FROM messages WHERE id = ANY($1::text[])"
        " ORDER BY received_at DESC LIMIT 1",
        message_ids,
    )
    if row is None or not row["header_message_id"]:
        return None, None, row["sender"] if row else None
    payload = row["payload"] if isinstance(row["payload"], dict) else json.loads(row["payload"] or "{}")
    headers = payload.get("Headers") or []
    earlier = next((str(h.get("Value") or "") for h in headers if str(h.get("Name", "")).lower() == "references"), "")
    own = f"<{row['header_message_id'].strip('<>')}>"
    references = " ".join(part for part in (earlier.strip(), own) if part)
    return own, references[-4000:], row["sender"]
