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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Literal

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from pydantic import BaseModel

from support_worker.core.settings import Settings
from support_worker.store.audit_actions import AuditAction
from support_worker.store.postgres import keep_no_session_state, reaching, resolve_database_url
from support_worker.store.schema import check_schema_current
from support_worker.store.urls import connect_options, direct_url

logger = logging.getLogger("support_worker.db")


Tier = Literal["free", "pro", "enterprise"]
# Anything that can run a query: the pool, or a connection acquired from it (for transactions).
Executor = asyncpg.Pool | asyncpg.Connection | PoolConnectionProxy
RequestStatus = Literal["pending", "approved", "rejected", "expired", "withdrawn"]
# The orders table's CHECK, mirrored: a status outside it fails here as it would in Postgres.
OrderStatus = Literal["paid", "shipped", "delivered", "failed", "cancelled"]
# Customers are named by text ids ("c-4429"), as the systems that send our events name them.
CustomerId = str

# --------------------------------------------------------------------------- models


class Customer(BaseModel):
    id: CustomerId
    email: str
    name: str
    tier: Tier


class Order(BaseModel):
    id: int
    customer_id: CustomerId
    description: str
    amount_cents: int
    status: OrderStatus
    refunded_cents: int
    created_at: str

    @property
    def refundable_cents(self) -> int:
        return self.amount_cents - self.refunded_cents


class RefundRequest(BaseModel):
    id: str
    customer_id: CustomerId
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
    approvals_needed: int = 1  # distinct reviewers who must approve (four eyes: 2)
    seconds_left: float = 0.0  # until expires_at, by the database's clock; negative once expired

    @property
    def payable_cents(self) -> int:
        """What approval pays: the reviewer's lowered amount, or the requested one."""
        return self.approved_amount_cents or self.amount_cents


class Refund(BaseModel):
    id: int
    request_id: str | None
    customer_id: CustomerId
    order_id: int
    amount_cents: int
    reason: str


class AuditEntry(BaseModel):
    id: int
    at: str
    run_id: str | None
    customer_id: CustomerId | None
    action: AuditAction
    detail: dict[str, Any]
    idempotency_key: str | None


# --------------------------------------------------------------------------- connection


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(
    settings: Settings, *, max_size: int | None = None, reset_sessions: bool = True
) -> asyncpg.Pool:
    """Create the one pool the app uses for its whole life.

    It never migrates or seeds (`support-worker migrate` / `seed` do); it refuses a database
    whose schema is behind this code, with the command to run, instead of failing later on a
    missing table. `reset_sessions=False` is for the host, whose code keeps no session state
    (`store.postgres.keep_no_session_state`); other pools (the CLI's, the tests') keep asyncpg's reset.
    """
    dsn, options = connect_options(resolve_database_url(settings))
    size = max_size or settings.db_pool_max_size
    async with reaching(dsn):
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min(settings.db_pool_min_size, size),
            max_size=size,
            init=_init_connection,
            reset=None if reset_sessions else keep_no_session_state,
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
    async with reaching(dsn):
        return await asyncpg.connect(dsn, **options)


# --------------------------------------------------------------------------- reads


def iso(value: datetime) -> str:
    return value.isoformat()


@asynccontextmanager
async def transaction(pool: asyncpg.Pool) -> AsyncIterator[PoolConnectionProxy]:
    """One connection in one transaction: writes inside stand or fall together."""
    async with pool.acquire() as conn, conn.transaction():
        yield conn


async def get_customer(pool: Executor, *, customer_id: CustomerId) -> Customer | None:
    row = await pool.fetchrow("SELECT id, email, name, tier FROM customers WHERE id = $1", customer_id)
    return Customer(**dict(row)) if row else None


async def find_customer_by_email(pool: Executor, *, email: str) -> Customer | None:
    row = await pool.fetchrow(
        "SELECT id, email, name, tier FROM customers WHERE lower(email) = lower($1)", email.strip()
    )
    return Customer(**dict(row)) if row else None


async def list_customers(pool: Executor, *, tiers: list[str] | None = None) -> list[Customer]:
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
    data["created_at"] = iso(data["created_at"])
    data["refunded_cents"] = int(data["refunded_cents"])
    return Order(**data)


async def list_orders(pool: Executor, *, customer_id: CustomerId) -> list[Order]:
    rows = await pool.fetch(_ORDER_SELECT + " WHERE o.customer_id = $1 ORDER BY o.id", customer_id)
    return [_order(r) for r in rows]


async def get_order(pool: Executor, *, order_id: int) -> Order | None:
    row = await pool.fetchrow(_ORDER_SELECT + " WHERE o.id = $1", order_id)
    return _order(row) if row else None


async def lock_order(conn: Executor, *, order_id: int) -> None:
    """Hold the order's row until the transaction ends, so refunds on it queue up."""
    await conn.execute("SELECT id FROM orders WHERE id = $1 FOR UPDATE", order_id)


# Every read of a request also says how long it has left, by the database's clock.
_REQUEST_COLUMNS = "*, EXTRACT(EPOCH FROM expires_at - now())::float8 AS seconds_left"


def request_from_row(row: asyncpg.Record | dict[str, Any]) -> RefundRequest:
    data = dict(row)
    data["created_at"] = iso(data["created_at"])
    data["expires_at"] = iso(data["expires_at"])
    data.pop("decided_at", None)
    return RefundRequest(**data)


async def get_refund_request(pool: Executor, *, request_id: str) -> RefundRequest | None:
    row = await pool.fetchrow(f"SELECT {_REQUEST_COLUMNS} FROM refund_requests WHERE id = $1", request_id)
    return request_from_row(row) if row else None


async def lock_refund_request(conn: Executor, *, request_id: str) -> RefundRequest | None:
    """Read a request and hold its row until the transaction ends, so deciders queue up."""
    row = await conn.fetchrow(f"SELECT {_REQUEST_COLUMNS} FROM refund_requests WHERE id = $1 FOR UPDATE", request_id)
    return request_from_row(row) if row else None


async def lock_refund_request_for_call(conn: Executor, *, run_id: str, tool_call_id: str) -> RefundRequest | None:
    row = await conn.fetchrow(
        f"SELECT {_REQUEST_COLUMNS} FROM refund_requests WHERE run_id = $1 AND tool_call_id = $2 FOR UPDATE",
        run_id,
        tool_call_id,
    )
    return request_from_row(row) if row else None


async def find_pending_request(pool: Executor, *, customer_id: CustomerId, order_id: int) -> RefundRequest | None:
    row = await pool.fetchrow(
        f"SELECT {_REQUEST_COLUMNS} FROM refund_requests WHERE customer_id = $1 AND order_id = $2"
        " AND status = 'pending' ORDER BY created_at DESC LIMIT 1",
        customer_id,
        order_id,
    )
    return request_from_row(row) if row else None


_REFUND_COLUMNS = "id, request_id, customer_id, order_id, amount_cents, reason"


async def list_refunds(pool: Executor, *, order_id: int | None = None) -> list[Refund]:
    rows = await pool.fetch(
        f"SELECT {_REFUND_COLUMNS} FROM refunds WHERE $1::bigint IS NULL OR order_id = $1 ORDER BY id", order_id
    )
    return [Refund(**dict(r)) for r in rows]


async def refunds_for_requests(pool: Executor, *, request_ids: list[str]) -> list[Refund]:
    rows = await pool.fetch(
        f"SELECT {_REFUND_COLUMNS} FROM refunds WHERE request_id = ANY($1::text[]) ORDER BY id", request_ids
    )
    return [Refund(**dict(r)) for r in rows]


async def refund_for_request(conn: Executor, *, request_id: str) -> Refund | None:
    row = await conn.fetchrow(f"SELECT {_REFUND_COLUMNS} FROM refunds WHERE request_id = $1", request_id)
    return Refund(**dict(row)) if row else None


async def list_audit(
    pool: Executor,
    *,
    customer_id: CustomerId | None = None,
    run_id: str | None = None,
    action: AuditAction | None = None,
    after_id: int = 0,
) -> list[AuditEntry]:
    rows = await pool.fetch(
        "SELECT id, at, run_id, customer_id, action, detail, idempotency_key FROM audit_log"
        " WHERE ($1::text IS NULL OR customer_id = $1) AND ($2::text IS NULL OR run_id = $2)"
        " AND ($3::text IS NULL OR action = $3) AND id > $4 ORDER BY id",
        customer_id,
        run_id,
        action.value if action else None,
        after_id,
    )
    entries = []
    for r in rows:
        data = dict(r)
        data["at"] = iso(data["at"])
        entries.append(AuditEntry(**data))
    return entries


async def audit_run_id(pool: Executor, *, idempotency_key: str) -> str | None:
    """The run that wrote the row with this key, if any."""
    value = await pool.fetchval("SELECT run_id FROM audit_log WHERE idempotency_key = $1", idempotency_key)
    return str(value) if value is not None else None


async def run_has_action(pool: Executor, *, run_id: str, action: AuditAction) -> bool:
    return bool(
        await pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM audit_log WHERE run_id = $1 AND action = $2)", run_id, action.value
        )
    )


# --------------------------------------------------------------------------- writes


async def record_audit(
    conn: Executor,
    *,
    action: AuditAction,
    run_id: str | None,
    customer_id: CustomerId | None,
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


async def insert_refund_request(
    conn: Executor,
    *,
    customer_id: CustomerId,
    order_id: int,
    amount_cents: int,
    reason: str,
    customer_message: str,
    run_id: str,
    tool_call_id: str,
    ttl_seconds: float,
    approvals_needed: int = 1,
) -> tuple[RefundRequest, bool]:
    """A pending request for a paused refund call, once per (run, tool call).

    The id is generated here, on the server; a redelivered call gets the request the first
    delivery made and `created` False.
    """
    row = await conn.fetchrow(
        "INSERT INTO refund_requests (id, customer_id, order_id, amount_cents, reason,"
        " customer_message, run_id, tool_call_id, expires_at, approvals_needed)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now() + make_interval(secs => $9), $10)"
        f" ON CONFLICT (run_id, tool_call_id) DO NOTHING RETURNING {_REQUEST_COLUMNS}",
        f"rr_{uuid.uuid4().hex}",
        customer_id,
        order_id,
        amount_cents,
        reason,
        customer_message,
        run_id,
        tool_call_id,
        float(ttl_seconds),
        approvals_needed,
    )
    if row is not None:
        return request_from_row(row), True
    existing = await lock_refund_request_for_call(conn, run_id=run_id, tool_call_id=tool_call_id)
    if existing is None:
        raise RuntimeError(f"refund request for {run_id}/{tool_call_id} conflicted but is missing")
    return existing, False


async def set_refund_decision(
    conn: Executor,
    *,
    request_id: str,
    status: RequestStatus,
    reviewer: str,
    note: str | None,
    decision_id: str,
    approved_amount_cents: int | None,
    edited_reply: str | None,
) -> RefundRequest:
    row = await conn.fetchrow(
        "UPDATE refund_requests SET status = $2, reviewer = $3, note = $4, decision_id = $5,"
        " approved_amount_cents = $6, edited_reply = $7, decided_at = now()"
        f" WHERE id = $1 RETURNING {_REQUEST_COLUMNS}",
        request_id,
        status,
        reviewer,
        note,
        decision_id,
        approved_amount_cents,
        edited_reply,
    )
    if row is None:
        raise RuntimeError(f"refund request {request_id} disappeared while locked")
    return request_from_row(row)


async def expire_refund_request(pool: Executor, *, request_id: str) -> RefundRequest | None:
    """Mark a still-pending request expired; None when it was no longer pending."""
    row = await pool.fetchrow(
        "UPDATE refund_requests SET status = 'expired', decided_at = now()"
        f" WHERE id = $1 AND status = 'pending' RETURNING {_REQUEST_COLUMNS}",
        request_id,
    )
    return request_from_row(row) if row else None


async def insert_refund(conn: Executor, *, request: RefundRequest) -> Refund:
    """The refund for an approved request, under the request's unique key."""
    row = await conn.fetchrow(
        "INSERT INTO refunds (idempotency_key, request_id, customer_id, order_id, amount_cents, reason)"
        f" VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_REFUND_COLUMNS}",
        f"request:{request.id}",
        request.id,
        request.customer_id,
        request.order_id,
        request.payable_cents,
        request.reason,
    )
    if row is None:
        raise RuntimeError(f"inserting the refund for {request.id} returned nothing")
    return Refund(**dict(row))


async def ping(pool: asyncpg.Pool, *, within_seconds: float) -> None:
    """`SELECT 1` within `within_seconds`, or an exception saying why not."""
    await pool.fetchval("SELECT 1", timeout=within_seconds)


async def audit_detail(pool: Executor, *, idempotency_key: str) -> dict[str, Any] | None:
    """The detail of the row written under this key, if any: what a repeated write stored."""
    value = await pool.fetchval("SELECT detail FROM audit_log WHERE idempotency_key = $1", idempotency_key)
    return dict(value) if value is not None else None


