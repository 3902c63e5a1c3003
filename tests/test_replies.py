"""The reply is a draft (003 D3, D8): `save-draft-reply`, an `email_drafted` row with the
draft's id, and `{"status": "drafted", "draft_id": …}`. With Postmark's outbound API configured
the draft is sent once, in the customer's thread, and audited `reply_sent` with Postmark's
MessageID; Postmark's 5xx and 429 retry the step, its 4xx refusals are recorded once."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
from fake_postmark import INACTIVE_RECIPIENT, TOKEN, FakePostmark
from tests_support import GRACE, Engine, serve

import db
from support_worker.agent.offline_model import THREAD_MARKER, OfflineSupportModel
from support_worker.conversation.thread import MAX_THREAD_CHARS
from support_worker.core.settings import Settings

QUESTION = {"customer_id": GRACE, "subject": "Shipping", "body": "Do you ship to Canada?"}
AUTH = ("postmark", "webhook-pw")


@pytest.fixture
def postmark() -> Iterator[FakePostmark]:
    with FakePostmark() as server:
        yield server


@pytest.fixture
async def sending(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool, postmark: FakePostmark
) -> AsyncIterator[Engine]:
    configured = settings.model_copy(
        update={
            "postmark_server_token": TOKEN,
            "reply_from_email": "support@shop.example",
            "postmark_api_url": postmark.url,
            "webhook_password": AUTH[1],
        }
    )
    async with serve(configured, monkeypatch, pool) as engine:
        yield engine


async def rows(pool: asyncpg.Pool, action: db.AuditAction) -> list[db.AuditEntry]:
    return await db.list_audit(pool, action=action)


async def test_the_reply_is_saved_as_a_draft_and_the_run_says_drafted(engine: Engine) -> None:
    run = await engine.email(QUESTION)
    assert run.status == "completed", run.error
    assert run.output["status"] == "drafted" and run.output["draft_id"].startswith("dr_")
    assert "save-draft-reply" in run.trail and "send-reply" not in run.trail
    [drafted] = await rows(engine.pool, db.AuditAction.EMAIL_DRAFTED)
    assert drafted.detail["draft_id"] == run.output["draft_id"] and drafted.run_id == run.run_id
    draft = await engine.pool.fetchrow("SELECT * FROM drafts")
    assert draft["status"] == "drafted" and draft["to_email"] == "grace@example.com"
    assert draft["subject"] == "Re: Shipping" and draft["body"] == run.output["reply"]
    assert await rows(engine.pool, db.AuditAction.REPLY_SENT) == []  # nothing was sent


async def test_a_run_delivered_twice_saves_one_draft(engine: Engine) -> None:
    run = await engine.email(QUESTION, deliver_twice=True)
    assert run.status == "completed", run.error
    assert await engine.pool.fetchval("SELECT count(*) FROM drafts") == 1
    assert len(await rows(engine.pool, db.AuditAction.EMAIL_DRAFTED)) == 1


async def webhook_email(engine: Engine, **overrides: Any) -> dict[str, Any]:
    """An email through the webhook, with the headers a reply threads on; its event."""
    message = {
        "From": "Grace Hopper <grace@example.com>",
        "FromFull": {"Email": "grace@example.com", "Name": "Grace Hopper", "MailboxHash": ""},
        "To": "support@shop.example",
        "Subject": "Shipping",
        "TextBody": "Do you ship to Canada?",
        "StrippedTextReply": "",
        "MessageID": "a8c1040e-2f6e-4c1c-9d5a-5c1f0e2c3b4a",
        "Date": "Mon, 23 Nov 2026 09:12:00 +0000",
        "Headers": [
            {"Name": "Message-ID", "Value": "<CAF=grace-2@mail.example.com>"},
            {"Name": "References", "Value": "<CAF=grace-1@mail.example.com>"},
        ],
    } | overrides
    res = await engine.driver.http.post("/webhooks/email", json=message, auth=AUTH)
    assert res.status_code == 200, res.text
    [event] = [e for e in engine.stub.events if e.name == "customer/email.received"]
    return event.as_event()


async def test_with_postmark_configured_the_draft_is_sent_once_in_the_thread(
    sending: Engine, postmark: FakePostmark
) -> None:
    event = await webhook_email(sending)
    run = await sending.driver.run("handle-customer-email", event, deliver_twice=True)
    assert run.status == "completed", run.error
    [email] = postmark.accepted
    assert email["From"] == "support@shop.example" and email["To"] == "grace@example.com"
    assert email["Subject"] == "Re: Shipping" and email["TextBody"] == run.output["reply"]
    assert {h["Name"]: h["Value"] for h in email["Headers"]} == {
        "In-Reply-To": "<CAF=grace-2@mail.example.com>",
        "References": "<CAF=grace-1@mail.example.com> <CAF=grace-2@mail.example.com>",
    }
    assert email["Metadata"]["draft_id"] == run.output["draft_id"]
    [sent] = await rows(sending.pool, db.AuditAction.REPLY_SENT)
    assert sent.detail["message_id"] == email["_message_id"] and sent.detail["draft_id"] == run.output["draft_id"]
    assert run.output["status"] == "sent" and run.output["sent"]["message_id"] == email["_message_id"]
    status = await sending.pool.fetchval("SELECT status FROM drafts WHERE id = $1", run.output["draft_id"])
    assert status == "sent"


@pytest.mark.parametrize(
    ("status", "body", "headers"),
    [
        (500, {"ErrorCode": 100, "Message": "Maintenance"}, {}),
        (429, {"ErrorCode": 429, "Message": "Rate Limit Exceeded"}, {"Retry-After": "1"}),
    ],
)
async def test_postmark_trouble_retries_the_send_step_and_mails_once(
    sending: Engine, postmark: FakePostmark, status: int, body: dict[str, Any], headers: dict[str, str]
) -> None:
    postmark.fail_next(status, body, **headers)
    run = await sending.email(QUESTION)
    assert run.status == "completed", run.error
    # The step failed once (a retry of the step, Retry-After honoured) and the next attempt sent it.
    assert len(postmark.requests) == 2 and len(postmark.accepted) == 1
    # A 5xx fails the step (StepError); a 429 answers RetryAfterError (a 500 with Retry-After).
    retried = [c for c in run.calls if "StepError" in [o.get("op") for o in c.ops] or c.headers.get("retry-after")]
    assert len(retried) == 1 and (status != 429 or retried[0].headers.get("retry-after"))
    assert len(await rows(sending.pool, db.AuditAction.REPLY_SENT)) == 1
    assert run.output["status"] == "sent"


async def test_an_inactive_recipient_is_a_clear_audited_failure_never_retried(
    sending: Engine, postmark: FakePostmark
) -> None:
    postmark.fail_next(422, INACTIVE_RECIPIENT)
    run = await sending.email(QUESTION)
    assert run.status == "completed", run.error
    assert run.runs_of("send-reply") == 1 and len(postmark.requests) == 1  # a retry cannot help
    [failed] = await rows(sending.pool, db.AuditAction.REPLY_SEND_FAILED)
    assert failed.detail["error_code"] == 406 and "inactive" in failed.detail["message"]
    assert failed.detail["draft_id"] == run.output["draft_id"] and failed.detail["http"] == 422
    assert await rows(sending.pool, db.AuditAction.REPLY_SENT) == []
    assert run.output["status"] == "send_failed" and run.output["sent"]["error_code"] == 406
    # The draft keeps its text; a person can send it another way.
    assert await sending.pool.fetchval("SELECT status FROM drafts") == "send_failed"


async def test_the_desk_shows_drafts_waiting_when_sending_is_off(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool
) -> None:
    desk = settings.model_copy(update={"review_desk_users": "alice:alice-pw"})
    async with serve(desk, monkeypatch, pool) as engine:
        run = await engine.email(QUESTION)
        page = await engine.driver.http.get("/reviews", auth=("alice", "alice-pw"))
    assert page.status_code == 200
    assert "Drafts waiting to be sent" in page.text and run.output["draft_id"] in page.text
    assert "Re: Shipping" in page.text and "grace@example.com" in page.text


class ReadingModel(OfflineSupportModel):
    """The offline model, keeping the first input of each run (what the agent was given)."""

    def __init__(self) -> None:
        self.inputs: list[str] = []

    async def get_response(self, system_instructions: Any, input: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(input, list) and len(input) == 1:
            self.inputs.append(str(input[0].get("content")))
        elif isinstance(input, str):
            self.inputs.append(input)
        return await super().get_response(system_instructions, input, *args, **kwargs)


async def test_the_agent_reads_the_thread_before_the_new_email_bounded(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool
) -> None:
    model = ReadingModel()
    async with serve(settings, monkeypatch, pool, model=model) as engine:
        first = await engine.email(QUESTION, event_id="evt-1")
        second = await engine.email({"customer_id": GRACE, "body": "And to Mexico?"}, event_id="evt-2")
    assert first.status == second.status == "completed"
    assert THREAD_MARKER not in model.inputs[0]  # a first email has no thread
    new, _, earlier = model.inputs[-1].partition(THREAD_MARKER)
    assert "And to Mexico?" in new and "Do you ship to Canada?" not in new
    assert "The customer wrote (subject: Shipping):\nDo you ship to Canada?" in earlier
    assert f"We replied (subject: Re: Shipping):\n{first.output['reply']}" in earlier
    assert len(earlier) <= MAX_THREAD_CHARS + 10


async def test_a_second_attempt_while_the_first_holds_the_draft_posts_nothing(
    sending: Engine, postmark: FakePostmark, settings: Settings
) -> None:
    from support_worker.store import drafts as store
    from support_worker.workflows import replies

    run = await sending.email(QUESTION)
    draft_id = run.output["draft_id"]
    await sending.pool.execute("UPDATE drafts SET status = 'drafted', send_started_at = NULL")
    postmark_settings = {"postmark_server_token": TOKEN, "postmark_api_url": postmark.url}
    configured = settings.model_copy(update=postmark_settings | {"reply_from_email": "support@shop.example"})
    assert await store.claim_for_sending(sending.pool, draft_id=draft_id)  # the first attempt, in flight
    with pytest.raises(replies.PostmarkUnavailable, match="another attempt is sending"):
        await replies.send_draft(sending.pool, configured, draft_id=draft_id)
    assert len(postmark.requests) == 1  # only the run's own send; the second attempt posted nothing
