"""`support-worker approve | reject | edit`: a reviewer's decision, through the same path as the desk."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import db
from support_worker.cli import sending
from support_worker.core import events
from support_worker.core.settings import Settings
from support_worker.doors import desk
from support_worker.workflows import decisions, escalations


async def decide(settings: Settings, args: argparse.Namespace, *, approved: bool) -> int:
    unsent: list[Exception] = []

    async def announce(data: dict[str, Any]) -> None:
        try:
            await sending.send(settings, events.APPROVAL_DECIDED, str(data["decision_id"]), data)
        except Exception as error:
            unsent.append(error)
            raise

    try:
        amount_cents = desk.parse_dollars(args.amount or "") if approved else None
    except ValueError as error:
        print(f"--amount {args.amount!r}: {error}", file=sys.stderr)
        return 2
    decision = decisions.Decision(
        request_id=args.request_id,
        approved=approved,
        reviewer=args.reviewer,
        note=args.note,
        amount_cents=amount_cents,
        reply=args.reply,
    )
    async with db.open_pool(settings, max_size=1) as pool:
        outcome, _ = await decisions.submit_decision(pool, decision, announce=announce, via="cli")
    said = desk.describe_outcome(outcome, announced=True)
    if outcome.applied and unsent:
        said = (
            f"{said[:-1]}; recorded, and it will be delivered: the waiting run re-reads Postgres every "
            f"{settings.decision_recheck_minutes} minutes (DECISION_RECHECK_MINUTES), and the engine could "
            f"not be told now: {sending.unsent(settings, unsent[0])}"
        )
    print(said)
    return 0 if outcome.applied else 1


async def decide_escalation(settings: Settings, args: argparse.Namespace) -> int:
    """`approve|edit|reject esc_…`: record the decision, announce it to the waiting run; with
    no engine to tell (the terminal runner), settle it here: the post is idempotent either way."""

    async def announce(data: dict[str, Any]) -> None:
        await sending.send(settings, events.ESCALATION_DECIDED, str(data["decision_id"]), data)

    decision = escalations.Decision.model_validate(
        {
            "request_id": args.request_id,
            "decision": args.command,
            "reviewer": args.reviewer,
            "edited_text": getattr(args, "text", None),
        }
    )
    async with db.open_pool(settings, max_size=1) as pool:
        outcome, announced = await escalations.submit_decision(pool, decision, announce=announce, via="cli")
        print(desk.describe_escalation_outcome(outcome, announced))
        if outcome.applied and not announced:
            settled = await escalations.settle(pool, settings, escalation_id=args.request_id, time_is_up=False)
            where = "posted to the senior support channel" if settled.posted else "not posted"
            print(f"Settled here (no engine answered): {settled.status}, {where}.")
    return 0 if outcome.applied else 1
