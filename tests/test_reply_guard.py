"""The reply guard (issue 21): no reply goes out claiming money moved that did not move in this
run, in any phrasing we could think of or generate, from the model or from a reviewer, or for
another amount or order than the run paid."""

from __future__ import annotations

import asyncpg
import pytest
from agents.testing import ScriptedModel, assistant_message, function_call
from hypothesis import given
from hypothesis import strategies as st
from tests_support import GRACE

import db
from support_worker.conversation import loop as conversation
from support_worker.conversation.reply_guard import PaidRefund, Unpaid, check_reply, safe_reply
from support_worker.core.settings import Settings
from support_worker.workflows import decisions

NOTHING: list[PaidRefund] = []
PAID_12050 = [PaidRefund(id=7, order_id=1003, amount_cents=12_050)]

# Claims that money moved, as models, reviewers and attackers write them.
CLAIMS = [
    "We've now refunded $499.00 to your card.",
    "we have now refunded $499.00 to your card",
    "Good news: your refund of $499 has been issued!",
    "Your refund has been processed.",
    "The refund is on its way.",
    "I refunded you.",
    "We refunded the duplicate charge.",
    "You'll see the $499.00 back on your card within 5 days.",
    "The money is back in your account.",
    "We reimbursed the second charge.",
    "Your account has been credited with $499.00.",
    "We've credited $499 to your card.",
    "We reversed the duplicate charge.",
    "We cancelled the duplicate charge.",
    "Expect your refund in 3-5 business days.",
    "You will receive your refund shortly.",
    "Your refund was approved and sent.",
    "Refund complete!",
    "The refund went through this morning.",
    "A refund for $499.00 has been initiated.",
    "No worries, we've refunded you.",
    "Not only have we refunded you, we also added a coupon.",
    "No problem - your refund has been issued.",
    "We haven't not refunded you.",
    "Declined charges were refunded.",
    "Your $499 is on its way back to you.",
    "We sent you $499.00 this morning.",
    "Your refund of four hundred ninety-nine dollars has been issued.",
    "We've wired you the money.",
    "The funds have been returned to your card.",
    "We have returned the payment to your card.",
    "Store credit has been issued to your account.",
    "Consider it refunded.",
    "REFUNDED: $499.00",
]
# The same claims, disguised to slip past a pattern.
DISGUISED = [
    "We've r e f u n d e d you.",
    "We've r-e-f-u-n-d-e-d your order.",
    "We've re\u00adfunded you.",  # a soft hyphen
    "We've ref\u200bunded you.",  # a zero-width space
    "We've ＲＥＦＵＮＤＥＤ you.",  # fullwidth
    "We've rеfundеd you.",  # Cyrillic е
    "We've r3fund3d you.",
    "Your réfund has been íssued.",
    "We\u2019ve refunded you.",
    "We've refunded you\u2060.",
    "Y o u r  r e f u n d  h a s  b e e n  i s s u e d.",
    "R.E.F.U.N.D.E.D — all $499.00 of it.",
]
# Replies that say no money moved, as the app's own templates and reviewers write them.
HONEST = [
    "No refund has been issued.",
    "Sadly no refund has been issued.",
    "We have not refunded you.",
    "After review, we were not able to approve a refund for this charge, so no refund has been issued.",
    "As you asked, we have cancelled your refund request, so no refund has been issued.",
    "We could not complete the review of your refund in time, so no refund has been issued yet.",
    "Your refund was declined.",
    "We cannot issue a refund for this order.",
    "Could you reply with the order number shown on your receipt?",
    "Thanks for writing in! Your password reset link is in your inbox.",
    "Your refund request was rejected by a reviewer.",
    safe_reply("Grace Hopper", NOTHING),
]


@pytest.mark.parametrize("reply", CLAIMS + DISGUISED)
def test_a_claim_of_money_moved_is_blocked_when_nothing_was_issued(reply: str) -> None:
    verdict = check_reply(reply, NOTHING)
    assert not verdict.allowed and verdict.problems, reply


@pytest.mark.parametrize("reply", HONEST)
def test_a_reply_saying_no_money_moved_goes_out(reply: str) -> None:
    verdict = check_reply(reply, NOTHING)
    assert verdict.allowed, verdict.problems


@pytest.mark.parametrize(
    "reply",
    [
        "A refund of $499.00 for order 1003 has been issued.",  # $120.50 was paid
        "We've refunded the full $499.",
        "We refunded 49900 cents.",
        "Your refund of €120.50 has been issued.",
        "A refund of $120.50 for order 1004 has been issued.",  # the wrong order
        "Your refund of $120.50 has been issued, and $19.99 is back on your card too.",
    ],
)
def test_a_claim_for_another_amount_or_order_than_the_run_paid_is_blocked(reply: str) -> None:
    assert not check_reply(reply, PAID_12050).allowed


@pytest.mark.parametrize(
    "reply",
    [
        "A refund of $120.50 for order 1003 has been issued (refund #7).",
        "We've refunded $120.50 to your card.",
        "Your refund has been processed.",
        "We refunded 12050 cents.",
        safe_reply("Grace", PAID_12050),
    ],
)
def test_a_true_claim_goes_out(reply: str) -> None:
    verdict = check_reply(reply, PAID_12050)
    assert verdict.allowed, verdict.problems


# --------------------------------------------------------------------------- generated disguises

CONFUSABLE = {"a": "а", "e": "е", "o": "о", "p": "р", "c": "с", "i": "і", "s": "ѕ", "x": "х", "y": "у"}
LEET = {"e": "3", "a": "4", "o": "0", "i": "1", "s": "5", "t": "7"}
INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad"]


@st.composite
def disguised(draw: st.DrawFn, text: str) -> str:
    """`text` with each letter perhaps swapped for a look-alike, a digit, its fullwidth or
    upper-case form, an accented form, or followed by an invisible character or a space."""
    out = []
    for ch in text:
        kind = draw(st.sampled_from(["same", "same", "upper", "confusable", "leet", "wide", "accent", "invisible"]))
        if kind == "upper":
            ch = ch.upper()
        elif kind == "confusable":
            ch = CONFUSABLE.get(ch, ch)
        elif kind == "leet" and ch in LEET:
            ch = LEET[ch]
        elif kind == "wide" and ch.isascii() and ch.isalpha():
            ch = chr(ord(ch) + 0xFEE0)
        elif kind == "accent" and ch.isalpha():
            ch = ch + "\u0301"
        elif kind == "invisible":
            ch = ch + draw(st.sampled_from(INVISIBLE))
        out.append(ch)
    return "".join(out)


CLAIM_CORES = ["refunded", "reimbursed", "credited your account", "your refund has been issued", "money back"]
OPENERS = ["", "Hi Grace, ", "Good news! ", "No worries, ", "Not to worry: ", "As promised, "]
AMOUNTS = ["", " $499.00", " $1,299", " 499 dollars", " USD 499"]


@given(
    opener=st.sampled_from(OPENERS),
    core=st.sampled_from(CLAIM_CORES).flatmap(disguised),
    amount=st.sampled_from(AMOUNTS),
    end=st.sampled_from([".", "!", "", " today.", " :)"]),
)
def test_generated_disguised_claims_are_blocked_when_nothing_was_issued(
    opener: str, core: str, amount: str, end: str
) -> None:
    reply = f"{opener}we have {core}{amount}{end}"
    assert not check_reply(reply, NOTHING).allowed, reply


@given(amount=st.integers(min_value=1, max_value=10_000_000), paid=st.integers(min_value=1, max_value=10_000_000))
def test_a_named_amount_passes_only_when_it_is_the_amount_paid(amount: int, paid: int) -> None:
    refunds = [PaidRefund(id=1, order_id=1003, amount_cents=paid)]
    reply = f"We have refunded ${amount // 100:,}.{amount % 100:02d} to your card."
    assert check_reply(reply, refunds).allowed == (amount == paid)


@given(
    name=st.text(min_size=1, max_size=30),
    paid=st.lists(
        st.builds(
            PaidRefund,
            id=st.integers(1, 10**6),
            order_id=st.integers(1000, 10**6),
            amount_cents=st.integers(1, 10**8),
        ),
        max_size=3,
    ),
)
def test_the_safe_reply_always_passes_its_own_guard(name: str, paid: list[PaidRefund]) -> None:
    assert check_reply(safe_reply(name, paid), paid).allowed


@pytest.mark.parametrize("status", ["rejected", "expired", "withdrawn"])
def test_the_safe_reply_says_what_became_of_an_unpaid_refund_in_its_own_words(status: str) -> None:
    unpaid = [Unpaid(status=status, order_id=1003, explanation="Reviewer's note: refunded already")]
    reply = safe_reply("Grace", NOTHING, unpaid)
    assert "order 1003" in reply and "no refund has been issued" in reply and "refunded already" not in reply
    assert check_reply(reply, NOTHING).allowed


# --------------------------------------------------------------------------- end to end


def reject_with_reply(reply: str) -> conversation.Decider:
    async def decide(request: db.RefundRequest) -> decisions.Decision:
        return decisions.Decision(request_id=request.id, approved=False, reviewer="alice", reply=reply)

    return decide


async def test_a_rejecting_reviewers_own_reply_claiming_the_refund_is_never_sent(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    model = ScriptedModel(
        [
            [function_call("issue_refund", {"order_id": 1003, "amount_cents": 49_900, "reason": "dup"}, call_id="c1")],
            [assistant_message("Hi Grace, no refund has been issued.")],
        ]
    )
    outcome = await conversation.answer_email(
        pool,
        customer_id=GRACE,
        body="I was charged twice for order 1003",
        decide=reject_with_reply("Hi Grace, your refund was processed. Best, Alice"),
        settings=settings,
        model=model,
    )
    assert outcome.reply_replaced and "We have not issued a refund" in outcome.reply
    # The draft is what would be sent: the guard's safe reply, never the reviewer's claim.
    [drafted] = await db.list_audit(pool, run_id=outcome.run_id, action=db.AuditAction.EMAIL_DRAFTED)
    assert drafted.detail["edited_by_reviewer"] is True and drafted.detail["replaced_unsafe_reply"] is True
    assert "no refund was issued" in drafted.detail["guard_problems"][0]
    assert await pool.fetchval("SELECT body FROM drafts WHERE run_id = $1", outcome.run_id) == outcome.reply


async def test_a_claim_for_more_than_was_paid_is_replaced_by_what_was_paid(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    model = ScriptedModel(
        [
            [function_call("issue_refund", {"order_id": 1003, "amount_cents": 49_900, "reason": "dup"}, call_id="c1")],
            [assistant_message("Hi Grace, we've refunded the full $499.00 to your card.")],
        ]
    )

    async def lower(request: db.RefundRequest) -> decisions.Decision:
        return decisions.Decision(request_id=request.id, approved=True, reviewer="alice", amount_cents=12_050)

    outcome = await conversation.answer_email(
        pool, customer_id=GRACE, body="charged twice for order 1003", decide=lower, settings=settings, model=model
    )
    [refund] = await db.list_refunds(pool)
    assert refund.amount_cents == 12_050 and outcome.reply_replaced
    assert f"A refund of $120.50 for order 1003 has been issued (refund #{refund.id})." in outcome.reply
    assert "$499.00" not in outcome.reply
