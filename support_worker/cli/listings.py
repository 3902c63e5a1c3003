"""The CLI's read-only listings: `list`, `pending`, `audit` and `audit verify`.

Each prints a table, or JSON with `--json`, through `print_rows`. Nothing here writes;
`cli.main` parses the arguments and dispatches to these.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import db
from support_worker.core.money import format_money
from support_worker.core.settings import Settings
from support_worker.store import escalations as escalation_store
from support_worker.store import ledger, reviews


def print_rows(rows: list[dict[str, Any]], *, as_json: bool, empty: str) -> None:
    """One output format for every listing: a JSON array, or aligned columns."""
    if as_json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    if not rows:
        print(empty)
        return
    columns = list(rows[0])
    cells = [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for line in cells:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())


def _cell(value: Any, limit: int = 100) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def pending(settings: Settings, args: argparse.Namespace) -> int:
    async with db.open_pool(settings, max_size=1) as pool:
        waiting = await reviews.list_pending_reviews(pool)
        escalated = await escalation_store.list_pending_escalations(pool)
    rows = [
        {
            "kind": "refund",
            "request": r.request.id,
            "customer": r.request.customer_id,
            "name": r.customer_name,
            "order": r.request.order_id,
            "amount": format_money(r.request.amount_cents),
            "left": f"{r.seconds_left // 60} min",
            "reason": r.request.reason,
        }
        for r in waiting
    ]
    rows += [
        {
            "kind": "escalation",
            "request": e.id,
            "customer": e.customer_id,
            "name": name,
            "order": "-",
            "amount": "-",
            "left": f"{int(e.seconds_left) // 60} min",
            "reason": f"[{e.urgency}] {e.reason}",
        }
        for e, name in escalated
    ]
    print_rows(rows, as_json=args.json, empty="No refunds or escalations are waiting for review.")
    return 0


async def audit(settings: Settings, args: argparse.Namespace) -> int:
    if args.check == "verify":
        return await audit_verify(settings)
    action = db.AuditAction(args.action) if args.action else None
    async with db.open_pool(settings, max_size=1) as pool:
        entries = await db.list_audit(pool, customer_id=args.customer, run_id=args.run, action=action)
    rows = [
        {
            "at": e.at[:19],
            "run": e.run_id or "-",
            "customer": e.customer_id,
            "action": e.action.value,
            "detail": e.detail,
        }
        for e in entries
    ]
    print_rows(rows, as_json=args.json, empty="No audit rows match.")
    return 0


async def audit_verify(settings: Settings) -> int:
    """Recompute the hash chain; exit 1 naming the first row that does not match."""
    async with db.open_pool(settings, max_size=1) as pool:
        report = await ledger.verify_chain(pool)
    broken = report.broken
    if broken is None:
        print(f"audit chain verified: {report.verified} rows; head sha256 {report.head_hash or '(empty chain)'}")
        return 0
    where = f"audit row {broken.audit_id} (position {broken.chain_seq})" if broken.audit_id else "the chain head"
    print(f"audit chain broken at {where}: {broken.why}. {report.verified} rows verified before it.")
    print("Compare with a backup or the database's own logs to see what changed; do not write over the row.")
    return 1


async def list_customers(settings: Settings, args: argparse.Namespace) -> int:
    async with db.open_pool(settings, max_size=1) as pool:
        rows = []
        for customer in await db.list_customers(pool):
            orders = await db.list_orders(pool, customer_id=customer.id)
            summary = ", ".join(f"#{o.id} {format_money(o.amount_cents)} {o.status}" for o in orders)
            rows.append({"customer": customer.id, "name": customer.name, "tier": customer.tier, "orders": summary})
    print_rows(rows, as_json=args.json, empty="No customers yet: run support-worker seed for the sample data.")
    return 0
