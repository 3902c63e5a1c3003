"""Who a reviewer is: one identity however the name is spelled.

Four eyes counts distinct reviewers, so `alice`, `Alice`, `alice ` (a trailing space),
`ａｌｉｃｅ` (fullwidth letters) and `ali\u200bce` (a zero-width space) must all be the same
person. The identity is the name NFKC-normalized, with invisible format characters (Unicode
category Cf: zero-width spaces and joiners, bidi marks, soft hyphens) removed, case-folded,
normalized again (case folding can undo NFKC), and with whitespace trimmed and runs of it
collapsed to one space. Every door (desk, CLI, the decision event, the terminal prompt)
records decisions under this identity, and names stored before it existed are compared
through it too.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated

from pydantic import AfterValidator

from support_worker.core.fields import storable_problem

MAX_REVIEWER_CHARS = 200


def reviewer_identity(name: str) -> str:
    """The one spelling of a reviewer's name: what four eyes compares and the audit records."""
    text = unicodedata.normalize("NFKC", name)
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    text = unicodedata.normalize("NFKC", text.casefold())
    return " ".join(text.split())


def same_reviewer(one: str, other: str) -> bool:
    return reviewer_identity(one) == reviewer_identity(other)


def _reviewer(name: str) -> str:
    problem = storable_problem(name)
    if problem:
        raise ValueError(f"{problem}, which cannot be stored; remove it and send again")
    identity = reviewer_identity(name)
    if not identity:
        raise ValueError("must name a reviewer (it is empty once spaces and invisible characters are removed)")
    if len(identity) > MAX_REVIEWER_CHARS:
        raise ValueError(f"must be at most {MAX_REVIEWER_CHARS} characters")
    return identity


# A reviewer's name as every decision model takes it: validated, then reduced to its identity.
ReviewerName = Annotated[str, AfterValidator(_reviewer)]
