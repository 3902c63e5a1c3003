"""Every CEL expression the app hands the engine, evaluated by a real CEL implementation.

The expressions are read from what the app actually sends: the registration payload the
stub captures on sync (priority, concurrency keys) and the ``WaitForEvent`` op a refund run
reports (its ``if``). They are evaluated with cel-python against representative events, and
the tests assert what the engine would compute from them.
"""

from __future__ import annotations

import json
from typing import Any

import celpy
import pytest
from inngest_driver import cel_evaluate, cel_match
from tests_support import EMAIL_FN, GRACE, Engine

import inngest_app
from support_worker.durable import gates

CHARGED_TWICE = {"customer_id": GRACE, "subject": "Double charge", "body": "I was charged twice for order 1003"}


def email_fn(engine: Engine) -> dict[str, Any]:
    return engine.driver.functions[engine.driver.fn_id(EMAIL_FN)]


def email_event(**data: Any) -> dict[str, Any]:
    return {"name": inngest_app.EMAIL_RECEIVED, "id": "evt-1", "ts": 1_790_000_000_000, "data": {"body": "hi", **data}}


@pytest.mark.parametrize(
    ("data", "priority"),
    [
        ({"tier": "enterprise"}, 600),
        ({"tier": "pro"}, 300),
        ({"tier": "free"}, 0),
        ({}, 0),  # typed into the dashboard without a tier
        ({"tier": "platinum"}, 0),  # a tier the expression does not know
        ({"tier": ""}, 0),
    ],
)
async def test_priority_is_an_int_within_the_engines_range_for_every_tier(
    engine: Engine, data: dict[str, Any], priority: int
) -> None:
    expression = email_fn(engine)["priority"]["run"]
    value = cel_evaluate(expression, event=email_event(customer_id=GRACE, **data))
    assert type(value) is int and -600 <= value <= 600
    assert value == priority


@pytest.mark.parametrize("tier", [None, True, 5, ["enterprise"]])
async def test_priority_of_a_tier_that_is_not_text(engine: Engine, tier: Any) -> None:
    """A tier that is present but not a string: the expression must still give an int."""
    expression = email_fn(engine)["priority"]["run"]
    try:
        value = cel_evaluate(expression, event=email_event(customer_id=GRACE, tier=tier))
    except celpy.CELEvalError as error:
        pytest.fail(f"priority does not evaluate for tier={tier!r}: {error}")
    assert value == 0


CUSTOMER_IDS: list[Any] = [2, 3, 20, "2", 1234567, "1234567", "c-4429", 'c-"quoted"', "c\\back\\slash", "c-'single'"]


async def test_each_concurrency_key_evaluates_one_key_per_customer(engine: Engine) -> None:
    keyed = [c["key"] for c in email_fn(engine)["concurrency"] if "key" in c]
    assert keyed, "the per-customer concurrency limit is registered with a key"
    for expression in keyed:
        values = [cel_evaluate(expression, event=email_event(customer_id=cid)) for cid in CUSTOMER_IDS]
        # The engine keys by the evaluated value. A JSON number names the same customer as its
        # text (2 is "2", 1234567 is "1234567", though Inngest's CEL would print the double
        # 1234567 as "1.234567e+06"), so they share a key; every other id gets its own.
        assert values[:3] == ["2", "3", "20"] and values[4:6] == ["1234567", "1234567"]
        assert values[6] == "c-4429"
        assert len(set(values)) == len({str(cid) for cid in CUSTOMER_IDS})


def customer_keys(engine: Engine) -> list[tuple[str, str]]:
    """Every per-customer key the email function registers: (where, CEL expression)."""
    fn = email_fn(engine)
    keys = [("concurrency", c["key"]) for c in fn["concurrency"] if "key" in c]
    assert fn.get("debounce"), "the email function is registered with a debounce (EMAIL_BURST_SECONDS > 0)"
    return [*keys, ("debounce", fn["debounce"]["key"])]


# A customer_id an event may carry that names no customer: the key must fall back to the sender.
NOT_AN_ID: list[Any] = [None, "", True, False, ["c-4429"], {"id": "c-4429"}]


@pytest.mark.parametrize("customer_id", [*NOT_AN_ID, "absent"])
async def test_emails_without_a_usable_customer_id_are_keyed_per_sender(engine: Engine, customer_id: Any) -> None:
    # Inngest keys a run by the evaluated value; an expression that errors or yields one
    # constant for all of these would put every sender's email into one burst and one slot.
    for where, expression in customer_keys(engine):
        keys = []
        for address in ("grace@example.com", "ada@example.com"):
            data = {"from_email": address} | ({} if customer_id == "absent" else {"customer_id": customer_id})
            keys.append(cel_evaluate(expression, event=email_event(**data)))
        assert keys == ["from:grace@example.com", "from:ada@example.com"], where


@pytest.mark.parametrize(
    ("customer_id", "key"),
    [("c-4429", "c-4429"), (2, "2"), ("2", "2"), (2**40, str(2**40)), ("c-ünïcode", "c-ünïcode")],
)
async def test_a_customer_id_of_text_or_a_number_is_the_key_whatever_the_sender(
    engine: Engine, customer_id: Any, key: str
) -> None:
    for where, expression in customer_keys(engine):
        for address in ("grace@example.com", None, 7):
            data = {"customer_id": customer_id} | ({"from_email": address} if address is not None else {})
            assert cel_evaluate(expression, event=email_event(**data)) == key, where


@pytest.mark.parametrize("from_email", [None, 7, ["a@example.com"], "absent"])
async def test_no_customer_and_no_readable_sender_evaluates_without_error(engine: Engine, from_email: Any) -> None:
    # Such an event is rejected by the run (EmailReceived needs one of the two); the key must
    # still evaluate, or the engine could not even schedule the run that rejects it.
    for where, expression in customer_keys(engine):
        data = {"customer_id": None} | ({} if from_email == "absent" else {"from_email": from_email})
        assert cel_evaluate(expression, event=email_event(**data)) == "unknown", where


async def wait_expression(engine: Engine) -> tuple[str, str]:
    """The ``if`` a real refund run reports, and the request id it was built for."""
    run = await engine.email(CHARGED_TWICE, resolver=engine.reviewer(approved=True))
    assert run.status == "completed", run.error
    wait, matched = run.waits[0]
    assert wait.if_exp is not None and matched is not None
    return wait.if_exp, matched["data"]["request_id"]


def decision(request_id: Any) -> dict[str, Any]:
    return {"name": inngest_app.APPROVAL_DECIDED, "id": "d", "data": {"request_id": request_id, "approved": True}}


async def test_the_wait_matches_its_own_request_and_no_other(engine: Engine) -> None:
    expression, request_id = await wait_expression(engine)
    trigger = email_event(**CHARGED_TWICE)
    assert cel_match(expression, candidate=decision(request_id), trigger=trigger)
    for other in [request_id + "x", request_id.upper(), "", None, 7, [request_id]]:
        assert not cel_match(expression, candidate=decision(other), trigger=trigger), other
    assert not cel_match(expression, candidate={"name": "x", "data": {}}, trigger=trigger)


@pytest.mark.parametrize(
    "request_id",
    [
        'rr_"quoted"',
        "rr_\\back\\slash",
        "rr_'single'",
        'rr_\\"both',
        "rr_ünïcode",
        "rr_\n",
        "rr_😀",
    ],
)
async def test_the_wait_expression_survives_awkward_request_ids(engine: Engine, request_id: str) -> None:
    """Request ids are ``rr_<hex>`` today; the expression is built by JSON-quoting the id, and
    this checks that quoting is valid CEL for any text, so a future id scheme cannot break it."""
    expression, real_id = await wait_expression(engine)
    prefix, suffix = expression.split(json.dumps(real_id))
    built = gates.decision_match(request_id, GRACE)  # exactly how the app builds it
    assert built == prefix + json.dumps(request_id, ensure_ascii=False) + suffix
    trigger = email_event(**CHARGED_TWICE)
    assert cel_match(built, candidate=decision(request_id), trigger=trigger)
    assert not cel_match(built, candidate=decision(request_id + "x"), trigger=trigger)


@pytest.mark.parametrize("customer_id", ['c-"quoted"', "c\\back\\slash", "c-'single'", "c-ünïcode", "c-😀"])
async def test_a_decision_naming_only_an_awkward_customer_reaches_that_customers_wait(customer_id: str) -> None:
    """The course's decision names the customer, not the request; the match quotes that id too."""
    built = gates.decision_match("rr_1", customer_id)
    trigger = email_event(customer_id=customer_id)
    course = {"name": inngest_app.APPROVAL_DECIDED, "id": "d", "data": {"customer_id": customer_id, "approved": True}}
    assert cel_match(built, candidate=course, trigger=trigger)
    other = {**course, "data": {"customer_id": customer_id + "x", "approved": True}}
    assert not cel_match(built, candidate=other, trigger=trigger)
