"""A stored message's text by its reference, through a small per-process cache.

The email function needs the customer's text on every call of its run (the text is never put
in a step output: the memo stays small), and a stored message's text never changes once
written (`store/messages.py` inserts it once; nothing updates it). So each process keeps the
texts it has read, up to `MAX_CACHED_CHARS`, least recently used forgotten first.

A cached text is used only when its sha256 equals the reference's digest: an id reused for
another text (a test database truncated and refilled, say) reads Postgres again, never the
old text. A miss costs exactly the read it replaces.
"""

from __future__ import annotations

from collections import OrderedDict

from db import Executor
from support_worker.store import messages

# Enough for a few hundred ordinary emails, or forty of the largest an event may carry.
MAX_CACHED_CHARS = 8_000_000

_texts: OrderedDict[str, tuple[str, str]] = OrderedDict()  # message id -> (digest, text)
_held = 0


async def text_of(conn: Executor, ref: messages.MessageRef) -> str:
    """The message's text: from this process's memory when it holds the same text, else
    from Postgres (and kept for the next call)."""
    held = _texts.get(ref.message_id)
    if held is not None and held[0] == ref.digest:
        _texts.move_to_end(ref.message_id)
        return held[1]
    stored = await messages.load_text(conn, message_id=ref.message_id)
    _keep(ref.message_id, messages.digest(stored.text), stored.text)
    return stored.text


def forget_all() -> None:
    global _held
    _texts.clear()
    _held = 0


def _keep(message_id: str, digest: str, text: str) -> None:
    global _held
    if len(text) > MAX_CACHED_CHARS:
        return
    old = _texts.pop(message_id, None)
    if old is not None:
        _held -= len(old[1])
    _texts[message_id] = (digest, text)
    _held += len(text)
    while _held > MAX_CACHED_CHARS:
        _, (_, dropped) = _texts.popitem(last=False)
        _held -= len(dropped)
