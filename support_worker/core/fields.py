"""Field types shared by every schema that takes input from outside: text that Postgres can
store, customer ids as text, ids that fit a bigint.

Postgres refuses NUL characters in text and jsonb, and UTF-8 cannot carry an unpaired
surrogate; a message with either would fail every retry of the step that stores it. So every
door refuses them up front, with a reason, instead of the store failing later.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field

# Postgres bigint: ids beyond it are refused as input, never sent to the database.
MAX_ID = 2**63 - 1

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable_problem(text: str) -> str | None:
    """Why Postgres could not store `text`, or None when it can."""
    match = _UNSTORABLE.search(text)
    if match is None:
        return None
    return "contains a NUL character" if match.group() == "\x00" else "contains an unpaired UTF-16 surrogate"


def _storable(text: str) -> str:
    problem = storable_problem(text)
    if problem:
        raise ValueError(f"{problem}, which cannot be stored; remove it and send again")
    return text


def _customer_id(value: Any) -> Any:
    """Text ids as they are ("c-4429"); a JSON number means the same id as text (2 is "2")."""
    if isinstance(value, bool):
        raise ValueError('must be text such as "c-4429" (or a whole number)')
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value.strip()
    raise ValueError('must be text such as "c-4429" (or a whole number)')


def customer_id_or_none(value: Any) -> str | None:
    """The customer id an untrusted payload names, or None when it names none we could store."""
    try:
        text = _customer_id(value)
    except ValueError:
        return None
    return text if isinstance(text, str) and 0 < len(text) <= 64 and storable_problem(text) is None else None


StorableText = Annotated[str, AfterValidator(_storable)]
CustomerIdText = Annotated[
    str, BeforeValidator(_customer_id), Field(min_length=1, max_length=64), AfterValidator(_storable)
]
