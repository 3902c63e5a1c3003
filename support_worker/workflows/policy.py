"""The refund policy, in code: may this refund be paid, and must a human ask first?

Pure rules over an order as the database has it (`refund_policy`), plus the one read that
fetches that order (`check_policy`), and four eyes on totals (`approvals_needed`: what an order
and a customer get refunded in total, not one request). Engine-free and model-free. `refunds.open_request`
consults it when a request is opened and `refunds.pay_for_call` again, under the order's
lock, when paying; nothing else decides what is refundable.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

import db
from support_worker.core.fields import MAX_ID
from support_worker.store.refund_totals import Exposure


class PolicyVerdict(BaseModel):
    """May this refund be paid, and must a human approve it first? The explanation is
    written for the model, which turns it into the customer's reply."""

    allowed: bool
    needs_human: bool
    explanation: str
    order_id: int | None
    amount_cents: int
    refundable_cents: int = 0
    approvals_needed: int = 1  # distinct reviewers who must approve: 2 above the four-eyes limit


def _refused(explanation: str, *, order_id: int | None, amount_cents: int, refundable: int = 0) -> PolicyVerdict:
    return PolicyVerdict(
        allowed=False,
        needs_human=False,
        explanation=explanation,
        order_id=order_id,
        amount_cents=amount_cents,
        refundable_cents=refundable,
    )


# The default of REFUND_FOUR_EYES_CENTS: refunds above $500.00 need two different reviewers.
DEFAULT_FOUR_EYES_CENTS = 50_000
# The default of REFUND_FOUR_EYES_WINDOW_DAYS: what a customer was refunded over the last 30
# days counts towards the limit, so a large refund asked for in parts still needs two people.
DEFAULT_FOUR_EYES_WINDOW_DAYS = 30


def approvals_needed(amount_cents: int, exposure: Exposure, *, four_eyes_cents: int) -> int:
    """Four eyes on totals: two different reviewers when this request takes what its order has
    been refunded (ever), or what its customer has been refunded over the window, above
    `four_eyes_cents`; both totals count every live request too (`refund_totals.Exposure`).
    Strictly greater: a total of exactly the limit needs one."""
    order_total = exposure.order_cents + amount_cents
    customer_total = exposure.customer_cents + amount_cents
    return 2 if max(order_total, customer_total) > four_eyes_cents else 1


def refund_policy(
    order: db.Order | None,
    *,
    customer_id: db.CustomerId,
    order_id: Any,
    amount_cents: Any,
    four_eyes_cents: int = DEFAULT_FOUR_EYES_CENTS,
) -> PolicyVerdict:
    """The refund policy, in code: an order of this customer's, a positive whole number of
    cents, no more than what was paid minus what was already refunded. Every refund the
    policy allows is asked of a human first, and of two different humans when it is above
    `four_eyes_cents` (strictly greater: exactly the limit needs one)."""
    if isinstance(order_id, bool) or not isinstance(order_id, int) or not 0 < order_id <= MAX_ID:
        return _refused("Refund refused: the order id must be a positive whole number.", order_id=None, amount_cents=0)
    if isinstance(amount_cents, bool) or not isinstance(amount_cents, int) or not 0 < amount_cents <= MAX_ID:
        return _refused(
            "Refund refused: the amount must be a positive whole number of cents.", order_id=order_id, amount_cents=0
        )
    if order is None or order.customer_id != customer_id:
        return _refused(
            f"Refund refused: order {order_id} does not belong to this customer.",
            order_id=order_id,
            amount_cents=amount_cents,
        )
    if order.refundable_cents <= 0:
        return _refused(
            f"Refund refused: order {order_id} has already been fully refunded.",
            order_id=order_id,
            amount_cents=amount_cents,
        )
    if amount_cents > order.refundable_cents:
        return _refused(
            f"Refund refused: {amount_cents} cents is more than the {order.refundable_cents}"
            f" cents still refundable on order {order_id}.",
            order_id=order_id,
            amount_cents=amount_cents,
            refundable=order.refundable_cents,
        )
    four_eyes = amount_cents > four_eyes_cents
    return PolicyVerdict(
        allowed=True,
        needs_human=True,
        explanation=(
            "Refund is within policy; two different reviewers must approve it."
            if four_eyes
            else "Refund is within policy; a reviewer decides."
        ),
        order_id=order_id,
        amount_cents=amount_cents,
        refundable_cents=order.refundable_cents,
        approvals_needed=2 if four_eyes else 1,
    )


async def check_policy(
    conn: db.Executor,
    *,
    customer_id: db.CustomerId,
    order_id: Any,
    amount_cents: Any,
    four_eyes_cents: int = DEFAULT_FOUR_EYES_CENTS,
) -> PolicyVerdict:
    """`refund_policy` against the order as the database has it now."""
    in_range = isinstance(order_id, int) and not isinstance(order_id, bool) and 0 < order_id <= MAX_ID
    order = await db.get_order(conn, order_id=order_id) if in_range else None
    return refund_policy(
        order, customer_id=customer_id, order_id=order_id, amount_cents=amount_cents, four_eyes_cents=four_eyes_cents
    )
