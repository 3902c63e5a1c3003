"""The doors meet real providers (issue 14): Postmark's inbound contract with its published
payload shape, attachments and large mail claim-checked in Postgres, HTML-only mail, threads;
Slack's incoming-webhook contract (429 Retry-After, 5xx, misconfiguration) against a stub."""

from __future__ import annotations

import base64
import http.server
import json
import threading
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import inngest
import pytest
from inngest_driver import Run, timeout_resolver
from tests_support import EMAIL_FN, GRACE, Engine, free_port, open_request, serve

import db
from support_worker.agent.offline_model import OfflineSupportModel
from support_worker.cli import database as cli_database
from support_worker.core import events
from support_worker.core.settings import Settings
from support_worker.store import messages
from support_worker.workflows import notify

AUTH = ("postmark", "hook-secret")
ALICE = ("alice", "alice-pw")
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 56


def postmark_example(**overrides: Any) -> dict[str, Any]:
    """Postmark's documented inbound webhook JSON, every field present
    (https://postmarkapp.com/developer/webhooks/inbound-webhook), from one of our customers."""
    message: dict[str, Any] = {
        "FromName": "Grace Hopper",
        "MessageStream": "inbound",
        "From": "grace@example.com",
        "FromFull": {"Email": "grace@example.com", "Name": "Grace Hopper", "MailboxHash": ""},
        "To": '"Support" <support+order1003@shop.example>',
        "ToFull": [{"Email": "support+order1003@shop.example", "Name": "Support", "MailboxHash": "order1003"}],
        "Cc": '"Ada" <ada@example.com>',
        "CcFull": [{"Email": "ada@example.com", "Name": "Ada", "MailboxHash": ""}],
        "Bcc": '"Audit" <audit@shop.example>',
        "BccFull": [{"Email": "audit@shop.example", "Name": "Audit", "MailboxHash": ""}],
        "OriginalRecipient": "support+order1003@shop.example",
        "Subject": "Double charge",
        "MessageID": "73e6d360-66eb-11e1-8e72-a8904824019b",
        "ReplyTo": "grace@example.com",
        "MailboxHash": "order1003",
        "Date": "Fri, 1 Aug 2026 16:45:32 -04:00",
        "TextBody": "I was charged twice for order 1003",
        "HtmlBody": "<html><body><p>I was charged twice for order 1003</p></body></html>",
        "StrippedTextReply": "",
        "Tag": "TestTag",
        "Headers": [
            {"Name": "X-Header-Test", "Value": ""},
            {"Name": "X-Spam-Status", "Value": "No"},
            {"Name": "X-Spam-Score", "Value": "-0.1"},
            {"Name": "X-Spam-Tests", "Value": "DKIM_SIGNED,DKIM_VALID,DKIM_VALID_AU,SPF_PASS"},
            {"Name": "Message-ID", "Value": "<CAKH1=first@mail.example.com>"},
        ],
        "Attachments": [
            {
                "Name": "screenshot.png",
                "Content": base64.b64encode(PNG).decode(),
                "ContentType": "image/png",
                "ContentLength": len(PNG),
                "ContentID": "ii_l1a2b3c4",
            }
        ],
        "RawEmail": "From: grace@example.com\r\nSubject: Double charge\r\n\r\nI was charged twice for order 1003",
    }
    return message | overrides


class SeenModel(OfflineSupportModel):
    """The offline model, keeping what the agent was given to read."""

    def __init__(self) -> None:
        self.inputs: list[str] = []

    async def get_response(self, system_instructions: Any, input: Any, *args: Any, **kwargs: Any) -> Any:
        self.inputs.append(json.dumps(input, default=str))
        return await super().get_response(system_instructions, input, *args, **kwargs)


@pytest.fixture
def model() -> SeenModel:
    return SeenModel()


@pytest.fixture
async def doors(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool, model: SeenModel
) -> AsyncIterator[Engine]:
    opened = settings.model_copy(update={"webhook_password": AUTH[1], "review_desk_users": "alice:alice-pw"})
    async with serve(opened, monkeypatch, pool, model=model) as engine:
        yield engine


async def post(engine: Engine, payload: Any) -> httpx.Response:
    return await engine.driver.http.post("/webhooks/email", json=payload, auth=AUTH)


async def audit(pool: asyncpg.Pool, action: str) -> list[dict[str, Any]]:
    return [e.detail for e in await db.list_audit(pool, action=db.AuditAction(action))]


def memo_bytes(run: Run) -> int:
    return len(json.dumps(run.memo).encode())


# --------------------------------------------------------------------------- Postmark: accepted


async def test_postmarks_example_is_stored_once_and_the_event_carries_only_a_reference(
    doors: Engine, model: SeenModel
) -> None:
    res = await post(doors, postmark_example())
    assert res.status_code == 200 and res.json()["status"] == "accepted"
    again = await post(doors, postmark_example())  # Postmark redelivers
    assert again.status_code == 200 and again.json()["status"] == "already accepted"
    assert await doors.pool.fetchval("SELECT count(*) FROM messages") == 1
    first, second = doors.stub.events
    assert second.duplicate and first.idempotency_id == second.idempotency_id
    assert "body" not in first.data and "Content" not in json.dumps(first.data)
    assert first.data["message_id"] == "73e6d360-66eb-11e1-8e72-a8904824019b"
    assert first.data["attachments"] == [
        {"position": 0, "name": "screenshot.png", "content_type": "image/png", "size_bytes": len(PNG)}
    ]
    assert first.data["thread_key"] == "mailbox:order1003" and first.data["customer_id"] == GRACE
    stored = await doors.pool.fetchrow("SELECT * FROM messages")
    assert stored["raw_email"].startswith("From: grace@example.com") and stored["html_body"].startswith("<html>")
    assert stored["payload"]["CcFull"][0]["Email"] == "ada@example.com"
    assert "Content" not in stored["payload"]["Attachments"][0]
    content = await messages.attachment_content(doors.pool, message_id=first.data["message_id"], position=0)
    assert content == PNG

    run = await doors.driver.run(EMAIL_FN, first.as_event(), resolver=timeout_resolver)
    assert run.status == "completed", run.error
    assert "screenshot.png (image/png, 64 bytes)" in model.inputs[0]
    [received] = await audit(doors.pool, "message_received")
    assert received["thread_key"] == "mailbox:order1003" and received["digest"] == stored["digest"]
    assert "body" not in received


async def test_a_five_megabyte_attachment_is_stored_once_and_never_travels(doors: Engine, model: SeenModel) -> None:
    photo = b"\xff\xd8\xff" + bytes(range(256)) * (5 * 1024 * 1024 // 256)
    attachment = {
        "Name": "statement.jpg",
        "Content": base64.b64encode(photo).decode(),
        "ContentType": "image/jpeg",
        "ContentLength": len(photo),
        "ContentID": "",
    }
    res = await post(doors, postmark_example(Attachments=[attachment], MessageID="m-5mb"))
    assert res.status_code == 200, res.text
    [event] = doors.stub.events
    assert len(json.dumps(event.data)) < 2_000
    size = await doors.pool.fetchval("SELECT size_bytes FROM message_attachments WHERE message_id = 'm-5mb'")
    assert size == len(photo)
    run = await doors.driver.run(EMAIL_FN, event.as_event(), resolver=timeout_resolver)
    assert run.status == "completed", run.error
    assert "statement.jpg (image/jpeg, 5.0 MB)" in model.inputs[0]
    assert all(len(json.dumps(call.request).encode()) < 64_000 for call in run.calls)


async def test_a_megabyte_of_text_keeps_every_step_output_small(doors: Engine, model: SeenModel) -> None:
    words = "My order 1004 has not arrived and I would like to know where it is. " * 15_000
    res = await post(doors, postmark_example(TextBody=words, HtmlBody="", Attachments=[], MessageID="m-big"))
    assert res.status_code == 200
    [event] = doors.stub.events
    assert len(json.dumps(event.data)) < 2_000
    run = await doors.driver.run(EMAIL_FN, event.as_event(), resolver=timeout_resolver)
    assert run.status == "completed", run.error
    assert memo_bytes(run) < 8_192, run.memo
    assert "more characters are stored with the message" in model.inputs[0]


async def test_an_html_only_email_is_read_as_text(doors: Engine, model: SeenModel) -> None:
    html = "<html><body><h1>Help</h1><p>I was <b>charged twice</b> for order&nbsp;1003.</p></body></html>"
    res = await post(doors, postmark_example(TextBody="", HtmlBody=html, Attachments=[], MessageID="m-html"))
    assert res.status_code == 200
    stored = await doors.pool.fetchrow("SELECT text_body, text_from_html FROM messages WHERE id = 'm-html'")
    assert stored["text_from_html"] and "charged twice" in stored["text_body"] and "<b>" not in stored["text_body"]
    run = await doors.driver.run(EMAIL_FN, doors.stub.events[0].as_event(), resolver=timeout_resolver)
    assert run.status == "completed", run.error
    assert "charged twice" in model.inputs[0] and "<p>" not in model.inputs[0]


async def test_a_reply_in_a_thread_reads_the_new_words_and_joins_the_first_messages_thread(doors: Engine) -> None:
    first = postmark_example(MailboxHash="", Attachments=[], MessageID="m-first")
    assert (await post(doors, first)).status_code == 200
    reply_headers = [
        {"Name": "Message-ID", "Value": "<CAKH1=second@mail.example.com>"},
        {"Name": "In-Reply-To", "Value": "<CAKH1=first@mail.example.com>"},
        {"Name": "References", "Value": "<CAKH1=first@mail.example.com>"},
    ]
    reply = postmark_example(
        MailboxHash="",
        Attachments=[],
        MessageID="m-reply",
        Subject="Re: Double charge",
        TextBody="Any news?\n\nOn Fri, support wrote:\n> We are looking into it",
        StrippedTextReply="Any news?",
        Headers=reply_headers,
    )
    assert (await post(doors, reply)).status_code == 200
    keys = dict(await doors.pool.fetch("SELECT id, thread_key FROM messages"))
    assert keys == {"m-first": "<CAKH1=first@mail.example.com>", "m-reply": "<CAKH1=first@mail.example.com>"}
    assert await doors.pool.fetchval("SELECT text_body FROM messages WHERE id = 'm-reply'") == "Any news?"
    for event in doors.stub.events:
        run = await doors.driver.run(EMAIL_FN, event.as_event(), resolver=timeout_resolver)
        assert run.status == "completed", run.error
    threads = [d["thread_key"] for d in await audit(doors.pool, "message_received")]
    assert threads == ["<CAKH1=first@mail.example.com>"] * 2


async def test_the_courses_inline_event_still_works_and_is_claim_checked_at_intake(doors: Engine) -> None:
    run = await doors.email({"customer_id": GRACE, "subject": "Hi", "body": "Where is my order 1004?"})
    assert run.status == "completed", run.error
    stored = await doors.pool.fetchrow("SELECT id, source, text_body FROM messages")
    key = "event:evt-email-1:" + messages.digest("Where is my order 1004?")[:12]
    assert dict(stored) == {"id": key, "source": "event", "text_body": "Where is my order 1004?"}
    intake = next(v["data"] for v in run.memo.values() if isinstance(v, dict) and "customer" in v.get("data", {}))
    (answering,) = intake["answering"]
    assert "body" not in answering and answering["message"]["message_id"] == key


# --------------------------------------------------------------------------- Postmark: refused


def nested(depth: int) -> Any:
    value: Any = "deep"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("payload", "why", "replied_to"),
    [
        (b"not json", "body is not valid JSON", None),
        (b"[1, 2]", "body must be a JSON object", None),
        (b"[" * 100_000 + b"]" * 100_000, "the JSON nests deeper than 32 levels", None),
        (
            json.dumps(postmark_example(Extra=nested(40))).encode(),
            "the JSON nests deeper than 32 levels",
            "grace@example.com",
        ),
        (
            json.dumps(postmark_example(From="nobody", FromFull=None, ReplyTo="", Headers=[])).encode(),
            "no sender address",
            None,
        ),
        (
            json.dumps(postmark_example(TextBody=" ", HtmlBody="", StrippedTextReply="", Attachments=[])).encode(),
            "nothing to read",
            "grace@example.com",
        ),
        (
            json.dumps(
                postmark_example(TextBody="", HtmlBody="", Attachments=[{"Name": "a.pdf", "Content": "%%%not base64"}])
            ).encode(),
            "the attachment a.pdf is not base64, and there is no text",
            "grace@example.com",
        ),
    ],
)
async def test_a_message_that_can_never_be_accepted_gets_403_an_audit_row_and_a_reply(
    doors: Engine, payload: bytes, why: str, replied_to: str | None
) -> None:
    res = await doors.driver.http.post(
        "/webhooks/email", content=payload, auth=AUTH, headers={"content-type": "application/json"}
    )
    assert res.status_code == 403 and why in res.json()["error"]
    assert doors.stub.events == []
    [refused] = await audit(doors.pool, "webhook_refused")
    assert why in refused["why"]
    replies = await audit(doors.pool, "reply_sent")
    assert [r["to"] for r in replies] == ([replied_to] if replied_to else [])
    if replied_to:
        assert why in replies[0]["reply"]
    again = await doors.driver.http.post(
        "/webhooks/email", content=payload, auth=AUTH, headers={"content-type": "application/json"}
    )
    assert again.status_code == 403 and len(await audit(doors.pool, "webhook_refused")) == 1


async def test_mail_over_the_cap_gets_403_and_the_sender_is_told(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool
) -> None:
    small = settings.model_copy(update={"webhook_password": AUTH[1], "webhook_max_bytes": 100_000})
    async with serve(small, monkeypatch, pool) as engine:
        res = await post(engine, postmark_example(TextBody="x" * 200_000))
    assert res.status_code == 403 and "larger than 100000 bytes" in res.json()["error"]
    assert engine.stub.events == []
    assert [r["to"] for r in await audit(pool, "reply_sent")] == ["grace@example.com"]
    [refused] = await db.list_audit(pool, action=db.AuditAction.WEBHOOK_REFUSED)
    assert refused.customer_id == GRACE


async def test_when_the_event_api_is_down_postmark_is_asked_to_retry(
    doors: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def down(self: Any, events: Any, **kwargs: Any) -> Any:
        raise httpx.ConnectError("event API unreachable")

    with monkeypatch.context() as patch:
        patch.setattr(inngest.Inngest, "send", down)
        res = await post(doors, postmark_example())
    assert res.status_code == 503 and "retry" in res.json()["error"]
    assert await audit(doors.pool, "webhook_refused") == []
    retried = await post(doors, postmark_example())  # stored already; this time the event goes out
    assert retried.status_code == 200 and retried.json()["status"] == "already accepted"
    assert len(doors.stub.events) == 1


async def test_no_event_above_max_event_bytes_leaves_the_app(doors: Engine) -> None:
    many = [
        {"Name": f"scan-{i:04}-" + "n" * 200 + ".pdf", "Content": "", "ContentType": "application/pdf"}
        for i in range(3000)
    ]
    assert (await post(doors, postmark_example(Attachments=many, MessageID="m-many"))).status_code == 200
    [event] = doors.stub.events
    assert len(json.dumps(event.data).encode()) <= 262_144 and event.data["attachment_count"] == 3000
    with pytest.raises(ValueError, match="MAX_EVENT_BYTES"):
        events.check_size(Settings().max_event_bytes, "x", {"body": "y" * 300_000})


# --------------------------------------------------------------------------- Slack


class SlackStub:
    """A Slack-compatible incoming webhook answering a script of (status, headers, body)."""

    def __init__(self, *answers: tuple[int, dict[str, str], str]) -> None:
        self.answers = list(answers)
        self.requests: list[bytes] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                owner.requests.append(self.rfile.read(int(self.headers.get("content-length") or 0)))
                status, headers, body = owner.answers.pop(0) if owner.answers else (200, {}, "ok")
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/services/T0/B0/x"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def slack() -> Any:
    stubs: list[SlackStub] = []

    def make(*answers: tuple[int, dict[str, str], str]) -> SlackStub:
        stubs.append(SlackStub(*answers))
        return stubs[-1]

    yield make
    for stub in stubs:
        stub.close()


async def test_a_429_raises_retry_later_with_slacks_retry_after(
    pool: asyncpg.Pool, settings: Settings, slack: Any
) -> None:
    stub = slack((429, {"Retry-After": "7"}, "rate_limited"))
    request = await open_request(pool, order_id=1003, cents=49_900)
    tuned = settings.model_copy(update={"reviewer_webhook_url": stub.url})
    with pytest.raises(notify.RetryLater) as raised:
        await notify.notify_reviewers(pool, tuned, request_id=request.id)
    assert raised.value.seconds == 7
    assert await notify.notify_reviewers(pool, tuned, request_id=request.id) == {"sent": True, "why": "delivered"}


async def test_5xx_and_network_errors_raise_so_the_engine_retries(
    pool: asyncpg.Pool, settings: Settings, slack: Any
) -> None:
    request = await open_request(pool, order_id=1003, cents=49_900)
    stub = slack((503, {}, "unavailable"))
    with pytest.raises(httpx.HTTPStatusError):
        await notify.notify_reviewers(
            pool, settings.model_copy(update={"reviewer_webhook_url": stub.url}), request_id=request.id
        )
    nobody = settings.model_copy(update={"reviewer_webhook_url": f"http://127.0.0.1:{free_port()}/x"})
    with pytest.raises(httpx.TransportError):
        await notify.notify_reviewers(pool, nobody, request_id=request.id)
    assert await db.list_audit(pool, action=db.AuditAction.NOTIFIER_MISCONFIGURED) == []


@pytest.mark.parametrize("status", [400, 403, 404, 410])
async def test_a_misconfigured_webhook_is_audited_once_never_retried_and_shown(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool, slack: Any, status: int
) -> None:
    stub = slack(*[(status, {}, "channel_is_archived")] * 10)
    tuned = settings.model_copy(update={"reviewer_webhook_url": stub.url, "review_desk_users": "alice:alice-pw"})
    async with serve(tuned, monkeypatch, pool) as engine:
        run = await engine.email(
            {"customer_id": GRACE, "body": "I was charged twice for order 1003"},
            resolver=timeout_resolver,
            deliver_twice=True,
        )
        assert run.status == "completed", run.error  # the refund gate went on to its wait
        assert len(stub.requests) == 1  # never retried
        [row] = await db.list_audit(pool, action=db.AuditAction.NOTIFIER_MISCONFIGURED)
        assert row.detail["status"] == status
        page = (await engine.driver.http.get("/reviews", auth=ALICE)).text
        assert f"Reviewer notifications are failing: REVIEWER_WEBHOOK_URL answered {status}" in page
    assert "answered" in await cli_database.notifier_status(tuned)


async def test_a_delivery_after_the_fix_clears_the_desk_line(
    pool: asyncpg.Pool, settings: Settings, slack: Any
) -> None:
    broken = slack((404, {}, "no_service"))
    first = await open_request(pool, order_id=1003, cents=49_900)
    await notify.notify_reviewers(
        pool, settings.model_copy(update={"reviewer_webhook_url": broken.url}), request_id=first.id
    )
    assert await notify.configuration_problem(pool) is not None
    fixed = slack()
    second = await open_request(pool, order_id=1004, cents=1_000)
    await notify.notify_reviewers(
        pool, settings.model_copy(update={"reviewer_webhook_url": fixed.url}), request_id=second.id
    )
    assert await notify.configuration_problem(pool) is None


async def test_a_rate_limited_notification_retries_after_slacks_delay_in_the_run(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool, slack: Any
) -> None:
    stub = slack((429, {"Retry-After": "3"}, "rate_limited"))
    tuned = settings.model_copy(update={"reviewer_webhook_url": stub.url})
    async with serve(tuned, monkeypatch, pool) as engine:
        run = await engine.email(
            {"customer_id": GRACE, "body": "I was charged twice for order 1003"}, resolver=timeout_resolver
        )
    assert run.status == "completed", run.error
    assert any("retry-after" in {k.lower() for k in c.headers} for c in run.calls)
    assert len(stub.requests) == 2
    assert len(await db.list_audit(pool, action=db.AuditAction.REVIEWER_NOTIFIED)) == 1


async def test_rate_limited_on_every_attempt_the_refund_still_waits_on_the_desk(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool, slack: Any
) -> None:
    stub = slack(*[(429, {"Retry-After": "1"}, "rate_limited")] * 10)
    tuned = settings.model_copy(update={"reviewer_webhook_url": stub.url})
    async with serve(tuned, monkeypatch, pool) as engine:
        run = await engine.email(
            {"customer_id": GRACE, "body": "I was charged twice for order 1003"}, resolver=timeout_resolver
        )
    assert run.status == "completed", run.error
    assert len(stub.requests) == 5  # every attempt, then the last one gives up on the notice
    assert len(await db.list_refunds(pool)) == 0 and await pool.fetchval("SELECT count(*) FROM refund_requests") == 1


def test_retry_after_reads_seconds_and_dates_within_bounds() -> None:
    assert notify.retry_after_seconds("12") == 12
    assert notify.retry_after_seconds(None) == 30
    assert notify.retry_after_seconds("99999", cap=600) == 600
    assert notify.retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 1  # in the past: soon
