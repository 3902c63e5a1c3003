"""What the review desk and `support-worker pending` list: pending requests with the customer
and the order beside them."""

from __future__ import annotations

from pydantic import BaseModel

from db import Executor, RefundRequest, request_from_row


class PendingReview(BaseModel):
    """One refund request waiting for a reviewer, with what the desk shows beside it."""

    request: RefundRequest
    customer_name: str
    customer_email: str
    order_description: str
    order_amount_cents: int
    seconds_left: int


async def list_pending_reviews(pool: Executor) -> list[PendingReview]:
    rows = await pool.fetch(
        """
        SELECT rr.*, c.name AS customer_name, c.email AS customer_email,
               o.description AS order_description, o.amount_cents AS order_amount_cents,
               GREATEST(0, floor(EXTRACT(EPOCH FROM rr.expires_at - now())))::int AS seconds_left
        FROM refund_requests rr
        JOIN customers c ON c.id = rr.customer_id
        JOIN orders o ON o.id = rr.order_id
        WHERE rr.status = 'pending' AND rr.expires_at > now()
        ORDER BY rr.expires_at
        """
    )
    reviews = []
    for row in rows:
        data = dict(row)
        extra = {
            k: data.pop(k)
            for k in ("customer_name", "customer_email", "order_description", "order_amount_cents", "seconds_left")
        }
        reviews.append(PendingReview(request=request_from_row(data), **extra))
    return reviews
