"""The offline rule-based model on a table of varied emails, through the real agent and tools."""

from __future__ import annotations

import asyncpg
import pytest

import db
from support_worker.conversation import loop as conversation
from support_worker.core.settings import Settings
from support_worker.store.sample_data import ADA, ALAN, GRACE, KATHERINE, LINUS
from support_worker.workflows import decisions

# (customer, email, expected refund request as (order, cents) or None, words the reply must contain)
EMAILS: list[tuple[int, str, tuple[int, int] | None, str]] = [
    (GRACE, "I was charged twice for order 1003.", (1003, 49_900), "has been issued"),
    (GRACE, "Hi, looks like I got double-charged on order #1004", (1004, 1_999), "has been issued"),
    (ADA, "Duplicate charge on my card for order 1002, please fix", (1002, 4_999), "has been issued"),
    (ALAN, "You overcharged me for order 1006: I was charged $150.00 instead of $120.00", (1006, 3_000), "$30.00"),
    (GRACE, "My order 1005 failed but I still paid for it", (1005, 2_500), "has been issued"),
    (LINUS, "The payment didn't go through properly and my order failed, yet I was billed.", (1011, 1_500), "issued"),
    (KATHERINE, "I was billed twice for order 1009!!", (1009, 2_200), "has been issued"),
    (ALAN, "Order 1007 never arrived and I was charged", (1007, 899), "has been issued"),
    (ADA, "Where is my order 1001? Any tracking info?", None, "marked as paid"),
    (GRACE, "How do I change the email address on my account?", None, "received your message"),
    (ALAN, "Just wanted to say thanks, the rotor set is great.", None, "received your message"),
    (LINUS, "Can you tell me the status of order 1010?", None, "marked as delivered"),
    (KATHERINE, "I was charged twice, please help!", None, "order number"),
    (ADA, "What is order 9999? I don't recognise it.", None, "could not find order 9999"),
    (GRACE, "Do you ship to Canada?", None, "received your message"),
    (ALAN, "Please refund $20 for order 1006, the box was dented", (1006, 2_000), "has been issued"),
]


@pytest.mark.parametrize(("customer_id", "body", "expected_request", "reply_has"), EMAILS)
async def test_offline_model_on_varied_emails(
    pool: asyncpg.Pool,
    settings: Settings,
    customer_id: int,
    body: str,
    expected_request: tuple[int, int] | None,
    reply_has: str,
) -> None:
    requested: list[tuple[int, int]] = []

    async def decide(request: db.RefundRequest) -> decisions.Decision:
        requested.append((request.order_id, request.amount_cents))
        return decisions.Decision(request_id=request.id, approved=True, reviewer="table")

    outcome = await conversation.answer_email(
        pool, customer_id=customer_id, body=body, decide=decide, settings=settings
    )
    assert requested == ([expected_request] if expected_request else [])
    assert reply_has in outcome.reply
    assert outcome.reply.startswith("Hi ") and "The Support Team" in outcome.reply
    paid = await db.list_refunds(pool)
    assert [(r.order_id, r.amount_cents) for r in paid] == ([expected_request] if expected_request else [])


def test_offline_model_says_what_it_is() -> None:
    from support_worker.agent.offline_model import OFFLINE_MODEL_NAME, OfflineSupportModel

    assert "offline" in OFFLINE_MODEL_NAME and "rule" in (OfflineSupportModel.__doc__ or "").lower()
