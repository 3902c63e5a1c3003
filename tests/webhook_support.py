"""What the webhook tests share: an app with the webhook open, posting, reading rows, and
Hypothesis strategies built from Postmark's published inbound types.

The types are the `postmark` npm package's (5.x, `dist/client/models`): `InboundWebhook`
(every field a string or a list, `Tag` and `RawEmail` optional), `InboundRecipient` (`Email`,
`Name`, `MailboxHash`), `Header` (`Name`, `Value`) and `Attachment` (`Name`, `Content`,
`ContentType`, `ContentID: string | null`, `ContentLength?`, `Disposition?`). The strategies
start from that shape and then drop, null and re-shape fields the way other senders and older
versions of the provider do.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from hypothesis import strategies as st
from tests_support import Engine, serve

import db
from support_worker.core.settings import Settings

AUTH = ("postmark", "hook-secret")
SENDER = "grace@example.com"


@pytest.fixture
async def doors(settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool) -> AsyncIterator[Engine]:
    opened = settings.model_copy(update={"webhook_password": AUTH[1], "webhook_html_seconds": 2.0})
    async with serve(opened, monkeypatch, pool) as engine:
        yield engine


async def post_raw(engine: Engine, body: bytes) -> httpx.Response:
    return await engine.driver.http.post(
        "/webhooks/email", content=body, auth=AUTH, headers={"content-type": "application/json"}
    )


async def post(engine: Engine, payload: Any) -> httpx.Response:
    # ensure_ascii keeps lone surrogates as \ud800 escapes, the way a JSON encoder sends them.
    return await post_raw(engine, json.dumps(payload).encode())


async def rows(pool: asyncpg.Pool, action: str) -> list[dict[str, Any]]:
    return [e.detail for e in await db.list_audit(pool, action=db.AuditAction(action))]


# --------------------------------------------------------------------------- strategies

# Text as senders write it, with the characters Postgres cannot store mixed in.
NASTY = st.sampled_from(["\x00", "\ud800", "\udfff", "\ud83d", "a\x00b", "\udc00\x00"])
plain_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
nasty_text = st.builds(lambda a, n, b: a + n + b, plain_text, NASTY, plain_text)
any_text = st.one_of(plain_text, nasty_text)

# What a documented field may arrive as instead: absent is handled by dropping the key.
reshaped = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**63),
    st.floats(),  # NaN and Infinity too: Python's json writes and reads them, jsonb refuses them
    st.booleans(),
    st.lists(plain_text, max_size=2),
    st.dictionaries(plain_text, plain_text, max_size=2),
)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """The documented value most of the time, otherwise something else a sender may put there."""
    return st.one_of(strategy, strategy, reshaped)


recipient = st.fixed_dictionaries(
    {}, optional={"Email": maybe(any_text), "Name": maybe(any_text), "MailboxHash": maybe(any_text)}
)
header = st.one_of(
    st.fixed_dictionaries({"Name": maybe(any_text), "Value": maybe(any_text)}),
    st.dictionaries(any_text, maybe(any_text), min_size=1, max_size=1),  # the older one-key shape
    reshaped,  # an entry nobody can read: kept raw, ignored
)
attachment = st.fixed_dictionaries(
    {},
    optional={
        "Name": maybe(any_text),
        "Content": maybe(st.one_of(st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()), any_text)),
        "ContentType": maybe(any_text),
        "ContentID": maybe(any_text),
        "ContentLength": maybe(st.integers(-5, 10**9)),
        "Disposition": maybe(any_text),
    },
)
TEXT_FIELDS = [
    "From", "FromName", "To", "Cc", "Bcc", "ReplyTo", "OriginalRecipient", "Subject", "Date",
    "MailboxHash", "Tag", "MessageID", "MessageStream", "RawEmail", "TextBody", "StrippedTextReply",
]  # fmt: skip
inbound_webhook = st.fixed_dictionaries(
    {},
    optional={
        **{name: maybe(any_text) for name in TEXT_FIELDS},
        "HtmlBody": maybe(st.one_of(any_text, any_text.map(lambda t: f"<p>{t}</p>"))),
        "FromFull": maybe(recipient),
        **{name: maybe(st.lists(recipient, max_size=3)) for name in ("ToFull", "CcFull", "BccFull")},
        "Headers": maybe(st.lists(header, max_size=4)),
        "Attachments": maybe(st.lists(attachment, max_size=2)),
        "SomethingNew": reshaped,  # a field a later version of the provider adds
    },
)

# Ways a payload names its sender, each enough on its own.
sender_fields = st.sampled_from(
    [
        {"FromFull": {"Email": SENDER, "Name": "Grace Hopper", "MailboxHash": ""}},
        {"FromFull": None, "From": f'"Grace Hopper" <{SENDER}>'},
        {"From": SENDER},
        {"From": "", "FromFull": {"Name": "Grace"}, "ReplyTo": SENDER},
        {"From": None, "Headers": [{"From": f"Grace <{SENDER}>"}]},
    ]
)
RECEIPT = {
    "Name": "receipt.pdf",
    "Content": base64.b64encode(b"%PDF-1.4").decode(),
    "ContentType": "application/pdf",
    "ContentLength": 1,  # wrong on purpose: the content is the size
}
# Ways a payload carries something to read, each enough on its own.
readable_fields = st.sampled_from(
    [
        {"TextBody": "I was charged twice for order 1003"},
        {"TextBody": None, "StrippedTextReply": "Any news on my refund?"},
        {"TextBody": "", "StrippedTextReply": "", "HtmlBody": "<p>I was <b>charged twice</b></p>"},
        {"TextBody": "", "StrippedTextReply": None, "HtmlBody": "", "Attachments": [RECEIPT]},
    ]
)


def answerable(base: dict[str, Any], who: dict[str, Any], what: dict[str, Any]) -> dict[str, Any]:
    """`base` with a sender and something to read laid over it. Headers merge, so a header
    naming the sender survives; attachments in `what` replace the base's."""
    payload = base | who | what
    if "Headers" in who and isinstance(base.get("Headers"), list):
        payload["Headers"] = who["Headers"] + base["Headers"]
    return payload


def documented_example(**overrides: Any) -> dict[str, Any]:
    """Every field Postmark's inbound example documents, from one of our customers."""
    message: dict[str, Any] = {
        "FromName": "Grace Hopper",
        "MessageStream": "inbound",
        "From": SENDER,
        "FromFull": {"Email": SENDER, "Name": "Grace Hopper", "MailboxHash": ""},
        "To": '"Support" <support+order1003@shop.example>',
        "ToFull": [{"Email": "support+order1003@shop.example", "Name": "Support", "MailboxHash": "order1003"}],
        "Cc": '"Ada" <ada@example.com>',
        "CcFull": [{"Email": "ada@example.com", "Name": "Ada", "MailboxHash": ""}],
        "Bcc": '"Audit" <audit@shop.example>',
        "BccFull": [{"Email": "audit@shop.example", "Name": "Audit", "MailboxHash": ""}],
        "OriginalRecipient": "support+order1003@shop.example",
        "Subject": "Double charge",
        "MessageID": "73e6d360-66eb-11e1-8e72-a8904824019b",
        "ReplyTo": SENDER,
        "MailboxHash": "order1003",
        "Date": "Fri, 1 Aug 2026 16:45:32 -04:00",
        "TextBody": "I was charged twice for order 1003",
        "HtmlBody": "<html><body><p>I was charged twice for order 1003</p></body></html>",
        "StrippedTextReply": "",
        "Tag": "TestTag",
        "Headers": [
            {"Name": "X-Spam-Status", "Value": "No"},
            {"Name": "Message-ID", "Value": "<CAKH1=first@mail.example.com>"},
        ],
        "Attachments": [
            {
                "Name": "receipt.pdf",
                "Content": base64.b64encode(b"%PDF-1.4").decode(),
                "ContentType": "application/pdf",
                "ContentLength": 8,
                "ContentID": "ii_l1a2b3c4",
            }
        ],
        "RawEmail": "From: grace@example.com\r\nSubject: Double charge\r\n\r\nI was charged twice for order 1003",
    }
    return message | overrides


# Every string a sender controls in the documented example, as (path, setter).
STRING_PATHS = [
    *[(name, (name,)) for name in [*TEXT_FIELDS, "HtmlBody"]],
    *[(f"FromFull.{k}", ("FromFull", k)) for k in ("Email", "Name", "MailboxHash")],
    *[
        (f"{lst}[0].{k}", (lst, 0, k))
        for lst in ("ToFull", "CcFull", "BccFull")
        for k in ("Email", "Name", "MailboxHash")
    ],
    *[(f"Headers[0].{k}", ("Headers", 0, k)) for k in ("Name", "Value")],
    *[(f"Attachments[0].{k}", ("Attachments", 0, k)) for k in ("Name", "ContentType", "ContentID")],
]


def with_value(payload: dict[str, Any], where: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """The payload with the field at `where` (keys and list positions) set to `value`."""
    copy = json.loads(json.dumps(payload))
    target = copy
    for step in where[:-1]:
        target = target[step]
    target[where[-1]] = value
    return copy
