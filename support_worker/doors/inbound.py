"""Postmark's inbound message, read the way Postmark sends it, and its contract answered.

Engine-free body handling for the email webhook (ingress.py checks the credentials and reads
the body with a size cap, then hands it here). Postmark retries every answer but 200 (ten
times, with growing intervals) and stops at 403, so:

- 200: accepted, or already accepted (the same MessageID and content): stored once, one
  event sent. Text Postgres cannot store is cleaned and fields past their limit are cut
  (postmark.py), with a `webhook_repaired` row; a MessageID seen before with other content is
  stored beside the first under an id of its own, with a `message_id_reused` row.
- 403: can never be answered (not JSON or nested past MAX_JSON_DEPTH, no sender address
  anywhere, nothing to read, too large): a `webhook_refused` audit row says why, and when the
  sender's address is known a reply telling them what to do is recorded (`reply_sent`).
- 5xx: only when a retry can help (Postgres or the event API is unreachable).

The message and its attachments are stored once (store/messages.py), keyed by MessageID;
the event carries that reference, a digest, an excerpt and sizes, never the content.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any

import asyncpg

import db
from support_worker.doors import html_text, postmark
from support_worker.doors.postmark import PostmarkInbound
from support_worker.store import messages

logger = logging.getLogger("support_worker.inbound")

SendEvent = Callable[[str, str, dict[str, Any]], Awaitable[None]]
FindCustomer = Callable[[str], Awaitable[db.Customer | None]]


HTML_INPUT_CHARS = 2_000_000  # HTML past this is cut before conversion
HTML_TEXT_CHARS = 200_000  # text kept of a converted HTML body
_MESSAGE_IDS = re.compile(r"<[^<>\s]{1,298}>")


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
    return postmark.usable_address(match.group(1).decode(errors="replace"))


def fingerprint(inbound: PostmarkInbound, attachments: list[messages.Attachment]) -> str:
    """What makes two deliveries the same email: its bodies and attachment contents."""
    whole = hashlib.sha256(json.dumps([inbound.TextBody, inbound.HtmlBody, inbound.StrippedTextReply]).encode())
    for a in attachments:
        whole.update(hashlib.sha256(a.content).digest())
    return whole.hexdigest()


@dataclass
class Reading:
    """An inbound message as read: the cleaned message, its decoded attachments, what reading
    changed, and the id it is stored under."""

    inbound: PostmarkInbound
    attachments: list[messages.Attachment]
    repairs: postmark.Repairs
    message_id: str
    fingerprint: str


async def _text_of(inbound: PostmarkInbound, repairs: postmark.Repairs, html_seconds: float) -> tuple[str, bool]:
    """The text the agent reads (the stripped reply, else TextBody, else the HTML's text) and
    whether it came from the HTML."""
    stripped = inbound.StrippedTextReply.strip()
    text_body = inbound.TextBody.strip()
    if stripped or text_body or not inbound.HtmlBody.strip():
        return stripped or text_body, False
    converted = await html_text.html_to_text(
        inbound.HtmlBody, seconds=html_seconds, max_input=HTML_INPUT_CHARS, max_text=HTML_TEXT_CHARS
    )
    for note in converted.notes:
        repairs.add(note)
    return converted.text, True


async def to_message(
    pool: asyncpg.Pool, reading: Reading, customer: db.Customer | None, *, html_seconds: float
) -> messages.NewMessage:
    """The message as the claim-check stores it, or a Refusal when it has nothing to read."""
    inbound, attachments = reading.inbound, reading.attachments
    # The customer's new words, without the quoted thread, when Postmark could separate them.
    text, from_html = await _text_of(inbound, reading.repairs, html_seconds)
    if not text and not attachments:
        unreadable = [a.Name[:60] or "(unnamed)" for a in inbound.Attachments if not a.readable][:3]
        raise Refusal(
            f"the attachment {', '.join(unreadable)} is not base64, and there is no text: nothing to read"
            if unreadable
            else "TextBody, HtmlBody and Attachments are all empty: the email has nothing to read",
            "We could not read the attachment; please attach it again and resend."
            if unreadable
            else "Your email arrived empty. Please write what you need help with and send it again.",
        )
    own, replied_to = thread_keys(inbound)
    thread = (
        (f"mailbox:{inbound.MailboxHash}" if inbound.MailboxHash else None)
        or await messages.thread_of(pool, header_message_ids=replied_to)
        or (replied_to[-1] if replied_to else None)  # the root of References
        or own
        or f"postmark:{reading.message_id}"
    )
    payload = inbound.model_dump(exclude={"TextBody", "HtmlBody", "RawEmail", "sender"})
    payload["Fingerprint"] = reading.fingerprint
    if inbound.StrippedTextReply.strip() and inbound.TextBody:
        payload["TextBody"] = inbound.TextBody  # the quoted thread, kept once beside the reply
    return messages.NewMessage(
        id=reading.message_id,
        source="postmark",
        customer_id=customer.id if customer else None,
        sender=inbound.sender,
        subject=inbound.Subject or None,
        text_body=text or "(no text: see the attachments)",
        text_from_html=from_html,
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


def _parse_json(raw: bytes, repairs: postmark.Repairs) -> Any:
    """The body as JSON, cleaned to what Postgres can store; ValueError when it is not JSON or
    nests too deep (json raises RecursionError past Python's limit, clean_json far sooner)."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", "replace")
        repairs.add("body: bytes that are not UTF-8 were replaced by U+FFFD")

    def no_constant(name: str) -> None:
        # Python reads NaN and Infinity (not JSON) and 1e999 (past a double) as numbers jsonb refuses.
        repairs.add(f"body: {name} is not a finite number Postgres can store, read as null")

    def finite(literal: str) -> float | None:
        number = float(literal)  # 1e999 reads as infinity
        if math.isfinite(number):
            return number
        no_constant(literal)
        return None

    try:
        return postmark.clean_json(json.loads(text, parse_constant=no_constant, parse_float=finite), repairs)
    except RecursionError as error:
        raise postmark.TooDeep(f"the JSON nests deeper than {postmark.MAX_JSON_DEPTH} levels") from error


async def _read_inbound(raw: bytes, *, key: str, pool: asyncpg.Pool, find_customer: FindCustomer) -> Reading | Answer:
    """Postmark's JSON read into a `Reading` with a sender address, or the refusal's answer."""
    repairs = postmark.Repairs()
    try:
        payload = _parse_json(raw, repairs)
    except ValueError as error:
        return await refuse(
            pool,
            why=str(error) if isinstance(error, postmark.TooDeep) else "body is not valid JSON",
            advice="Please send your message again.",
            key=key,
            sender=sender_in_prefix(raw[:65536]),
            find_customer=find_customer,
        )
    if not isinstance(payload, dict):
        return await refuse(
            pool, why="body must be a JSON object (Postmark's inbound format)", advice="", key=key, sender=None
        )
    inbound, attachments = postmark.read(payload, repairs)
    if inbound.sender is None:
        return await refuse(
            pool, why="From/FromFull.Email: no sender address anywhere in the email", advice="", key=key,
            message_id=inbound.MessageID or None, sender=None, subject=inbound.Subject or None,
        )  # fmt: skip
    # Postmark always sends a MessageID; without one, the body itself keys its retries.
    message_id = inbound.MessageID or f"sha256:{key}"
    return Reading(inbound, attachments, repairs, message_id, fingerprint(inbound, attachments))


async def _same_id_elsewhere(pool: asyncpg.Pool, reading: Reading) -> dict[str, Any] | None:
    """When this MessageID is stored with other content, move the reading to an id of its own
    and say what happened (for the `message_id_reused` row); None when it is new or the same."""
    stored = await messages.stored_fingerprint(pool, message_id=reading.message_id)
    if stored is None or stored in ("", reading.fingerprint):
        return None  # new, the same email again, or stored before fingerprints were kept
    first = reading.message_id
    reading.message_id = f"{first[:200]}~{reading.fingerprint[:16]}"
    return {"message_id": first, "stored_as": reading.message_id, "sender": reading.inbound.sender}


async def _record_changes(
    pool: asyncpg.Pool, reading: Reading, customer: db.Customer | None, reused: dict[str, Any] | None
) -> None:
    """The rows saying what the webhook changed to store this email, once per message."""
    customer_id = customer.id if customer else None
    if reused is not None:
        await db.record_audit(
            pool, action=db.AuditAction.MESSAGE_ID_REUSED, run_id=None, customer_id=customer_id,
            detail=reused | {"why": "a MessageID seen before arrived with different content; both are kept"},
            idempotency_key=f"message_id_reused:{reading.message_id}",
        )  # fmt: skip
    if notes := reading.repairs.summary():
        await db.record_audit(
            pool, action=db.AuditAction.WEBHOOK_REPAIRED, run_id=None, customer_id=customer_id,
            detail={"message_id": reading.message_id, "sender": reading.inbound.sender, "repairs": notes},
            idempotency_key=f"webhook_repaired:{reading.message_id}",
        )  # fmt: skip


async def accept(
    raw: bytes,
    *,
    pool: asyncpg.Pool,
    find_customer: FindCustomer,
    send: SendEvent,
    event_name: str,
    max_event_bytes: int,
    html_seconds: float = 5.0,
) -> Answer:
    key = hashlib.sha256(raw).hexdigest()[:32]
    reading = await _read_inbound(raw, key=key, pool=pool, find_customer=find_customer)
    if isinstance(reading, Answer):
        return reading
    inbound = reading.inbound
    customer = await find_customer(inbound.sender or "")
    reused = await _same_id_elsewhere(pool, reading)
    ref = await messages.get_ref(pool, message_id=reading.message_id)
    stored_now = False
    if ref is None:  # a redelivery skips the reading (and the HTML's conversion)
        try:
            message = await to_message(pool, reading, customer, html_seconds=html_seconds)
        except Refusal as refusal:
            return await refuse(
                pool, why=refusal.why, advice=refusal.advice, key=key, sender=inbound.sender,
                subject=inbound.Subject or None, message_id=inbound.MessageID or None, find_customer=find_customer,
            )  # fmt: skip
        ref, stored_now = await messages.store_message(pool, message)
        await _record_changes(pool, reading, customer, reused)
    data = event_data(inbound, ref, customer)
    while len(json.dumps(data).encode()) > max_event_bytes and data["attachments"]:
        data["attachments"] = data["attachments"][: len(data["attachments"]) // 2]  # the count stays exact
    event_id = f"postmark-{reading.message_id}"
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
