"""The conversation so far (003 D3's `load-thread`): the earlier messages of the thread an
email belongs to, the customer's and our drafted replies, for the agent to read.

The step output is references only (ids and times, never a body: the memo stays small); the
text is read from Postgres when the agent's input is built, in one query, and only when the
thread has anything in it. Both kinds of text are written once and never change, so every
call of a run reads the same thread. Bounded: the newest MAX_THREAD_ITEMS, each cut to
MAX_ITEM_CHARS, the whole block to MAX_THREAD_CHARS.
"""

from __future__ import annotations

import asyncpg
from pydantic import BaseModel

from support_worker.agent.offline_model import THREAD_MARKER
from support_worker.store import drafts

MAX_THREAD_ITEMS = 10
MAX_ITEM_CHARS = 1_500
MAX_THREAD_CHARS = 8_000


class Thread(BaseModel):
    items: list[drafts.ThreadItem] = []


async def load_thread(
    pool: asyncpg.Pool, *, customer_id: str, thread_key: str | None, answering: list[str]
) -> Thread:
    """The thread's earlier messages and replies, by reference (newest MAX_THREAD_ITEMS)."""
    items = await drafts.thread_items(
        pool, customer_id=customer_id, thread_key=thread_key, exclude=answering, limit=MAX_THREAD_ITEMS
    )
    return Thread(items=items)


async def thread_block(pool: asyncpg.Pool, thread: Thread) -> str:
    """The thread as the agent reads it, after the new email; empty (and no query) for a first email."""
    if not thread.items:
        return ""
    texts = await drafts.thread_texts(pool, thread.items)
    parts: list[str] = []
    for item in thread.items:
        subject, text = texts.get(item.id, (None, ""))
        who = "The customer wrote" if item.kind == "customer" else "We replied"
        body = text if len(text) <= MAX_ITEM_CHARS else text[: MAX_ITEM_CHARS - 1] + "…"
        parts.append(f"[{item.at[:16]} UTC] {who} (subject: {subject or '(none)'}):\n{body}")
    block = "\n\n".join(parts)
    if len(block) > MAX_THREAD_CHARS:
        block = "…" + block[-(MAX_THREAD_CHARS - 1) :]  # the newest part matters most
    return f"{THREAD_MARKER}\n{block}"


def with_thread(email: str, block: str) -> str:
    """The agent's input: the new email first (what to answer), then the thread, if any."""
    return f"{email}\n\n{block}" if block else email
