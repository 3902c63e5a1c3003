"""What four eyes counts: how much an order and a customer have been refunded, or are about
to be, read under the customer's and the order's row locks.

`refund_exposure` is the one query; `refunds.open_request` calls it in the transaction that
inserts the request, after `lock_customer` and `db.lock_order`, so two requests opened at
once queue and the second sees the first.
"""

from __future__ import annotations

from pydantic import BaseModel

from db import CustomerId, Executor


class Exposure(BaseModel):
    """Cents already refunded or still in play, not counting the request being opened.

    "In play" is every request that is pending or approved and not yet paid: it may still be
    paid, so it counts until it is refused, expired or withdrawn.
    """

    order_cents: int  # on this order, ever
    customer_cents: int  # to this customer: refunds within the window, plus every live request
    window_days: int


async def lock_customer(conn: Executor, *, customer_id: CustomerId) -> None:
    """Hold the customer's row until the transaction ends, so requests of one customer queue."""
    await conn.execute("SELECT id FROM customers WHERE id = $1 FOR UPDATE", customer_id)


_EXPOSURE = """
WITH live AS (
    SELECT rr.order_id, COALESCE(rr.approved_amount_cents, rr.amount_cents) AS cents
    FROM refund_requests rr
    WHERE rr.customer_id = $1 AND rr.status IN ('pending', 'approved')
      AND NOT EXISTS (SELECT 1 FROM refunds r WHERE r.request_id = rr.id)
)
SELECT
    (SELECT COALESCE(sum(amount_cents), 0) FROM refunds WHERE order_id = $2)
      + (SELECT COALESCE(sum(cents), 0) FROM live WHERE order_id = $2) AS order_cents,
    (SELECT COALESCE(sum(amount_cents), 0) FROM refunds
      WHERE customer_id = $1 AND created_at > now() - make_interval(days => $3))
      + (SELECT COALESCE(sum(cents), 0) FROM live) AS customer_cents
"""


async def refund_exposure(conn: Executor, *, customer_id: CustomerId, order_id: int, window_days: int) -> Exposure:
    """The order's and the customer's totals so far (see `Exposure`), by the database's clock."""
    row = await conn.fetchrow(_EXPOSURE, customer_id, order_id, window_days)
    if row is None:
        raise RuntimeError("an aggregate query returned no row")
    return Exposure(
        order_cents=int(row["order_cents"]), customer_cents=int(row["customer_cents"]), window_days=window_days
    )
