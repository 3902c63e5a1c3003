"""The claim-check: customer messages and their attachments, stored once in Postgres.

Events, step outputs and audit rows carry a `MessageRef` (the id, a digest, a short excerpt,
sizes, and the attachments' names, types and sizes); the text is loaded from here when the
conversation needs it, and attachment contents never leave this table except on request.
"""

from __future__ import annotations

import hashlib
from typing import Any

import asyncpg
from pydantic import BaseModel

import db
from db import Executor

EXCERPT_CHARS = 200
# The agent's input and the event list at most this many attachments by name.
LISTED_ATTACHMENTS = 20


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class Attachment(BaseModel):
    """An attachment as it arrived; `content` is the decoded bytes."""

    name: str
    content_type: str
    content: bytes
    content_id: str | None = None


class AttachmentInfo(BaseModel):
    """What events, steps and the agent see of an attachment: never its content."""

    position: int
    name: str
    content_type: str
    size_bytes: int


class NewMessage(BaseModel):
    id: str
    source: str  # "postmark" | "event"
    customer_id: str | None = None
    sender: str | None = None
    subject: str | None = None
    text_body: str
    text_from_html: bool = False
    html_body: str | None = None
    raw_email: str | None = None
    payload: dict[str, Any] = {}
    thread_key: str | None = None
    header_message_id: str | None = None
    attachments: list[Attachment] = []


class MessageRef(BaseModel):
    """The claim ticket: small whatever the message's size."""

    message_id: str
    digest: str
    excerpt: str
    text_chars: int
    text_bytes: int
    thread_key: str | None = None
    attachment_count: int = 0
    attachment_bytes: int = 0
    attachments: list[AttachmentInfo] = []  # the first LISTED_ATTACHMENTS


class StoredText(BaseModel):
    subject: str | None
    text: str
    thread_key: str | None


async def store_message(pool: asyncpg.Pool, message: NewMessage) -> tuple[MessageRef, bool]:
    """Store the message and its attachments once (one transaction); a second store of the
    same id keeps the first. Returns the reference and whether this call stored it."""
    text_bytes = len(message.text_body.encode())
    async with db.transaction(pool) as conn:
        inserted = await conn.fetchval(
            """
            INSERT INTO messages (id, source, customer_id, sender, subject, text_body, text_from_html, html_body,
                                  raw_email, payload, thread_key, header_message_id, digest, text_bytes,
                                  attachment_count, attachment_bytes)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
            ON CONFLICT (id) DO NOTHING RETURNING true
            """,
            message.id,
            message.source,
            message.customer_id,
            message.sender,
            message.subject,
            message.text_body,
            message.text_from_html,
            message.html_body,
            message.raw_email,
            message.payload,
            message.thread_key,
            message.header_message_id,
            digest(message.text_body),
            text_bytes,
            len(message.attachments),
            sum(len(a.content) for a in message.attachments),
        )
        if inserted and message.attachments:  # executemany of nothing is still a round trip
            await conn.executemany(
                "INSERT INTO message_attachments (message_id, position, name, content_type, content_id, size_bytes,"
                " content) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                [
                    (message.id, i, a.name, a.content_type, a.content_id, len(a.content), a.content)
                    for i, a in enumerate(message.attachments)
                ],
            )
    ref = await get_ref(pool, message_id=message.id)
    if ref is None:
        raise LookupError(f"message {message.id} vanished right after it was stored")
    return ref, bool(inserted)


async def get_ref(conn: Executor, *, message_id: str) -> MessageRef | None:
    row = await conn.fetchrow(
        "SELECT id, digest, left(text_body, $2) AS head, length(text_body) AS chars, text_bytes, thread_key,"
        " attachment_count, attachment_bytes FROM messages WHERE id = $1",
        message_id,
        EXCERPT_CHARS * 4,
    )
    if row is None:
        return None
    listed = (
        await conn.fetch(
            "SELECT position, name, content_type, size_bytes FROM message_attachments"
            " WHERE message_id = $1 ORDER BY position LIMIT $2",
            message_id,
            LISTED_ATTACHMENTS,
        )
        if row["attachment_count"]
        else []
    )
    return MessageRef(
        message_id=row["id"],
        digest=row["digest"],
        excerpt=excerpt(row["head"]),
        text_chars=row["chars"],
        text_bytes=row["text_bytes"],
        thread_key=row["thread_key"],
        attachment_count=row["attachment_count"],
        attachment_bytes=row["attachment_bytes"],
        attachments=[AttachmentInfo(**dict(r)) for r in listed],
    )


async def stored_fingerprint(conn: Executor, *, message_id: str) -> str | None:
    """The content fingerprint the webhook stored with this message ("" for one stored
    before fingerprints were kept), or None when no message has this id."""
    return await conn.fetchval("SELECT coalesce(payload->>'Fingerprint', '') FROM messages WHERE id = $1", message_id)


async def load_text(conn: Executor, *, message_id: str) -> StoredText:
    row = await conn.fetchrow("SELECT subject, text_body, thread_key FROM messages WHERE id = $1", message_id)
    if row is None:
        raise LookupError(f"message {message_id} is not stored")
    return StoredText(subject=row["subject"], text=row["text_body"], thread_key=row["thread_key"])


async def thread_of(conn: Executor, *, header_message_ids: list[str]) -> str | None:
    """The thread of the first stored message whose Message-ID header is one of these."""
    if not header_message_ids:
        return None
    return await conn.fetchval(
        "SELECT thread_key FROM messages WHERE header_message_id = ANY($1::text[]) AND thread_key IS NOT NULL"
        " ORDER BY received_at LIMIT 1",
        header_message_ids,
    )


async def earlier_in_thread(conn: Executor, *, thread_key: str, message_id: str) -> int:
    """How many stored messages came before this one in its thread."""
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM messages WHERE thread_key = $1 AND id <> $2"
            " AND received_at <= (SELECT received_at FROM messages WHERE id = $2)",
            thread_key,
            message_id,
        )
    )


async def attachment_content(conn: Executor, *, message_id: str, position: int) -> bytes | None:
    content = await conn.fetchval(
        "SELECT content FROM message_attachments WHERE message_id = $1 AND position = $2", message_id, position
    )
    return bytes(content) if content is not None else None
