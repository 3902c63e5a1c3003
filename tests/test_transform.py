"""003 D4 Part A: the Inngest webhook transform (support_worker/doors/transforms/postmark.js),
run under Node on Postmark's inbound samples, makes the event the email function answers."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from test_providers import postmark_example
from tests_support import Engine

from support_worker.core import events

TRANSFORM = Path(__file__).resolve().parent.parent / "support_worker" / "doors" / "transforms" / "postmark.js"
# Evaluates the file as the dashboard does (a script defining `transform`) and applies it to
# each payload read from stdin, with no headers and no query parameters.
HARNESS = """
const fs = require("fs");
const transform = new Function(fs.readFileSync(process.argv[1], "utf8") + "\\nreturn transform;")();
const payloads = JSON.parse(fs.readFileSync(0, "utf8"));
process.stdout.write(JSON.stringify(payloads.map((p) => transform(p, {}, {}))));
"""

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")


def transformed(*payloads: dict[str, Any]) -> list[dict[str, Any]]:
    done = subprocess.run(
        ["node", "-e", HARNESS, str(TRANSFORM)],
        input=json.dumps(payloads),
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    result: list[dict[str, Any]] = json.loads(done.stdout)
    return result


# Postmark's documented inbound sample (https://postmarkapp.com/developer/webhooks/inbound-webhook),
# its addresses and text made ours.
DOCS_SAMPLE: dict[str, Any] = {
    "FromName": "Postmarkapp Support",
    "MessageStream": "inbound",
    "From": "support@postmarkapp.com",
    "FromFull": {"Email": "grace@example.com", "Name": "Grace Hopper", "MailboxHash": ""},
    "To": '"Firstname Lastname" <yourhash+SampleHash@inbound.postmarkapp.com>',
    "ToFull": [{"Email": "yourhash+SampleHash@inbound.postmarkapp.com", "Name": "Firstname Lastname", "MailboxHash": "SampleHash"}],  # noqa: E501
    "Cc": '"First Cc" <firstcc@postmarkapp.com>, secondCc@postmarkapp.com',
    "CcFull": [{"Email": "firstcc@postmarkapp.com", "Name": "First Cc", "MailboxHash": ""}],
    "Bcc": '"First Bcc" <firstbcc@postmarkapp.com>',
    "BccFull": [{"Email": "firstbcc@postmarkapp.com", "Name": "First Bcc", "MailboxHash": ""}],
    "OriginalRecipient": "yourhash+SampleHash@inbound.postmarkapp.com",
    "Subject": "Test subject",
    "MessageID": "73e6d360-66eb-11e1-8e72-a8904824019b",
    "ReplyTo": "replyto@example.com",
    "MailboxHash": "SampleHash",
    "Date": "Fri, 1 Aug 2014 16:45:32 -04:00",
    "TextBody": "This is a test text body.",
    "HtmlBody": "<html><body><p>This is a test html body.</p></body></html>",
    "StrippedTextReply": "This is the reply text",
    "Tag": "TestTag",
    "Headers": [{"Name": "X-Header-Test", "Value": ""}, {"Name": "X-Spam-Status", "Value": "No"}],
    "Attachments": [],
}


def test_the_transform_maps_postmarks_sample_to_the_course_event() -> None:
    [event] = transformed(DOCS_SAMPLE)
    assert event == {
        "id": "postmark-73e6d360-66eb-11e1-8e72-a8904824019b",
        "name": "customer/email.received",
        "data": {
            "from_email": "grace@example.com",
            "subject": "Test subject",
            "body": "This is the reply text",  # the new words, without the quoted thread
            "received_at": "2014-08-01T20:45:32.000Z",
            "thread_key": "mailbox:SampleHash",
            "postmark_message_id": "73e6d360-66eb-11e1-8e72-a8904824019b",
        },
    }
    events.EmailReceived.model_validate(event["data"])  # the email function accepts it


def test_the_transform_falls_back_to_the_text_then_the_html_and_reads_the_sender_from_from() -> None:
    text_only, html_only, no_date = transformed(
        postmark_example(StrippedTextReply=""),
        postmark_example(StrippedTextReply="", TextBody="", HtmlBody="<p>Order&nbsp;1003 &amp; 1004</p><br>Thanks"),
        postmark_example(Date="", FromFull=None, From='"Grace Hopper" <grace@example.com>'),
    )
    assert text_only["data"]["body"] == "I was charged twice for order 1003"
    assert html_only["data"]["body"] == "Order 1003 & 1004\n\nThanks"
    assert no_date["data"]["received_at"] is None and no_date["data"]["from_email"] == "grace@example.com"


async def test_the_transformed_sample_is_answered_with_a_draft(engine: Engine) -> None:
    [event] = transformed(postmark_example(StrippedTextReply=""))
    run = await engine.driver.run("handle-customer-email", event | {"ts": 1_790_000_000_000})
    assert run.status == "completed", run.error
    assert run.output["status"] == "drafted" and run.output["draft_id"]
    assert "event_rejected" not in await engine.actions()


async def test_the_in_app_webhook_sends_the_same_id_and_received_at(engine: Engine) -> None:
    from support_worker.doors import inbound

    [event] = transformed(postmark_example())
    assert inbound.iso_date(postmark_example()["Date"]) == event["data"]["received_at"].replace(".000Z", "Z")
    assert event["id"] == f"postmark-{postmark_example()['MessageID']}"
