"""Postmark's inbound message, read the way Postmark sends it, and its contract answered.

Engine-free body handling for the email webhook (ingress.py checks the credentials and reads
the body with a size cap, then hands it here). Postmark retries every answer but 200 (ten
times, with growing intervals) and stops at 403, so:

- 200: accepted, or already accepted (the same MessageID): stored once, one event sent.
- 403: can never be accepted (not JSON, not Postmark's shape, no sender, nothing to read,
  an unreadable attachment, too large): a `webhook_refused` audit row says why, and when the
  sender's address is known a reply telling them what to do is recorded (`reply_sent`).
- 5xx: only when a retry can help (Postgres or the event API is unreachable).

The message and its attachments are stored once (store/messages.py), keyed by MessageID;
the event carries that reference, a digest, an excerpt and sizes, never the content.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC
from email.utils import parseaddr, parsedate_to_datetime
from typing import Any

import asyncpg
import html2text
from pydantic import BaseModel, ConfigDict, Field, ValidationError

import db
from support_worker.core.fields import storable_problem
from support_worker.store import messages

logger = logging.getLogger("support_worker.inbound")

SendEvent = Callable[[str, str, dict[str, Any]], Awaitable[None]]
FindCustomer = Callable[[str], Awaitable[db.Customer | None]]


class PostmarkAddress(BaseModel):
    model_config = ConfigDict(extra="ignore")

    Email: str = ""
    Name: str = ""
    MailboxHash: str = ""


class PostmarkHeader(BaseModel):
    model_config = ConfigDict(extra="ignore")

    Name: str
    Value: str = ""


class PostmarkAttachment(BaseModel):
    model_config = ConfigDict(extra="ignore")

    Name: str = ""
    Content: str = ""
    ContentType: str = "application/octet-stream"
    ContentLength: int | None = None
    ContentID: str = ""


class PostmarkInbound(BaseModel):
    """Postmark's inbound webhook JSON (https://postmarkapp.com/developer/webhooks/inbound-webhook)."""

    model_config = ConfigDict(extra="ignore")

    From: str = ""
    FromName: str = ""
    FromFull: PostmarkAddress | None = None
    To: str = ""
    ToFull: list[PostmarkAddress] = []
    Cc: str = ""
    CcFull: list[PostmarkAddress] = []
    Bcc: str = ""
    BccFull: list[PostmarkAddress] = []
    OriginalRecipient: str = ""
    ReplyTo: str = ""
    Subject: str = ""
    MessageID: str = Field(min_length=1, max_length=200)
    Date: str = ""
    MailboxHash: str = ""
    TextBody: str | None = ""
    HtmlBody: str | None = ""
    StrippedTextReply: str | None = ""
    Tag: str | None = ""
    Headers: list[PostmarkHeader] = []
    Attachments: list[PostmarkAttachment] = []
    MessageStream: str = ""
    RawEmail: str | None = None

    @property
    def sender(self) -> str:
        if self.FromFull is not None and self.FromFull.Email.strip():
            return self.FromFull.Email.strip()
        return parseaddr(self.From)[1].strip()

    def header(self, name: str) -> str:
        return next((h.Value for h in self.Headers if h.Name.lower() == name.lower()), "")


def html_to_text(markup: str) -> str:
    """Readable text from an HTML-only email (html2text: links kept, images dropped)."""
    converter = html2text.HTML2Text()
    converter.ignore_images = True
    converter.body_width = 0  # no hard wrapping: the model reads paragraphs
    return converter.handle(markup).strip()


_MESSAGE_IDS = re.compile(r"<[^<>\s]+>")


def thread_keys(inbound: PostmarkInbound) -> tuple[str | None, list[str]]:
    """The message's own Message-ID header, and the ids it replies to (In-Reply-To first,
    then References from the thread's root)."""
    own = (_MESSAGE_IDS.findall(inbound.header("Message-ID")) or [None])[0]
    replied = _MESSAGE_IDS.findall(inbound.header("In-Reply-To"))
    references = _MESSAGE_IDS.findall(inbound.header("References"))
    return own, replied + [r for r in references if r not in replied]


@dataclass
class Answer:
    """The webhook's answer: a status Postmark understands and a JSON body."""

    status: int
    body: dict[str, Any]


class Refusal(Exception):
    """A message that can never be accepted: 403, with why and what the sender should do."""

    def __init__(self, why: str, advice: str) -> None:
        super().__init__(why)
        self.why = why
        self.advice = advice


_SENDER = re.compile(rb'"(?:Email|From)"\s*:\s*"([^"\\]{3,320})"')


def sender_in_prefix(prefix: bytes) -> str | None:
    """The sender's address from the start of a body we will not parse (it is too large or
    not JSON): Postmark writes From and FromFull first."""
    match = _SENDER.search(prefix)
    if match is None:
        return None
    address = parseaddr(match.group(1).decode(errors="replace"))[1]
    return address if "@" in address else None


def _check_storable(inbound: PostmarkInbound) -> None:
    for name in ("From", "Subject", "TextBody", "HtmlBody", "StrippedTextReply", "MessageID", "RawEmail"):
        value = getattr(inbound, name)
        if isinstance(value, str) and (problem := storable_problem(value)):
            raise Refusal(f"{name}: {problem}", "Please send your message again as plain text.")
    for header in inbound.Headers:
        if storable_problem(header.Name + header.Value):
            raise Refusal(f"Headers.{header.Name}: unstorable text", "Please send your message again.")
    for a in inbound.Attachments:
        if storable_problem(a.Name + a.ContentType + a.ContentID):
            raise Refusal("Attachments: a name or type with unstorable text", "Please rename the file and resend it.")


def _decode_attachments(inbound: PostmarkInbound) -> list[messages.Attachment]:
    decoded = []
    for i, a in enumerate(inbound.Attachments):
        try:
            content = base64.b64decode("".join(a.Content.split()), validate=True)
        except (binascii.Error, ValueError) as error:
            raise Refusal(
                f"Attachments[{i}] ({a.Name or 'unnamed'}): Content is not base64 ({error})",
                f"We could not read the attachment {a.Name or '(unnamed)'}; please attach it again and resend.",
            ) from error
        decoded.append(
            messages.Attachment(
                name=(a.Name or f"attachment-{i + 1}")[:255],
                content_type=(a.ContentType or "application/octet-stream")[:255],
                content=content,
                content_id=a.ContentID or None,
            )
        )
    return decoded


async def to_message(pool: asyncpg.Pool, inbound: PostmarkInbound, customer: db.Customer | None) -> messages.NewMessage:
    """The message as the claim-check stores it, or a Refusal."""
    _check_storable(inbound)
    stripped = (inbound.StrippedTextReply or "").strip()
    text_body = (inbound.TextBody or "").strip()
    from_html = False
    if not text_body and (inbound.HtmlBody or "").strip():
        text_body, from_html = html_to_text(inbound.HtmlBody or ""), True
    attachments = _decode_attachments(inbound)
    # The customer's new words, without the quoted thread, when Postmark could separate them.
    text = stripped or text_body
    if not text and not attachments:
        raise Refusal(
            "TextBody, HtmlBody and Attachments are all empty: the email has nothing to read",
            "Your email arrived empty. Please write what you need help with and send it again.",
        )
    own, replied_to = thread_keys(inbound)
    thread = (
        (f"mailbox:{inbound.MailboxHash}" if inbound.MailboxHash else None)
        or await messages.thread_of(pool, header_message_ids=replied_to)
        or (replied_to[-1] if replied_to else None)  # the root of References
        or own
        or f"postmark:{inbound.MessageID}"
    )
    payload = inbound.model_dump(exclude={"TextBody", "HtmlBody", "RawEmail", "Attachments"})
    payload["Attachments"] = [a.model_dump(exclude={"Content"}) for a in inbound.Attachments]
    if stripped and inbound.TextBody:
        payload["TextBody"] = inbound.TextBody  # the quoted thread, kept once beside the reply
    return messages.NewMessage(
        id=inbound.MessageID,
        source="postmark",
        customer_id=customer.id if customer else None,
        sender=inbound.sender,
        subject=inbound.Subject[:500] or None,
        text_body=text or "(no text: see the attachments)",
        text_from_html=from_html and not stripped,
        html_body=inbound.HtmlBody or None,
        raw_email=inbound.RawEmail or None,
        payload=payload,
        thread_key=thread[:300],
        header_message_id=own,
        attachments=attachments,
    )


def event_data(inbound: PostmarkInbound, ref: messages.MessageRef, customer: db.Customer | None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "from_email": inbound.sender,
        "subject": inbound.Subject[:500] or None,
        "message_id": ref.message_id,
        "digest": ref.digest,
        "excerpt": ref.excerpt,
        "text_chars": ref.text_chars,
        "thread_key": ref.thread_key,
        "attachments": [a.model_dump() for a in ref.attachments],
        "attachment_count": ref.attachment_count,
        "received_at": iso_date(inbound.Date),  # ISO 8601, as the transform sends it (003 D4)
    }
    if customer is not None:
        data |= {"customer_id": customer.id, "tier": customer.tier}
    return data


def iso_date(text: str) -> str | None:
    """Postmark's `Date` ("Fri, 1 Aug 2026 16:45:32 -04:00", RFC 5322 with or without the colon
    Postmark writes) as ISO 8601 in UTC; None when it is missing or unreadable."""
    try:
        when = parsedate_to_datetime(re.sub(r"([+-]\d\d):(\d\d)\s*$", r"\1\2", text.strip()))
    except (TypeError, ValueError, IndexError):
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC).isoformat().replace("+00:00", "Z")


async def refuse(
    pool: asyncpg.Pool,
    *,
    why: str,
    advice: str,
    key: str,
    sender: str | None,
    subject: str | None = None,
    message_id: str | None = None,
    find_customer: FindCustomer | None = None,
) -> Answer:
    """403 (Postmark stops retrying), with the audit row and, when we know who wrote, a reply."""
    customer = await find_customer(sender) if (sender and find_customer) else None
    customer_id = customer.id if customer else None
    detail = {"why": why, "sender": sender, "message_id": message_id, "subject": subject}
    await db.record_audit(
        pool,
        action=db.AuditAction.WEBHOOK_REFUSED,
        run_id=None,
        customer_id=customer_id,
        detail=detail,
        idempotency_key=f"webhook_refused:{key}",
    )
    replied = False
    if sender:
        text = (
            f"Hello,\n\nWe could not accept your email{f' “{subject}”' if subject else ''}: {why}.\n"
            f"{advice}\n\nThe support team"
        )
        await db.record_audit(
            pool,
            action=db.AuditAction.REPLY_SENT,
            run_id=None,
            customer_id=customer_id,
            detail={"to": sender, "subject": f"Re: {subject or 'your email'}", "reply": text, "refused": why},
            idempotency_key=f"reply_sent:refused:{key}",
        )
        replied = True
    return Answer(403, {"error": why, "replied_to": sender if replied else None})


async def _read_inbound(
    raw: bytes, *, key: str, pool: asyncpg.Pool, find_customer: FindCustomer
) -> PostmarkInbound | Answer:
    """Postmark's JSON as a `PostmarkInbound` with a sender address, or the refusal's answer."""
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return await refuse(
            pool,
            why="body is not valid JSON",
            advice="Please send your message again.",
            key=key,
            sender=sender_in_prefix(raw[:65536]),
            find_customer=find_customer,
        )
    if not isinstance(payload, dict):
        return await refuse(
            pool, why="body must be a JSON object (Postmark's inbound format)", advice="", key=key, sender=None
        )
    try:
        inbound = PostmarkInbound.model_validate(payload)
    except ValidationError as error:
        fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        sender = payload.get("FromFull", {}).get("Email") if isinstance(payload.get("FromFull"), dict) else None
        return await refuse(
            pool,
            why=f"not a Postmark inbound message: {fields}",
            advice="Please send your message again.",
            key=key,
            sender=sender if isinstance(sender, str) and "@" in sender else None,
            find_customer=find_customer,
        )
    if "@" not in inbound.sender:
        return await refuse(
            pool, why="From/FromFull.Email: no sender address", advice="", key=key, message_id=inbound.MessageID,
            sender=None, subject=inbound.Subject or None,
        )  # fmt: skip
    return inbound


async def accept(
    raw: bytes,
    *,
    pool: asyncpg.Pool,
    find_customer: FindCustomer,
    send: SendEvent,
    event_name: str,
    max_event_bytes: int,
) -> Answer:
    key = hashlib.sha256(raw).hexdigest()[:32]
    inbound = await _read_inbound(raw, key=key, pool=pool, find_customer=find_customer)
    if isinstance(inbound, Answer):
        return inbound
    customer = await find_customer(inbound.sender)
    try:
        message = await to_message(pool, inbound, customer)
    except Refusal as refusal:
        return await refuse(
            pool,
            why=refusal.why,
            advice=refusal.advice,
            key=key,
            sender=inbound.sender,
            subject=inbound.Subject or None,
            message_id=inbound.MessageID,
            find_customer=find_customer,
        )
    ref, stored_now = await messages.store_message(pool, message)
    data = event_data(inbound, ref, customer)
    while len(json.dumps(data).encode()) > max_event_bytes and data["attachments"]:
        data["attachments"] = data["attachments"][: len(data["attachments"]) // 2]  # the count stays exact
    event_id = f"postmark-{inbound.MessageID}"
    # Sent on every delivery, also a repeated one: the event id makes the engine drop a
    # second copy, and a first delivery whose send failed (503) needs this one.
    await send(event_name, event_id, data)
    return Answer(
        200,
        {
            "status": "accepted" if stored_now else "already accepted",
            "event_id": event_id,
            "message_id": ref.message_id,
            "customer_id": data.get("customer_id"),
        },
    )


def _size(n: int) -> str:
    return f"{n} bytes" if n < 1024 else f"{n / 1024:.0f} KB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.1f} MB"


def agent_text(text: str, ref: messages.MessageRef, *, limit: int) -> str:
    """What the agent reads of a stored message: its text (at most `limit` characters, the
    rest noted as stored), then the attachments by name, type and size, never their content."""
    if len(text) > limit:
        text = f"{text[:limit]}\n[... {len(text) - limit} more characters are stored with the message]"
    if not ref.attachment_count:
        return text
    listed = "\n".join(f"- {a.name} ({a.content_type}, {_size(a.size_bytes)})" for a in ref.attachments)
    unlisted = ref.attachment_count - len(ref.attachments)
    more = f"\n- and {unlisted} more" if unlisted > 0 else ""
    return f"{text}\n\n[The customer attached {ref.attachment_count} file(s); you cannot open them:]\n{listed}{more}"
