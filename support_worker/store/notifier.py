"""What the reviewer notifier's audit trail says about its configuration (notify.py)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from db import AuditAction, Executor


class Misconfiguration(BaseModel):
    why: str
    at: datetime


async def latest_misconfiguration(conn: Executor) -> Misconfiguration | None:
    """The latest `notifier_misconfigured` row, unless a notification was delivered since."""
    row = await conn.fetchrow(
        """
        SELECT detail->>'why' AS why, at FROM audit_log a
        WHERE action = $1
          AND NOT EXISTS (SELECT 1 FROM audit_log d WHERE d.action = $2 AND d.at > a.at)
        ORDER BY at DESC LIMIT 1
        """,
        AuditAction.NOTIFIER_MISCONFIGURED.value,
        AuditAction.REVIEWER_NOTIFIED.value,
    )
    return Misconfiguration(why=row["why"] or "", at=row["at"]) if row else None


async def misconfiguration_recorded(conn: Executor, *, key: str) -> bool:
    """Whether this request's notice already met a misconfigured webhook (never post twice)."""
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM audit_log WHERE idempotency_key = $1)", key))


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
