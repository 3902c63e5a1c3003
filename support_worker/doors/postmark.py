"""Postmark's inbound JSON, read as leniently as Postmark writes it.

The webhook's job is to never lose a customer's email, so this reader is never stricter than
the provider: every field may be absent, `null`, or of another JSON type than documented
(the `postmark` npm package's `InboundWebhook`, `InboundRecipient`, `Header` and `Attachment`
types, and the example on https://postmarkapp.com/developer/webhooks/inbound-webhook).
Unknown fields are ignored. Header entries come as `{"Name", "Value"}` or as older one-key
objects (`{"X-Spam-Status": "No"}`); an entry of neither shape is kept raw and ignored.
`ContentLength` is not trusted (the decoded content is the size), and `Date` is whatever the
sending server wrote: it is parsed when it can be, and its text is kept either way.

What Postgres cannot store (NUL, unpaired surrogates) is cleaned out of every string, and
fields past their limit are cut; each repair is noted so a `webhook_repaired` row can say so.
What is left to refuse is only what can never be answered, decided in inbound.py.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime
from email.utils import parseaddr, parsedate_to_datetime
from typing import Any

from pydantic import BaseModel

from support_worker.store import messages

# Deeper JSON than this is not an email: Postmark's own payload is three levels deep.
MAX_JSON_DEPTH = 32
# Characters kept of each header-like field; the bodies are bounded by WEBHOOK_MAX_BYTES.
LIMITS = {
    "Subject": 500,
    "Date": 200,
    "MessageID": 200,
    "MailboxHash": 300,
    "To": 20_000,
    "Cc": 20_000,
    "Bcc": 20_000,
}
OTHER_FIELD_LIMIT = 1_000  # From, FromName, ReplyTo, OriginalRecipient, Tag, MessageStream
HEADER_NAME_LIMIT = 200
HEADER_VALUE_LIMIT = 20_000
MAX_LIST_ENTRIES = 1_000  # recipients or headers kept per list (every attachment is kept)
MAX_ADDRESS_CHARS = 320  # RFC 5321: 64 + 1 + 255, with room to spare
MAX_REPAIR_NOTES = 20

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_COLON_ZONE = re.compile(r"([+-]\d\d):(\d\d)(\s*\([^()]*\))?$")
_ANGLE_ADDRESS = re.compile(r"<([^<>\s]{3,320})>")


class TooDeep(ValueError):
    """The JSON nests deeper than MAX_JSON_DEPTH."""


class Repairs:
    """What reading changed in the payload, each said once in a few words."""

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.unlisted = 0

    def add(self, note: str) -> None:
        if len(self.notes) < MAX_REPAIR_NOTES:
            self.notes.append(note)
        else:
            self.unlisted += 1

    def summary(self) -> list[str]:
        return self.notes + ([f"and {self.unlisted} more"] if self.unlisted else [])


def clean_json(value: Any, repairs: Repairs, *, path: str = "", depth: int = 0) -> Any:
    """The parsed JSON with every string (keys too) storable by Postgres: NUL characters
    removed, unpaired surrogates replaced by U+FFFD. Raises TooDeep past MAX_JSON_DEPTH."""
    if depth > MAX_JSON_DEPTH:
        raise TooDeep(f"the JSON nests deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        if _UNSTORABLE.search(value) is None:
            return value
        repairs.add(f"{path or 'body'}: removed text Postgres cannot store (NUL or an unpaired surrogate)")
        return _SURROGATE.sub("\ufffd", value.replace("\x00", ""))
    if isinstance(value, dict):
        cleaned = {}
        for key, item in value.items():
            key = clean_json(key, repairs, path=f"{path}.(a key)" if path else "(a key)", depth=depth + 1)
            # The path names fields in repair notes: a sender's key is shown cut, never whole.
            where = f"{path}.{key[:40]}" if path else key[:40]
            cleaned[key] = clean_json(item, repairs, path=where, depth=depth + 1)
        return cleaned
    if isinstance(value, list):
        return [clean_json(v, repairs, path=f"{path}[{i}]", depth=depth + 1) for i, v in enumerate(value)]
    return value


def _text(value: Any, name: str, repairs: Repairs, limit: int | None = None) -> str:
    """A field as text: null is empty, a number or boolean its JSON spelling, an object or
    list is ignored (noted); cut to `limit` characters (noted)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        value = "true" if value else "false"
    elif isinstance(value, int | float):
        value = str(value)
    elif not isinstance(value, str):
        repairs.add(f"{name}: ignored a {type(value).__name__} where text belongs")
        return ""
    if limit is not None and len(value) > limit:
        repairs.add(f"{name}: cut from {len(value)} to {limit} characters")
        return value[:limit]
    return value


def _entries(value: Any, name: str, repairs: Repairs, cap: int | None = MAX_LIST_ENTRIES) -> list[Any]:
    """A list field: null or absent is empty, one object alone is a list of one; past `cap`
    entries the rest are dropped (noted)."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [value]
    if not isinstance(value, list):
        repairs.add(f"{name}: ignored a {type(value).__name__} where a list belongs")
        return []
    if cap is not None and len(value) > cap:
        repairs.add(f"{name}: kept the first {cap} of {len(value)} entries")
        return value[:cap]
    return value


def usable_address(text: str) -> str | None:
    """The address in `text` ("a@b.c", "Grace <a@b.c>", a quoted display name), or None when
    there is none a reply could go to."""
    if len(text) > 4 * OTHER_FIELD_LIMIT:
        # parseaddr walks the text in Python; a huge field is searched for <address> instead.
        found = _ANGLE_ADDRESS.findall(text)
        address = found[-1] if found else ""
    else:
        address = parseaddr(text)[1] or text.strip()
    address = address.strip()
    if "@" not in address or len(address) > MAX_ADDRESS_CHARS or any(c.isspace() or c < " " for c in address):
        return None
    local, _, domain = address.rpartition("@")
    return address if local and domain else None


class PostmarkAddress(BaseModel):
    """Postmark's `InboundRecipient`: Email, Name, MailboxHash (each may be missing)."""

    Email: str = ""
    Name: str = ""
    MailboxHash: str = ""


class PostmarkHeader(BaseModel):
    Name: str
    Value: str = ""


class PostmarkAttachment(BaseModel):
    """An attachment as listed; `readable` is False when its Content is not base64."""

    Name: str = ""
    ContentType: str = "application/octet-stream"
    ContentLength: int = 0  # the decoded size, whatever Postmark's field said
    ContentID: str = ""
    readable: bool = True


class PostmarkInbound(BaseModel):
    """Postmark's inbound message as this app reads it: every field present, as text or lists."""

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
    MessageID: str = ""
    Date: str = ""
    DateParsed: str | None = None  # Date as ISO 8601, when it could be read
    MailboxHash: str = ""
    TextBody: str = ""
    HtmlBody: str = ""
    StrippedTextReply: str = ""
    Tag: str = ""
    Headers: list[PostmarkHeader] = []
    UnreadHeaders: list[Any] = []  # entries of neither header shape, kept as they came
    Attachments: list[PostmarkAttachment] = []
    MessageStream: str = ""
    RawEmail: str = ""
    sender: str | None = None  # the address a reply goes to, from wherever the payload names it

    def header(self, name: str) -> str:
        return next((h.Value for h in self.Headers if h.Name.lower() == name.lower()), "")


def parse_date(text: str) -> datetime | None:
    """The Date as the sending server wrote it (RFC 5322 usually, ISO 8601 sometimes), or None."""
    text = text.strip()
    if not text:
        return None
    try:
        # Postmark's own example writes the zone as "-04:00", which RFC 5322 spells "-0400".
        return parsedate_to_datetime(_COLON_ZONE.sub(r"\1\2\3", text))
    except (TypeError, ValueError, IndexError):
        pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _address(value: Any, name: str, repairs: Repairs) -> PostmarkAddress | None:
    if not isinstance(value, dict):
        if value not in (None, "", [], {}):
            repairs.add(f"{name}: ignored a {type(value).__name__} where an address belongs")
        return None
    return PostmarkAddress(
        Email=_text(value.get("Email"), f"{name}.Email", repairs, MAX_ADDRESS_CHARS),
        Name=_text(value.get("Name"), f"{name}.Name", repairs, OTHER_FIELD_LIMIT),
        MailboxHash=_text(value.get("MailboxHash"), f"{name}.MailboxHash", repairs, LIMITS["MailboxHash"]),
    )


def _headers(value: Any, repairs: Repairs) -> tuple[list[PostmarkHeader], list[Any]]:
    """Headers of either shape; `{"X": "v", …}` as one object is read as its items."""
    if isinstance(value, dict) and not ({"Name", "Value"} & value.keys()):
        value = [{k: v} for k, v in value.items()]
    read, unread = [], []
    for i, entry in enumerate(_entries(value, "Headers", repairs)):
        where = f"Headers[{i}]"
        if isinstance(entry, dict) and isinstance(entry.get("Name"), str) and entry["Name"]:
            pair = (entry["Name"], entry.get("Value"))
        elif isinstance(entry, dict) and len(entry) == 1:
            pair = next(iter(entry.items()))
        else:
            unread.append(entry)
            continue
        read.append(
            PostmarkHeader(
                Name=_text(pair[0], f"{where}.Name", repairs, HEADER_NAME_LIMIT),
                Value=_text(pair[1], f"{where}.Value", repairs, HEADER_VALUE_LIMIT),
            )
        )
    if unread:
        repairs.add(f"Headers: kept {len(unread)} entries of an unknown shape, unread")
    return read, unread


def decode_attachments(value: Any, repairs: Repairs) -> tuple[list[PostmarkAttachment], list[messages.Attachment]]:
    """Each attachment's listing, and the decoded ones to store. Content that is not base64
    is listed as unreadable and not stored (noted)."""
    listed, decoded = [], []
    for i, entry in enumerate(_entries(value, "Attachments", repairs, cap=None)):
        if not isinstance(entry, dict):
            repairs.add(f"Attachments[{i}]: ignored a {type(entry).__name__} where an attachment belongs")
            continue
        name = _text(entry.get("Name"), f"Attachments[{i}].Name", repairs, 255)
        content_type = _text(entry.get("ContentType"), f"Attachments[{i}].ContentType", repairs, 255)
        content_id = _text(entry.get("ContentID"), f"Attachments[{i}].ContentID", repairs, 255)
        raw = _text(entry.get("Content"), f"Attachments[{i}].Content", repairs)
        try:
            content = base64.b64decode("".join(raw.split()), validate=True)
        except (binascii.Error, ValueError):
            repairs.add(f"Attachments[{i}] ({name or 'unnamed'}): Content is not base64, so it was not stored")
            listed.append(PostmarkAttachment(Name=name, ContentType=content_type, ContentID=content_id, readable=False))
            continue
        listed.append(
            PostmarkAttachment(Name=name, ContentType=content_type, ContentID=content_id, ContentLength=len(content))
        )
        decoded.append(
            messages.Attachment(
                name=name or f"attachment-{i + 1}",
                content_type=content_type or "application/octet-stream",
                content=content,
                content_id=content_id or None,
            )
        )
    return listed, decoded


def _sender(inbound: PostmarkInbound, payload: dict[str, Any]) -> str | None:
    """The first address a reply can go to: FromFull, From, then Reply-To and the From,
    Reply-To, Sender and Return-Path headers. Read before the fields are cut: a long display
    name may precede the address, and a cut address would be someone else's."""
    full = payload.get("FromFull")

    def uncut(value: Any) -> str:
        return _text(value, "", Repairs())

    candidates = [
        uncut(full.get("Email")) if isinstance(full, dict) else "",
        uncut(payload.get("From")),
        uncut(payload.get("ReplyTo")),
        *(inbound.header(h) for h in ("From", "Reply-To", "Sender", "Return-Path")),
    ]
    return next((a for c in candidates if c and (a := usable_address(c))), None)


def read(payload: dict[str, Any], repairs: Repairs) -> tuple[PostmarkInbound, list[messages.Attachment]]:
    """The cleaned payload (see clean_json) as a PostmarkInbound, and its decoded attachments."""

    def text(name: str, limit: int | None = OTHER_FIELD_LIMIT) -> str:
        return _text(payload.get(name), name, repairs, LIMITS.get(name, limit))

    headers, unread = _headers(payload.get("Headers"), repairs)
    listed, decoded = decode_attachments(payload.get("Attachments"), repairs)

    def addresses(name: str) -> list[PostmarkAddress]:
        found = (_address(a, f"{name}[{i}]", repairs) for i, a in enumerate(_entries(payload.get(name), name, repairs)))
        return [a for a in found if a is not None]

    date = text("Date")
    parsed = parse_date(date)
    inbound = PostmarkInbound(
        **{name: text(name) for name in ("From", "FromName", "To", "Cc", "Bcc", "OriginalRecipient", "ReplyTo")},
        FromFull=_address(payload.get("FromFull"), "FromFull", repairs),
        ToFull=addresses("ToFull"),
        CcFull=addresses("CcFull"),
        BccFull=addresses("BccFull"),
        Subject=text("Subject"),
        MessageID=text("MessageID").strip(),
        Date=date,
        DateParsed=parsed.isoformat() if parsed else None,
        MailboxHash=text("MailboxHash"),
        **{name: text(name, None) for name in ("TextBody", "HtmlBody", "StrippedTextReply", "RawEmail")},
        Tag=text("Tag"),
        Headers=headers,
        UnreadHeaders=unread,
        Attachments=listed,
        MessageStream=text("MessageStream"),
    )
    inbound.sender = _sender(inbound, payload)
    return inbound, decoded
