"""The reply is a draft (003 D3, D8): saved once per run with an `email_drafted` row, and sent
only when Postmark's outbound API is configured, at most once per draft, in the customer's
thread, audited `reply_sent` with Postmark's MessageID.

Engine-free, like the rest of `workflows/`. Postmark's answers get the handling its API
documentation gives them (https://postmarkapp.com/developer/api/overview#error-codes): a 5xx or
a 429 is raised, so the engine retries the step; any other refusal (422 with an ErrorCode such
as 406, "inactive recipient"; 401 for a bad token) will not change on a retry, so it is recorded
once as `reply_send_failed` with Postmark's ErrorCode and Message, and the draft stays on the desk.
"""

from __future__ import annotations

from typing import Any, Literal

import asyncpg
import httpx
from pydantic import BaseModel

import db
from support_worker.core.settings import Settings
from support_worker.store import drafts as store

POSTMARK_TIMEOUT_SECONDS = 20


class SaveDraft(BaseModel):
    """What a run drafts: the reply (already through the reply guard) and where it goes."""

    run_id: str
    customer_id: str
    to_email: str
    subject: str
    body: str
    answering: list[str] = []  # the stored messages this reply answers, for threading
    thread_key: str | None = None
    detail: dict[str, Any] = {}  # what the email_drafted row says besides the draft id


async def save_draft(pool: asyncpg.Pool, draft: SaveDraft) -> tuple[store.StoredDraft, dict[str, Any]]:
    """The run's draft and its `email_drafted` row, together and once per run: a repeat (a
    retried step, a redelivered call) gets the first draft and the row's detail as written."""
    in_reply_to, references, sender = await store.threading_of(pool, message_ids=draft.answering)
    key = f"email_drafted:{draft.run_id}"
    async with db.transaction(pool) as conn:
        saved, created = await store.insert_draft(
            conn,
            run_id=draft.run_id,
            customer_id=draft.customer_id,
            to_email=sender or draft.to_email,
            subject=draft.subject,
            body=draft.body,
            in_reply_to=in_reply_to,
            references=references,
            thread_key=draft.thread_key,
        )
        detail = {"draft_id": saved.id, **draft.detail}
        if created:
            await db.record_audit(
                conn,
                action=db.AuditAction.EMAIL_DRAFTED,
                run_id=draft.run_id,
                customer_id=draft.customer_id,
                detail=detail,
                idempotency_key=key,
            )
    if not created:
        detail = await db.audit_detail(pool, idempotency_key=key) or detail
    return saved, detail


def reply_subject(subject: str | None) -> str:
    """`Re: <their subject>`, as mail clients thread it (never `Re: Re: …`)."""
    text = (subject or "").strip() or "Your message"
    return text if text.lower().startswith("re:") else f"Re: {text}"


# --------------------------------------------------------------------------- sending


class Sent(BaseModel):
    """What became of sending one draft."""

    draft_id: str
    status: Literal["sent", "send_failed", "not_configured"]
    message_id: str | None = None  # Postmark's MessageID
    error_code: int | None = None
    why: str | None = None


class PostmarkUnavailable(Exception):
    """Postmark answered 5xx or 429, or could not be reached: the step retries (Postmark says
    to retry these later). `retry_after` is Postmark's Retry-After, when it sent one."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def sending_configured(settings: Settings) -> bool:
    return bool(settings.postmark_server_token and settings.reply_from_email)


def postmark_email(settings: Settings, draft: store.StoredDraft) -> dict[str, Any]:
    """The body of Postmark's `POST /email` for a draft: a plain-text reply in the thread."""
    headers = []
    if draft.in_reply_to:
        headers.append({"Name": "In-Reply-To", "Value": draft.in_reply_to})
        headers.append({"Name": "References", "Value": draft.references or draft.in_reply_to})
    return {
        "From": settings.reply_from_email,
        "To": draft.to_email,
        "Subject": draft.subject,
        "TextBody": draft.body,
        "Headers": headers,
        "Metadata": {"draft_id": draft.id, "run_id": draft.run_id},
        "MessageStream": settings.postmark_message_stream,
    }


async def send_draft(pool: asyncpg.Pool, settings: Settings, *, draft_id: str) -> Sent:
    """Send a draft through Postmark at most once (a sent or refused draft is never sent
    again, whoever asks), then record the outcome and its one audit row."""
    draft = await store.get_draft(pool, draft_id=draft_id)
    if draft is None:
        raise LookupError(f"draft {draft_id} does not exist")
    if draft.status != "drafted":
        return _outcome(draft)
    if not sending_configured(settings):
        return Sent(draft_id=draft_id, status="not_configured", why="POSTMARK_SERVER_TOKEN or REPLY_FROM_EMAIL unset")
    if not await store.claim_for_sending(pool, draft_id=draft_id):
        current = await store.get_draft(pool, draft_id=draft_id)
        if current is not None and current.status != "drafted":
            return _outcome(current)
        raise PostmarkUnavailable(f"another attempt is sending draft {draft_id}; retrying after it")
    try:
        answer = await _post(settings, postmark_email(settings, draft))
    except PostmarkUnavailable:
        await store.release(pool, draft_id=draft_id)
        raise
    async with db.transaction(pool) as conn:
        current = await store.get_draft(conn, draft_id=draft_id, lock=True)
        if current is None or current.status != "drafted":  # another copy of this step got there first
            return _outcome(current or draft)
        if answer.get("ErrorCode") == 0 and answer.get("MessageID"):
            await store.mark_sent(conn, draft_id=draft_id, provider_message_id=str(answer["MessageID"]))
            action, detail = db.AuditAction.REPLY_SENT, {"draft_id": draft_id, "message_id": answer["MessageID"]}
        else:
            failure = {"error_code": answer.get("ErrorCode"), "message": answer.get("Message"), "http": answer["_http"]}
            await store.mark_failed(conn, draft_id=draft_id, failure=failure)
            action, detail = db.AuditAction.REPLY_SEND_FAILED, {"draft_id": draft_id, **failure}
        await db.record_audit(
            conn,
            action=action,
            run_id=draft.run_id,
            customer_id=draft.customer_id,
            detail=detail | {"to": draft.to_email},
            idempotency_key=f"{action.value}:{draft_id}",
        )
        stored = await store.get_draft(conn, draft_id=draft_id)
    return _outcome(stored or draft)


def _outcome(draft: store.StoredDraft) -> Sent:
    if draft.status == "sent":
        return Sent(draft_id=draft.id, status="sent", message_id=draft.provider_message_id)
    if draft.status == "send_failed":
        failure = draft.failure or {}
        code, why = failure.get("error_code"), failure.get("message")
        return Sent(draft_id=draft.id, status="send_failed", error_code=code, why=why)
    return Sent(draft_id=draft.id, status="not_configured", why="not sent")


async def _post(settings: Settings, email: dict[str, Any]) -> dict[str, Any]:
    """POST one email; Postmark's JSON answer (with `_http`, the status), or PostmarkUnavailable."""
    token = settings.postmark_server_token.get_secret_value() if settings.postmark_server_token else ""
    headers = {"Accept": "application/json", "Content-Type": "application/json", "X-Postmark-Server-Token": token}
    url = f"{settings.postmark_api_url.rstrip('/')}/email"
    try:
        async with httpx.AsyncClient(timeout=POSTMARK_TIMEOUT_SECONDS) as http:
            response = await http.post(url, json=email, headers=headers)
    except httpx.HTTPError as error:
        raise PostmarkUnavailable(f"Postmark unreachable: {type(error).__name__}: {error}") from error
    if response.status_code >= 500 or response.status_code == 429:
        retry_after = response.headers.get("retry-after")
        raise PostmarkUnavailable(
            f"Postmark answered {response.status_code}: {response.text[:300]}",
            retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None,
        )
    try:
        answer = response.json()
    except ValueError:
        answer = {"ErrorCode": None, "Message": response.text[:300]}
    if not isinstance(answer, dict):
        answer = {"ErrorCode": None, "Message": str(answer)[:300]}
    if response.status_code != 200 and answer.get("ErrorCode") == 0:
        answer["ErrorCode"] = None  # an error status is never a success, whatever the body says
    return answer | {"_http": response.status_code}
