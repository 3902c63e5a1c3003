"""Every real email is accepted (issue 23): the webhook refuses only what it cannot answer.

A corpus of realistic Postmark payloads (tests/postmark_corpus/, written for this project from
Postmark's published shapes) each produce the event asserted here, and generated payloads built
from the provider's types (webhook_support.py) with fields dropped, nulled and re-shaped never
get a 5xx, and never a 403 while they name a sender and carry something to read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inngest_driver import timeout_resolver
from tests_support import ADA, ALAN, EMAIL_FN, GRACE, KATHERINE, LINUS, Engine
from webhook_support import (
    SENDER,
    answerable,
    documented_example,
    doors,  # noqa: F401  (the fixture)
    inbound_webhook,
    post,
    post_raw,
    readable_fields,
    rows,
    sender_fields,
)

from support_worker.core import events

CORPUS = Path(__file__).parent / "postmark_corpus"
DOCUMENTED = json.dumps(documented_example()).encode()  # cut anywhere, it is no longer JSON

# What each corpus email must become: the event's fields (a subset), and what is stored.
EXPECTED: dict[str, dict[str, Any]] = {
    "reply_gmail": {
        "event": {"from_email": SENDER, "customer_id": GRACE, "subject": "Re: Your refund for order 1003",
                  "excerpt": "Thanks, but I still see two charges.", "thread_key": "<support-0001@shop.example>",
                  "attachment_count": 0},
        "text": "Thanks, but I still see two charges.",
    },
    "calendar_invite": {
        "event": {"from_email": "ada@example.com", "customer_id": ADA, "tier": "enterprise", "attachment_count": 1,
                  "attachments": [{"position": 0, "name": "invite.ics", "size_bytes": 269,
                                   "content_type": "text/calendar; charset=UTF-8; method=REQUEST"}]},
        "text_starts": "You have been invited to the following event.",
    },
    "marketing_html_only": {
        "event": {"from_email": "news@deals.example.org", "subject": "🔥 This week only: 40% off keyboards"},
        "text_starts": "# This week only",
        "from_html": True,
    },
    "mailer_daemon_bounce": {
        "event": {"from_email": "MAILER-DAEMON@mx.example.net", "subject": "Undelivered Mail Returned to Sender",
                  "attachment_count": 1},
        "text_starts": "This is the mail system at host mx.example.net.",
    },
    "non_english_subject": {
        "event": {"from_email": SENDER, "customer_id": GRACE, "subject": "注文番号1003の二重請求について",
                  "excerpt": "注文番号1003で二重に請求されました。返金をお願いします。"},
        "date": "2026-11-24T08:30:00+09:00",
    },
    "plus_addressed": {
        "event": {"from_email": SENDER, "customer_id": GRACE, "thread_key": "mailbox:order1004"},
    },
    "many_recipients": {
        "event": {"from_email": "alan@example.com", "customer_id": ALAN},
        "recipients": (61, 40),
    },
    "forward_outlook": {
        "event": {"from_email": "katherine@example.com", "customer_id": KATHERINE, "subject": "Fwd: Your receipt",
                  "attachments": [{"position": 0, "name": "receipt.pdf", "content_type": "application/pdf",
                                   "size_bytes": 19}]},
        "date": "2026-11-27T16:20:00+01:00",
        "repaired": "Headers: kept 1 entries of an unknown shape, unread",
    },
    "attachments_only": {
        "event": {"from_email": "linus@example.com", "customer_id": LINUS, "subject": None,
                  "excerpt": "(no text: see the attachments)", "attachment_count": 1},
    },
    "sparse_old_shape": {
        "event": {"from_email": "ada@example.com", "customer_id": ADA, "subject": "Punch cards",
                  "excerpt": "My punch card refills never came."},
        "date": None,
        "raw_date": "sometime on Saturday",
    },
}  # fmt: skip


def test_every_corpus_email_has_an_expectation() -> None:
    assert sorted(p.stem for p in CORPUS.glob("*.json")) == sorted(EXPECTED)


async def test_each_corpus_email_is_accepted_as_the_event_it_should_be(doors: Engine) -> None:  # noqa: F811
    for path in sorted(CORPUS.glob("*.json")):
        expected = EXPECTED[path.stem]
        res = await post_raw(doors, path.read_bytes())
        assert res.status_code == 200 and res.json()["status"] == "accepted", (path.stem, res.text)
        event = doors.stub.events[-1]
        assert event.data | expected["event"] == event.data, path.stem
        events.EmailReceived.model_validate(event.data)  # what the email function validates with
        stored = await doors.pool.fetchrow("SELECT * FROM messages WHERE id = $1", event.data["message_id"])
        assert "text" not in expected or stored["text_body"] == expected["text"], path.stem
        assert stored["text_body"].startswith(expected.get("text_starts", "")), (path.stem, stored["text_body"])
        assert stored["text_from_html"] is expected.get("from_html", False), path.stem
        payload = stored["payload"]
        if "date" in expected:
            assert payload["DateParsed"] == expected["date"], path.stem
        assert payload["Date"] == expected.get("raw_date", json.loads(path.read_bytes()).get("Date")), path.stem
        if "recipients" in expected:
            assert (len(payload["ToFull"]), len(payload["CcFull"])) == expected["recipients"]
        if "repaired" in expected:
            [repaired] = [r for r in await rows(doors.pool, "webhook_repaired") if r["message_id"] == stored["id"]]
            assert expected["repaired"] in repaired["repairs"]
    assert await rows(doors.pool, "webhook_refused") == []


async def test_a_payload_without_a_message_id_is_keyed_by_its_body_and_redelivered_once(doors: Engine) -> None:  # noqa: F811
    body = (CORPUS / "sparse_old_shape.json").read_bytes()
    first, again = await post_raw(doors, body), await post_raw(doors, body)
    assert first.json()["message_id"].startswith("sha256:") and first.json()["status"] == "accepted"
    assert again.json() == first.json() | {"status": "already accepted"}
    assert await doors.pool.fetchval("SELECT count(*) FROM messages") == 1


async def test_a_reply_without_from_full_and_with_mixed_headers_is_answered(doors: Engine) -> None:  # noqa: F811
    # Issue 23's reproduction: this payload used to get "403 not a Postmark inbound message".
    assert (await post_raw(doors, (CORPUS / "reply_gmail.json").read_bytes())).status_code == 200
    run = await doors.driver.run(EMAIL_FN, doors.stub.events[0].as_event(), resolver=timeout_resolver)
    assert run.status == "completed", run.error
    [received] = await rows(doors.pool, "message_received")
    assert received["thread_key"] == "<support-0001@shop.example>"


PROPERTY = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


@PROPERTY
@given(base=inbound_webhook, who=sender_fields, what=readable_fields)
async def test_a_payload_that_names_a_sender_and_has_something_to_read_is_accepted(
    doors: Engine,  # noqa: F811
    base: dict[str, Any],
    who: dict[str, Any],
    what: dict[str, Any],
) -> None:
    res = await post(doors, answerable(base, who, what))
    assert res.status_code == 200, res.text
    assert res.json()["status"] in ("accepted", "already accepted")
    event = doors.stub.events[-1]
    assert event.data["message_id"] == res.json()["message_id"]
    events.EmailReceived.model_validate(event.data)  # the email function takes what the door sent


SEEN: set[bytes] = set()


@PROPERTY
@given(payload=inbound_webhook)
async def test_any_payload_is_accepted_or_refused_with_a_row_never_a_server_error(
    doors: Engine,  # noqa: F811
    payload: dict[str, Any],
) -> None:
    body = json.dumps(payload).encode()
    before = len(await rows(doors.pool, "webhook_refused"))
    res = await post_raw(doors, body)
    assert res.status_code in (200, 403), res.text
    if res.status_code == 403 and body not in SEEN:
        [*_, refused] = await rows(doors.pool, "webhook_refused")
        assert len(await rows(doors.pool, "webhook_refused")) == before + 1
        assert refused["why"] == res.json()["error"]
    SEEN.add(body)


@PROPERTY
@given(body=st.one_of(st.binary(max_size=300), st.integers(0, 2000).map(lambda n: DOCUMENTED[:n])))
async def test_any_bytes_at_all_get_200_or_403_never_a_server_error(
    doors: Engine,  # noqa: F811
    body: bytes,
) -> None:
    res = await post_raw(doors, body)
    assert res.status_code in (200, 403), res.text
