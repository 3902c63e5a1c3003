"""The doors: the email webhook, the review desk over HTTP, and the command line."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import itsdangerous
import pytest
from inngest_driver import Arrival, pool_resolver
from tests_support import EMAIL_FN, Engine, free_port, open_request, serve

import db
from support_worker.cli import main as cli
from support_worker.cli import sending as cli_sending
from support_worker.core.settings import Settings
from support_worker.doors import desk
from support_worker.store.sample_data import GRACE

AUTH = ("postmark", "hook-secret")
ALICE = ("alice", "alice-pw")


def postmark(**overrides: Any) -> dict[str, Any]:
    message = {
        "From": "Grace Hopper <grace@example.com>",
        "FromFull": {"Email": "grace@example.com", "Name": "Grace Hopper", "MailboxHash": ""},
        "To": "support@shop.example",
        "Subject": "Double charge",
        "TextBody": "I was charged twice for order 1003",
        "StrippedTextReply": "",
        "MessageID": "a8c1040e-2f6e-4c1c-9d5a-5c1f0e2c3b4a",
        "Date": "Mon, 23 Nov 2026 09:12:00 +0000",
    }
    return message | overrides


@pytest.fixture
async def doors(settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool) -> AsyncIterator[Engine]:
    opened = settings.model_copy(
        update={"webhook_password": AUTH[1], "review_desk_users": f"{ALICE[0]}:{ALICE[1]},bob:bob-pw"}
    )
    async with serve(opened, monkeypatch, pool) as engine:
        yield engine


def http(engine: Engine) -> httpx.AsyncClient:
    return engine.driver.http


# --------------------------------------------------------------------------- webhook


async def test_a_postmark_email_becomes_one_event_keyed_by_its_message_id(doors: Engine) -> None:
    res = await http(doors).post("/webhooks/email", json=postmark(), auth=AUTH)
    assert res.status_code == 200
    assert res.json() == {
        "status": "accepted",
        "event_id": "postmark-a8c1040e-2f6e-4c1c-9d5a-5c1f0e2c3b4a",
        "message_id": "a8c1040e-2f6e-4c1c-9d5a-5c1f0e2c3b4a",
        "customer_id": GRACE,
    }
    again = await http(doors).post("/webhooks/email", json=postmark(), auth=AUTH)  # the provider retries
    assert again.status_code == 200 and again.json()["status"] == "already accepted"
    first, second = doors.stub.events
    assert first.name == "customer/email.received" and first.idempotency_id == second.idempotency_id
    assert second.duplicate  # the same sender id: no function without debounce starts for it again
    text = "I was charged twice for order 1003"
    assert first.data == {  # a reference to the stored message, never the body
        "from_email": "grace@example.com",
        "subject": "Double charge",
        "message_id": postmark()["MessageID"],
        "digest": hashlib.sha256(text.encode()).hexdigest(),
        "excerpt": text,
        "text_chars": len(text),
        "thread_key": "postmark:a8c1040e-2f6e-4c1c-9d5a-5c1f0e2c3b4a",
        "attachments": [],
        "attachment_count": 0,
        "received_at": "2026-11-23T09:12:00Z",  # ISO 8601, as 003 D4 has it
        "customer_id": GRACE,
        "tier": "pro",
    }
    run = await doors.driver.run(EMAIL_FN, first.as_event(), resolver=pool_resolver([]))
    assert run.status == "completed"
    assert await db.list_audit(doors.pool, action=db.AuditAction.REFUND_REQUESTED)


async def test_a_redelivered_webhook_joins_the_burst_or_runs_again_and_every_email_is_answered_once(
    doors: Engine,
) -> None:
    """Inngest does not drop a reused event id for the debounced email function (it debounces
    before the run's idempotency check, pkg/execution/executor/executor.go): a redelivery inside
    the burst extends it, one after the burst fired starts another run. The recorder, without
    debounce, runs once per id (pkg/execution/runner/runner.go). One email, one reply."""
    for _ in range(3):  # Postmark delivers, retries within the minute, and again ten minutes on
        assert (await http(doors).post("/webhooks/email", json=postmark(), auth=AUTH)).status_code == 200
    t0 = 1_790_000_000_000
    arrivals = [
        Arrival(t0 + ms, e.as_event() | {"ts": t0 + ms})
        for e, ms in zip(doors.stub.events, (0, 20_000, 600_000), strict=True)
    ]
    runs = await doors.driver.deliver(arrivals, resolver=pool_resolver([]))
    recorded = [r for r in runs if r.fn_id.endswith("record-customer-email")]
    emailed = [r for r in runs if r.fn_id.endswith(EMAIL_FN)]
    assert len(recorded) == 1
    assert [(r.started_ms, r.output["status"]) for r in emailed] == [
        (t0 + 81_050, "drafted"),
        (t0 + 661_050, "duplicate"),
    ]
    assert [a.action.value for a in await db.list_audit(doors.pool)].count("email_drafted") == 1
    assert len(await db.list_audit(doors.pool, action=db.AuditAction.MESSAGE_RECEIVED)) == 1


async def test_the_stripped_reply_is_preferred_over_the_quoted_thread(doors: Engine) -> None:
    message = postmark(TextBody="Thanks!\n\n> On Monday you wrote: ...", StrippedTextReply="Thanks!")
    assert (await http(doors).post("/webhooks/email", json=message, auth=AUTH)).status_code == 200
    assert doors.stub.events[0].data["excerpt"] == "Thanks!"
    assert await doors.pool.fetchval("SELECT text_body FROM messages") == "Thanks!"


async def test_an_unknown_sender_is_accepted_and_rejected_by_the_run_with_an_audit_row(doors: Engine) -> None:
    message = postmark(FromFull={"Email": "stranger@example.org", "Name": "S"}, MessageID="m-2")
    res = await http(doors).post("/webhooks/email", json=message, auth=AUTH)
    assert res.status_code == 200 and res.json()["customer_id"] is None
    run = await doors.driver.run(EMAIL_FN, doors.stub.events[0].as_event())
    assert run.status == "failed"
    rejected = await db.list_audit(doors.pool)
    assert [(e.action.value, e.detail["why"]) for e in rejected] == [
        ("event_rejected", "unknown customer: stranger@example.org")
    ]


@pytest.mark.parametrize(
    ("auth", "status"),
    [(None, 401), (("postmark", "wrong"), 401), (("someone", AUTH[1]), 401)],
)
async def test_missing_or_wrong_webhook_credentials_get_401_and_send_nothing(
    doors: Engine, auth: tuple[str, str] | None, status: int
) -> None:
    res = await http(doors).post("/webhooks/email", json=postmark(), auth=auth)
    assert res.status_code == status and "credentials" in res.json()["error"]
    assert doors.stub.events == [] and await db.list_audit(doors.pool) == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not json", "body is not valid JSON"),
        (b"[1, 2]", "body must be a JSON object"),
        (json.dumps(postmark(TextBody="  ", StrippedTextReply="")).encode(), "the email has nothing to read"),
        (json.dumps(postmark(From="nobody", FromFull=None)).encode(), "no sender address anywhere"),
    ],
)
async def test_malformed_webhook_bodies_get_403_saying_what_is_wrong(
    doors: Engine, content: bytes, message: str
) -> None:
    res = await http(doors).post(
        "/webhooks/email", content=content, auth=AUTH, headers={"content-type": "application/json"}
    )
    # 403: Postmark retries every other answer, and this one will never become acceptable.
    assert res.status_code == 403 and message in res.json()["error"]
    assert doors.stub.events == []
    [refused] = await db.list_audit(doors.pool, action=db.AuditAction.WEBHOOK_REFUSED)
    assert message in refused.detail["why"]


async def test_an_oversized_webhook_body_gets_403_and_a_reply(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool
) -> None:
    capped = settings.model_copy(update={"webhook_password": AUTH[1], "webhook_max_bytes": 1_000_000})
    async with serve(capped, monkeypatch, pool) as engine:
        res = await engine.driver.http.post("/webhooks/email", json=postmark(TextBody="x" * 1_100_000), auth=AUTH)
    assert res.status_code == 403 and "larger than 1000000 bytes" in res.json()["error"]
    assert engine.stub.events == []
    [reply] = await db.list_audit(pool, action=db.AuditAction.REPLY_SENT)
    assert reply.detail["to"] == "grace@example.com" and "smaller attachments" in reply.detail["reply"]


async def test_without_a_configured_secret_the_webhook_is_closed(engine: Engine) -> None:
    res = await engine.driver.http.post("/webhooks/email", json=postmark(), auth=AUTH)
    assert res.status_code == 503 and "WEBHOOK_PASSWORD" in res.json()["error"]
    assert engine.stub.events == []


# --------------------------------------------------------------------------- desk over HTTP


async def pending_request(pool: asyncpg.Pool, order_id: int = 1003, cents: int = 49_900) -> db.RefundRequest:
    return await open_request(pool, order_id=order_id, cents=cents, message="I was charged twice <b>please</b> help")


def csrf_for(page: str, request_id: str) -> str:
    match = re.search(rf'id="{request_id}".*?name="csrf" value="([^"]+)"', page, re.S)
    assert match, page
    return match.group(1)


async def test_the_desk_is_closed_without_configured_reviewers(engine: Engine) -> None:
    res = await engine.driver.http.get("/reviews", auth=ALICE)
    assert res.status_code == 503 and "REVIEW_DESK_USERS" in res.text


async def test_the_desk_needs_a_sign_in(doors: Engine) -> None:
    assert (await http(doors).get("/reviews")).status_code == 401
    assert (await http(doors).get("/reviews", auth=("alice", "nope"))).status_code == 401


async def test_the_desk_lists_what_a_reviewer_needs_and_escapes_customer_text(doors: Engine) -> None:
    request = await pending_request(doors.pool)
    page = (await http(doors).get("/reviews", auth=ALICE)).text
    for shown in (
        "$499.00 on order 1003",
        "Compiler license",
        "Grace Hopper",
        "grace@example.com",
        "Charged twice for 1003.",
        "&lt;b&gt;please&lt;/b&gt;",
        request.id,
        "59m left",
        "Signed in as <strong>alice",
    ):
        assert shown in page


async def test_approving_on_the_desk_records_the_reviewer_and_announces_the_decision(doors: Engine) -> None:
    request = await pending_request(doors.pool)
    page = (await http(doors).get("/reviews", auth=ALICE)).text
    form = {"decision": "approve", "note": "looks right", "csrf": csrf_for(page, request.id)}
    res = await http(doors).post(f"/reviews/{request.id}", data=form, auth=ALICE, follow_redirects=True)
    assert f"Approved refund {request.id} for order 1003." in res.text
    stored = await db.get_refund_request(doors.pool, request_id=request.id)
    assert stored is not None and (stored.status, stored.reviewer, stored.note) == ("approved", "alice", "looks right")
    [announced] = doors.stub.events
    assert announced.name == "refund/approval.decided"
    assert announced.data | {"decision_id": None} == {
        "request_id": request.id,
        "customer_id": None,  # the desk names the request: the recommended key
        "approved": True,
        "reviewer": "alice",
        "note": "looks right",
        "decision_id": None,
        "amount_cents": None,
        "reply": None,
        "withdrawn": False,
    }
    assert announced.idempotency_id == announced.data["decision_id"] == stored.decision_id
    # The recorder function sees the same decision: nothing more is written.
    recorded = await doors.driver.run("record-refund-decision", announced.as_event())
    assert recorded.output == {"applied": False, "reason": "same_decision"}

    # Another reviewer cannot replay alice's form: its token is bound to her.
    bob = ("bob", "bob-pw")
    replayed = {"decision": "reject", "note": "", "csrf": form["csrf"]}
    res = await http(doors).post(f"/reviews/{request.id}", data=replayed, auth=bob, follow_redirects=True)
    assert res.status_code == 403
    bob_page = (await http(doors).get("/reviews", auth=bob)).text
    assert request.id not in bob_page  # decided requests leave the desk


async def test_a_stale_second_click_and_an_expired_request_are_said_on_the_page(doors: Engine) -> None:
    request = await pending_request(doors.pool)
    page = (await http(doors).get("/reviews", auth=ALICE)).text
    token = csrf_for(page, request.id)
    for _ in range(2):
        res = await http(doors).post(
            f"/reviews/{request.id}", data={"decision": "reject", "csrf": token}, auth=ALICE, follow_redirects=True
        )
    assert "This request was already decided: rejected by alice. Nothing was changed." in res.text
    assert len(doors.stub.events) == 1

    later = await pending_request(doors.pool, order_id=1004, cents=1_999)
    form = {"decision": "approve", "csrf": csrf_for((await http(doors).get("/reviews", auth=ALICE)).text, later.id)}
    # Time passes while the page is open: the request expires before the click.
    await doors.pool.execute(
        "UPDATE refund_requests SET expires_at = now() - interval '1 second' WHERE id = $1", later.id
    )
    res = await http(doors).post(f"/reviews/{later.id}", data=form, auth=ALICE, follow_redirects=True)
    assert "This request expired before a decision; nothing was changed." in res.text
    ignored = await db.list_audit(doors.pool, action=db.AuditAction.DECISION_IGNORED)
    assert [e.detail["why"] for e in ignored] == ["already_decided", "expired"]


async def test_a_forged_form_without_the_desk_token_is_refused(doors: Engine) -> None:
    request = await pending_request(doors.pool)
    res = await http(doors).post(f"/reviews/{request.id}", data={"decision": "approve", "csrf": "0" * 64}, auth=ALICE)
    assert res.status_code == 403
    stored = await db.get_refund_request(doors.pool, request_id=request.id)
    assert stored is not None and stored.status == "pending"


async def test_a_desk_form_that_outlived_every_wait_or_was_signed_for_someone_else_is_refused(
    doors: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = await pending_request(doors.pool)
    too_old = desk.form_max_age_seconds(settings) + 60
    with monkeypatch.context() as past:  # signed that long ago, with the desk's own secret
        past.setattr(itsdangerous.TimestampSigner, "get_timestamp", lambda self: int(time.time()) - too_old)
        stale = desk.form_token(settings, reviewer=ALICE[0], request_id=request.id)
    refused = [
        stale,
        desk.form_token(settings, reviewer="bob", request_id=request.id),
        desk.form_token(settings, reviewer=ALICE[0], request_id="rr_another"),
    ]
    for token in refused:
        res = await http(doors).post(f"/reviews/{request.id}", data={"decision": "approve", "csrf": token}, auth=ALICE)
        assert res.status_code == 403 and "stale" in res.text
    stored = await db.get_refund_request(doors.pool, request_id=request.id)
    assert stored is not None and stored.status == "pending"
    fresh = desk.form_token(settings, reviewer=ALICE[0], request_id=request.id)
    res = await http(doors).post(f"/reviews/{request.id}", data={"decision": "approve", "csrf": fresh}, auth=ALICE)
    assert res.status_code == 303
    stored = await db.get_refund_request(doors.pool, request_id=request.id)
    assert stored is not None and stored.status == "approved"


# --------------------------------------------------------------------------- command line


def args(*argv: str) -> argparse.Namespace:
    return cli.parser().parse_args(argv)


async def test_cli_send_email_sends_an_event_for_the_customer(doors: Engine, settings: Settings) -> None:
    assert await cli.run_async(args("send-email", "--customer", GRACE, "Where is order 1004?"), settings) == 0
    [event] = doors.stub.events
    assert event.name == "customer/email.received"
    assert event.data == {"body": "Where is order 1004?", "subject": None, "customer_id": GRACE, "tier": "pro"}
    assert await cli.run_async(args("send-email", "--from", "nobody@example.org", "hi"), settings) == 1


async def test_cli_pending_approve_reject_and_audit(
    doors: Engine, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    first = await pending_request(doors.pool)
    second = await pending_request(doors.pool, order_id=1004, cents=1_999)
    assert await cli.run_async(args("pending"), settings) == 0
    listing = capsys.readouterr().out
    assert first.id in listing and second.id in listing and "$499.00" in listing

    assert await cli.run_async(args("approve", first.id, "--reviewer", "carol"), settings) == 0
    assert await cli.run_async(args("reject", second.id, "--reviewer", "carol", "--note", "dup"), settings) == 0
    assert await cli.run_async(args("approve", second.id, "--reviewer", "dave"), settings) == 1
    out = capsys.readouterr().out
    assert f"Approved refund {first.id}" in out and f"Rejected refund {second.id}" in out
    assert "already decided: rejected by carol" in out
    assert [e.data["approved"] for e in doors.stub.events] == [True, False]

    assert await cli.run_async(args("audit", "--action", "decision_ignored"), settings) == 0
    assert "decision_ignored" in capsys.readouterr().out


def test_desk_amounts_parse_as_dollars_and_refuse_anything_else() -> None:
    from support_worker.doors.desk import parse_dollars

    assert [parse_dollars(t) for t in ("12.34", "$1,299", " 5 ", "0.5", "")] == [1234, 129_900, 500, 50, None]
    for bad in ("12.345", "-3", "ten", "1e3"):
        with pytest.raises(ValueError):
            parse_dollars(bad)


async def test_a_malformed_amount_on_the_desk_changes_nothing_and_says_how_to_write_it(doors: Engine) -> None:
    request = await pending_request(doors.pool)
    page = (await http(doors).get("/reviews", auth=ALICE)).text
    form = {"decision": "approve", "amount": "12,3.4", "csrf": csrf_for(page, request.id)}
    res = await http(doors).post(f"/reviews/{request.id}", data=form, auth=ALICE, follow_redirects=True)
    assert "is not an amount; write it like 12.34. Nothing was changed." in res.text
    stored = await db.get_refund_request(doors.pool, request_id=request.id)
    assert stored is not None and stored.status == "pending" and doors.stub.events == []


# --------------------------------------------------------------------------- auth and headers

NON_ASCII = [("alice", "pässwörd"), ("älice", ALICE[1]), ("alice", ALICE[1] + "é")]


@pytest.mark.parametrize("auth", NON_ASCII)
async def test_non_ascii_desk_credentials_get_401_not_an_error(doors: Engine, auth: tuple[str, str]) -> None:
    res = await http(doors).get("/reviews", auth=auth)
    assert res.status_code == 401 and res.headers["www-authenticate"].startswith("Basic")


@pytest.mark.parametrize("auth", [("postmark", "hoök-secret"), ("pöstmark", AUTH[1])])
async def test_non_ascii_webhook_credentials_get_401_and_send_nothing(doors: Engine, auth: tuple[str, str]) -> None:
    res = await http(doors).post("/webhooks/email", json=postmark(), auth=auth)
    assert res.status_code == 401 and "credentials" in res.json()["error"]
    assert doors.stub.events == []


async def test_a_non_ascii_form_token_gets_403_and_changes_nothing(doors: Engine) -> None:
    request = await pending_request(doors.pool)
    res = await http(doors).post(f"/reviews/{request.id}", data={"decision": "approve", "csrf": "tökén"}, auth=ALICE)
    assert res.status_code == 403 and "Reload the desk" in res.text
    stored = await db.get_refund_request(doors.pool, request_id=request.id)
    assert stored is not None and stored.status == "pending" and doors.stub.events == []


async def test_a_form_rendered_by_one_process_is_accepted_by_another(settings: Settings, pool: asyncpg.Pool) -> None:
    import fastapi

    from support_worker.doors import desk

    shared = settings.model_copy(update={"review_desk_users": "alice:alice-pw", "desk_form_secret": "shared-secret-1"})
    announced: list[dict[str, Any]] = []

    async def announce(data: dict[str, Any]) -> None:
        announced.append(data)

    def process() -> httpx.AsyncClient:
        app = fastapi.FastAPI()
        app.include_router(desk.build_router(shared, get_pool=lambda: pool, announce=announce))
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://desk")

    request = await pending_request(pool)
    async with process() as first, process() as second:
        token = csrf_for((await first.get("/reviews", auth=ALICE)).text, request.id)
        res = await second.post(f"/reviews/{request.id}", data={"decision": "approve", "csrf": token}, auth=ALICE)
    assert res.status_code == 303 and [a["request_id"] for a in announced] == [request.id]


DESK_HEADERS = {
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
}


def assert_desk_headers(res: httpx.Response) -> None:
    for name, value in DESK_HEADERS.items():
        assert res.headers.get(name) == value, (res.status_code, name, res.headers)
    policy = res.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy


async def test_every_desk_response_carries_the_security_headers(doors: Engine, engine: Engine) -> None:
    request = await pending_request(doors.pool)
    page = await http(doors).get("/reviews", auth=ALICE)
    assert page.status_code == 200 and "<script>" not in page.text and "<style>" not in page.text
    responses = [
        page,
        await http(doors).get("/reviews"),  # 401
        await http(doors).get("/reviews", auth=("alice", "pässwörd")),  # 401 from a malformed header
        await http(doors).post(f"/reviews/{request.id}", data={"decision": "approve", "csrf": "x"}, auth=ALICE),
        await http(doors).post(f"/reviews/{request.id}", data={"csrf": "x"}, auth=ALICE),  # 400: no decision
        await http(doors).post(
            f"/reviews/{request.id}", data={"decision": "reject", "csrf": csrf_for(page.text, request.id)}, auth=ALICE
        ),  # 303
        await http(engine).get("/reviews", auth=ALICE),  # 503 closed
    ]
    for script in re.findall(r'<(?:script src|link rel="stylesheet" href)="([^"]+)"', page.text):
        responses.append(await http(doors).get(script, auth=ALICE))
    assert [r.status_code for r in responses][:7] == [200, 401, 401, 403, 400, 303, 503]
    assert len(responses) == 9, "the page links one script and one stylesheet"
    for res in responses:
        assert_desk_headers(res)
    # The test client reads a stream to its end, so the run ends first: the stream stops there.
    await db.record_audit(doors.pool, action=db.AuditAction.EMAIL_DRAFTED, run_id=request.run_id, customer_id=GRACE)
    stream = await http(doors).get(f"/runs/{request.run_id}/status", auth=ALICE)
    assert stream.status_code == 200 and '"line": "reply drafted"' in stream.text
    assert_desk_headers(stream)


async def test_cli_send_email_prints_the_event_id_and_the_run_with_its_dashboard_link(
    doors: Engine, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    started: list[str] = []
    doors.stub.on_event = lambda event: started.append(doors.stub.start_run(event.id, "support-worker-handle-email"))
    command = args("send-email", "--customer", GRACE, "I was charged twice for order 1003")
    assert await cli.run_async(command, settings) == 0
    out = capsys.readouterr().out
    [event] = doors.stub.events
    [run_id] = started
    assert f"event id  {event.id}" in out
    assert f"run       {run_id}  {doors.stub.url}/run?runID={run_id}" in out
    assert doors.stub.run_lookups == [event.id]
    # Bursts are gathered by default: the sender learns when the answer comes.
    assert f"answer    about {settings.email_burst_seconds} s after the customer's last email" in out


async def test_cli_send_email_says_when_the_dev_server_started_no_run_in_time(
    doors: Engine, settings: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_sending, "RUN_WAIT_SECONDS", 0.3)
    assert await cli.run_async(args("send-email", "--customer", GRACE, "Where is order 1004?"), settings) == 0
    out = capsys.readouterr().out
    [event] = doors.stub.events
    assert f"event id  {event.id}" in out
    assert f"none started within 0.3 s; is the app synced? See {doors.stub.url}/runs" in out
    assert len(doors.stub.run_lookups) >= 2  # it asked again before giving up


async def test_cli_send_email_names_the_url_where_no_dev_server_answered(
    settings: Settings, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("INNGEST_DEV", nowhere)  # set through monkeypatch, so it is restored
    for key in ("INNGEST_BASE_URL", "INNGEST_API_BASE_URL", "INNGEST_EVENT_API_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    unreachable = settings.model_copy(update={"inngest_dev": nowhere, "inngest_event_key": None})
    assert await cli.run_async(args("send-email", "--customer", GRACE, "Where is order 1004?"), unreachable) == 1
    err = capsys.readouterr().err
    assert "Not sent: event cli-" in err
    assert f"No dev server answered at {nowhere}" in err
