"""Which request a decision event means, and who made it: the course's decisions, as written.

The course sends its refund decision as `{"customer_id": "c-4429", "approved": true}` (001 D5)
and its escalation decision without a reviewer (003 D7). `request_id` stays the recommended
key (the course says so itself, and the desk and the CLI always send it), but a decision that
names only the customer decides that customer's one pending request; with none or several it
changes nothing, and the caller audits why (`decision_ignored`, asking for `request_id`).

A decision that names no reviewer is recorded as coming from its event (`event:<event id>`),
never as a person, unless DECISIONS_REQUIRE_REVIEWER is on (the default in production). Such
a decision never counts towards four eyes, which needs two named, different reviewers.

Escalations resolve the same way (`escalations.record_event`, with these helpers).
Engine-free: the recorder functions and the waiting gates resolve the same event the same
way (the same event id gives the same reviewer and the same decision id), so the first of
them to record it wins and the other sees the same decision again.
"""

from __future__ import annotations

from typing import Literal

import asyncpg
from pydantic import BaseModel

from support_worker.store import reviews
from support_worker.workflows.decisions import EVENT_REVIEWER_PREFIX, Decision


def event_reviewer(event_id: str) -> str:
    """Who decided, for a decision that names no one: the event it came in, never a person."""
    return f"{EVENT_REVIEWER_PREFIX}{event_id}"


def is_named(reviewer: str | None) -> bool:
    """Whether a reviewer is a named person (four eyes counts only those)."""
    return bool(reviewer) and not str(reviewer).startswith(EVENT_REVIEWER_PREFIX)


class Unresolved(BaseModel):
    """A decision event that names no request this service can decide, and why, in one line."""

    reason: Literal["reviewer_required", "no_pending_request", "several_pending_requests"]
    why: str


def reviewer_refusal(reviewer: str | None, *, require_reviewer: bool) -> Unresolved | None:
    if reviewer or not require_reviewer:
        return None
    return Unresolved(
        reason="reviewer_required",
        why="the decision names no reviewer and DECISIONS_REQUIRE_REVIEWER is on: send reviewer (who decided)",
    )


def by_customer(kind: str, customer_id: str, found: list[str]) -> str | Unresolved:
    """The one request a customer-only decision means, or why there is none to decide."""
    if len(found) == 1:
        return found[0]
    if not found:
        return Unresolved(
            reason="no_pending_request",
            why=f"customer {customer_id} has no pending {kind}: send request_id to name the one you mean",
        )
    return Unresolved(
        reason="several_pending_requests",
        why=f"customer {customer_id} has {len(found)} pending {kind}s: send request_id to name the one you mean",
    )


async def resolve_refund(
    pool: asyncpg.Pool, decision: Decision, *, decision_id: str, event_id: str, require_reviewer: bool
) -> Decision | Unresolved:
    """The decision with its request and reviewer filled in, or why it cannot be applied.
    A request this same decision already decided still counts as the customer's one, so the
    second of the recorder and the waiting run finds what the first recorded."""
    refusal = reviewer_refusal(decision.reviewer, require_reviewer=require_reviewer)
    if refusal is not None:
        return refusal
    request_id = decision.request_id
    if request_id is None:
        if decision.customer_id is None:  # the schema requires one of the two; kept for the type checker
            return Unresolved(reason="no_pending_request", why="send request_id")
        found = await reviews.decidable_request_ids(pool, customer_id=decision.customer_id, decision_id=decision_id)
        target = by_customer("refund request", decision.customer_id, found)
        if isinstance(target, Unresolved):
            return target
        request_id = target
    reviewer = decision.reviewer or event_reviewer(event_id)
    return decision.model_copy(update={"request_id": request_id, "reviewer": reviewer})
