"""The per-process cache of stored message texts (store/message_cache.py): one read per
process, never another message's text, bounded."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from support_worker.store import message_cache, messages


class CountingReads:
    """The pool, counting the reads that reach Postgres."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool, self.reads = pool, 0

    async def fetchrow(self, query: str, *args: Any) -> Any:
        self.reads += 1
        return await self.pool.fetchrow(query, *args)


@pytest.fixture(autouse=True)
def empty_cache() -> Iterator[None]:
    message_cache.forget_all()
    yield
    message_cache.forget_all()


async def _store(pool: asyncpg.Pool, message_id: str, text: str) -> messages.MessageRef:
    ref, _ = await messages.store_message(pool, messages.NewMessage(id=message_id, source="event", text_body=text))
    return ref


async def test_a_stored_text_is_read_from_postgres_once_then_from_memory(pool: asyncpg.Pool) -> None:
    ref = await _store(pool, "m-1", "Do you ship to Canada?")
    reads = CountingReads(pool)
    assert await message_cache.text_of(reads, ref) == "Do you ship to Canada?"
    assert await message_cache.text_of(reads, ref) == "Do you ship to Canada?"
    assert reads.reads == 1


async def test_an_id_reused_for_another_text_reads_postgres_again(pool: asyncpg.Pool) -> None:
    first = await _store(pool, "m-1", "Do you ship to Canada?")
    assert await message_cache.text_of(pool, first) == "Do you ship to Canada?"
    # The database is emptied and the id comes back with other words (tests do this).
    await pool.execute("TRUNCATE messages CASCADE")
    second = await _store(pool, "m-1", "I was charged twice for order 1003")
    reads = CountingReads(pool)
    assert await message_cache.text_of(reads, second) == "I was charged twice for order 1003"
    assert reads.reads == 1


async def test_the_cache_forgets_the_least_recently_used_text_past_its_bound(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(message_cache, "MAX_CACHED_CHARS", 25)
    old, new = await _store(pool, "m-old", "x" * 15), await _store(pool, "m-new", "y" * 15)
    await message_cache.text_of(pool, old)
    await message_cache.text_of(pool, new)  # 30 characters would pass 25: the old one goes
    reads = CountingReads(pool)
    assert await message_cache.text_of(reads, new) == "y" * 15 and reads.reads == 0
    assert await message_cache.text_of(reads, old) == "x" * 15 and reads.reads == 1
