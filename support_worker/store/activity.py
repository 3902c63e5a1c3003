"""The morning health check's queries: a customer's recent activity, who was contacted
lately, and the fan-out's counts and keyset-paginated batches."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from db import CustomerId, Executor, iso


async def recently_contacted(pool: Executor, *, days: int, as_of: datetime | None = None) -> set[CustomerId]:
    """Customers who got a reply (drafted or sent) or an outreach note in the `days` days before `as_of`
    (default now), so a late or replayed tick for a past day gives the same answer."""
    rows = await pool.fetch(
        "SELECT DISTINCT customer_id FROM audit_log"
        " WHERE action IN ('email_drafted', 'reply_sent', 'outreach_recorded')"
        " AND customer_id IS NOT NULL AND at >= COALESCE($2, now()) - make_interval(days => $1)"
        " AND at < COALESCE($2, now())",
        days,
        as_of,
    )
    return {str(r["customer_id"]) for r in rows}


class Activity(BaseModel):
    """A customer's recent history, as the health check reads it."""

    customer_id: CustomerId
    since: str
    emails: int
    replies: int
    unanswered: int
    refunds_issued: int
    refunded_cents: int
    refunds_blocked: int
    last_email_at: str | None


async def customer_activity(pool: Executor, *, customer_id: CustomerId, days: int = 30) -> Activity:
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
               count(*) FILTER (WHERE action = 'email_drafted') AS replies,  -- one draft per answered run
               count(*) FILTER (WHERE action = 'refund_blocked') AS refunds_blocked,
               max(at) FILTER (WHERE action = 'message_received') AS last_email_at,
               count(*) FILTER (
                   WHERE action = 'message_received' AND at < now() - interval '1 hour'
                   AND NOT EXISTS (
                       SELECT 1 FROM audit_log done WHERE done.run_id = recent.run_id
                       AND done.action IN ('email_drafted', 'event_duplicate', 'run_failed')
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
        since=iso(row["since"]),
        emails=int(row["emails"]),
        replies=int(row["replies"]),
        unanswered=int(row["unanswered"]),
        refunds_issued=int(row["refunds_issued"]),
        refunded_cents=int(row["refunded_cents"]),
        refunds_blocked=int(row["refunds_blocked"]),
        last_email_at=iso(row["last_email_at"]) if row["last_email_at"] else None,
    )


_NOT_CONTACTED = """
    NOT EXISTS (
        SELECT 1 FROM audit_log a
        WHERE a.customer_id = c.id AND a.action IN ('email_drafted', 'reply_sent', 'outreach_recorded')
          AND a.at >= $3::timestamptz - make_interval(days => $2) AND a.at < $3::timestamptz
    )
"""


class FanOutCounts(BaseModel):
    eligible: int
    skipped_free: int
    skipped_contacted: int


async def health_check_counts(pool: Executor, *, tiers: list[str], days: int, as_of: datetime) -> FanOutCounts:
    """How many customers the morning check covers and why the rest are left out, as of the
    tick's day (contacts after `as_of` do not count, so a replayed tick answers the same)."""
    row = await pool.fetchrow(
        f"""
        SELECT count(*) FILTER (WHERE c.tier = ANY($1::text[]) AND {_NOT_CONTACTED}) AS eligible,
               count(*) FILTER (WHERE NOT c.tier = ANY($1::text[])) AS skipped_free,
               count(*) FILTER (WHERE c.tier = ANY($1::text[]) AND NOT {_NOT_CONTACTED}) AS skipped_contacted
        FROM customers c
        """,
        tiers,
        days,
        as_of,
    )
    if row is None:
        raise RuntimeError("the fan-out count returned no row")
    return FanOutCounts(**{k: int(v) for k, v in dict(row).items()})


async def health_check_batch(
    pool: Executor, *, tiers: list[str], days: int, as_of: datetime, after_id: CustomerId, limit: int
) -> list[CustomerId]:
    """The next `limit` eligible customer ids after `after_id` (keyset pagination: each
    chunk loads its own slice, so no list of ids ever rides in the memo)."""
    rows = await pool.fetch(
        f"SELECT c.id FROM customers c WHERE c.tier = ANY($1::text[]) AND c.id > $4 AND {_NOT_CONTACTED}"
        " ORDER BY c.id LIMIT $5",
        tiers,
        days,
        as_of,
        after_id,
        limit,
    )
    return [str(r["id"]) for r in rows]
