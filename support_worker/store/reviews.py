"""What the review desk and `support-worker pending` list: pending requests with the customer
and the order beside them."""

from __future__ import annotations

from pydantic import BaseModel

from db import Executor, RefundRequest, request_from_row

# Run ids of the terminal runner (`support-worker answer`): its requests are decided at its
# own prompt and closed when it ends, so no reviewer ever sees them.
TERMINAL_RUN_PREFIX = "local-"


class PendingReview(BaseModel):
    """One refund request waiting for a reviewer, with what the desk shows beside it."""

    request: RefundRequest
    customer_name: str
    customer_email: str
    order_description: str
    order_amount_cents: int
    seconds_left: int


async def list_pending_reviews(pool: Executor) -> list[PendingReview]:
    """Requests a reviewer can decide: pending, not yet expired, and waited on by a durable run."""
    rows = await pool.fetch(
        """
        SELECT rr.*, c.name AS customer_name, c.email AS customer_email,
               o.description AS order_description, o.amount_cents AS order_amount_cents,
               GREATEST(0, floor(EXTRACT(EPOCH FROM rr.expires_at - now())))::int AS seconds_left
        FROM refund_requests rr
        JOIN customers c ON c.id = rr.customer_id
        JOIN orders o ON o.id = rr.order_id
        WHERE rr.status = 'pending' AND rr.expires_at > now() AND NOT starts_with(rr.run_id, $1)
        ORDER BY rr.expires_at
        """,
        TERMINAL_RUN_PREFIX,
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


async def decidable_request_ids(pool: Executor, *, customer_id: str, decision_id: str) -> list[str]:
    """The customer's refund requests a decision naming only the customer could mean: pending,
    live and waited on by a durable run, or already decided (or approved once) by this very
    decision, so its second reader resolves it as the first did."""
    rows = await pool.fetch(
        """
        SELECT rr.id FROM refund_requests rr
        WHERE rr.customer_id = $1 AND (
            (rr.status = 'pending' AND rr.expires_at > now() AND NOT starts_with(rr.run_id, $3))
            OR rr.decision_id = $2
            OR EXISTS (SELECT 1 FROM refund_approvals ra WHERE ra.request_id = rr.id AND ra.decision_id = $2))
        ORDER BY rr.created_at
        """,
        customer_id,
        decision_id,
        TERMINAL_RUN_PREFIX,
    )
    return [row["id"] for row in rows]
