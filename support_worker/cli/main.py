"""`support-worker`: the one command line for people running the service.

    support-worker up                      # database, host and (when it can) the dev server
    support-worker answer --customer c-4429 "I was charged twice for order 1003"   # no engine
    support-worker migrate                 # apply pending migrations/*.sql (the only thing that migrates)
    support-worker seed                    # five sample customers, into an empty database
    support-worker send-email --customer c-4429 "I was charged twice for order 1003"
    support-worker list                    # customers and their orders
    support-worker pending                 # refunds waiting for a reviewer
    support-worker approve rr_... --reviewer you@example.com [--note ...]
    support-worker reject rr_... --reviewer you@example.com [--note ...]
    support-worker audit [--customer c-4429] [--action refund_issued] [--run RUN_ID]
    support-worker audit verify            # recompute the audit trail's hash chain

`list`, `pending` and `audit` print a table, or JSON with `--json`. `python worker.py ...`
is the same program (its old flags map onto these commands).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import select
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

import httpx
import openai

import db
import inngest_app
from support_worker.cli import journal_view, listings
from support_worker.conversation import loop as conversation
from support_worker.core import events
from support_worker.core.money import format_money
from support_worker.core.settings import Settings, get_settings
from support_worker.doors import desk
from support_worker.ops import launcher
from support_worker.store import migrate, postgres, sample_data, schema
from support_worker.workflows import decisions, escalations, notify

DEV_SERVER_PORT = 8288


def _dev_server_url(settings: Settings) -> str:
    return launcher.dev_server_url(settings)


def _event_settings(settings: Settings) -> Settings:
    """Sending from the terminal targets the dev server unless Inngest Cloud keys are set."""
    if settings.inngest_event_key and not settings.inngest_dev_mode:
        return settings
    os.environ.setdefault("INNGEST_DEV", _dev_server_url(settings))
    return settings.model_copy(update={"inngest_dev": os.environ["INNGEST_DEV"]})


async def _send(settings: Settings, name: str, event_id: str, data: dict[str, Any]) -> list[str]:
    return await inngest_app.send_event(_event_settings(settings), name, event_id, data)


# How long `send-email` waits for the dev server to start a run, and how often it asks.
RUN_WAIT_SECONDS = 2.0
RUN_POLL_SECONDS = 0.2


async def _runs_started_by(base_url: str, event_ids: Sequence[str]) -> list[str] | None:
    """The ids of the runs the dev server started for these events (its REST API,
    `GET /v1/events/{id}/runs`), asked again until one appears or RUN_WAIT_SECONDS pass.
    None when the REST API does not answer, so the caller can say so instead of guessing."""
    deadline = time.monotonic() + RUN_WAIT_SECONDS
    async with httpx.AsyncClient(base_url=base_url, timeout=RUN_WAIT_SECONDS) as client:
        while True:
            runs: list[str] = []
            for event_id in event_ids:
                try:
                    res = await client.get(f"/v1/events/{event_id}/runs")
                    res.raise_for_status()
                    runs += [str(run["run_id"]) for run in res.json().get("data") or [] if run.get("run_id")]
                except (httpx.HTTPError, ValueError, AttributeError, TypeError):
                    return None
            if runs or time.monotonic() >= deadline:
                return runs
            await asyncio.sleep(RUN_POLL_SECONDS)


async def _print_runs(settings: Settings, event_ids: Sequence[str]) -> None:
    """Where to watch the email's run: its id and dashboard link, when a dev server answers."""
    if settings.inngest_event_key and not settings.inngest_dev_mode:
        print("  runs      see the Inngest Cloud dashboard (run ids are looked up on a dev server only)")
        return
    url = _dev_server_url(settings)
    runs = await _runs_started_by(url, event_ids)
    if runs is None:
        print(f"  runs      the dev server at {url} took the event but its REST API did not answer")
    elif not runs:
        print(f"  runs      none started within {RUN_WAIT_SECONDS:g} s; is the app synced? See {url}/runs")
    for run_id in runs or []:
        print(f"  run       {run_id}  {url}/run?runID={run_id}")


# --------------------------------------------------------------------------- commands


async def migrate_database(settings: Settings, args: argparse.Namespace) -> int:
    conn = await db.connect(settings)
    try:
        applied = await schema.migrate_database(conn)
    finally:
        await conn.close()
    print(f"migrated: applied {', '.join(applied)}" if applied else "migrated: nothing to apply, the schema is current")
    return 0


async def seed(settings: Settings, args: argparse.Namespace) -> int:
    if settings.environment != "development":
        print(
            "Not seeding: the sample customers are made up, and ENVIRONMENT is production. "
            "Seed a development database (ENVIRONMENT=development) instead.",
            file=sys.stderr,
        )
        return 1
    async with db.open_pool(settings, max_size=1) as pool:
        seeded = await sample_data.seed(pool)
    if seeded:
        first, last = sample_data.CUSTOMERS[0][0], sample_data.CUSTOMERS[-1][0]
        print(f"seeded: {len(sample_data.CUSTOMERS)} sample customers ({first} to {last}) with orders (ids from 1001)")
    else:
        print("seed: nothing to do, customers already has rows (sample data only goes into an empty database)")
    return 0


async def send_email(settings: Settings, args: argparse.Namespace) -> int:
    data: dict[str, Any] = {"body": args.body, "subject": args.subject}
    async with db.open_pool(settings, max_size=1) as pool:
        customer = (
            await db.get_customer(pool, customer_id=args.customer)
            if args.customer is not None
            else await db.find_customer_by_email(pool, email=args.from_email or "")
        )
    if customer is None:
        print("No such customer. List them with: python worker.py --list", file=sys.stderr)
        return 1
    data |= {"customer_id": customer.id, "tier": customer.tier}
    event_id = f"cli-{uuid.uuid4().hex}"
    target = _event_settings(settings)  # the dev server's URL as the send will use it
    try:
        internal_ids = await _send(target, events.EMAIL_RECEIVED, event_id, data)
    except Exception as error:
        print(f"Not sent: event {event_id}. {_unsent(target, error)}", file=sys.stderr)
        return 1
    print(f"sent {events.EMAIL_RECEIVED} {event_id} for {customer.name} (customer {customer.id})")
    print(f"  event id  {', '.join(internal_ids) or '(the event API returned none)'}")
    if settings.email_burst_seconds:  # the run below only records it; EMAIL_BURST_SECONDS
        print(f"  answer    about {settings.email_burst_seconds} s after the customer's last email, one for all")
    await _print_runs(target, internal_ids)
    return 0


def _unsent(settings: Settings, error: Exception) -> str:
    """Why an event could not be sent, and what to do about it, in one line."""
    if settings.inngest_event_key and not settings.inngest_dev_mode:
        return f"Inngest's event API could not take the event ({error}); check INNGEST_EVENT_KEY and the network."
    url = _dev_server_url(settings)
    command = " ".join(launcher.dev_server_command("http://127.0.0.1:8000"))
    return (
        f"No dev server answered at {url}: the Inngest dev server at {url} is unreachable ({error}); "
        f"start it (e.g. {command}) or set INNGEST_DEV."
    )


async def decide(settings: Settings, args: argparse.Namespace, *, approved: bool) -> int:
    unsent: list[Exception] = []

    async def announce(data: dict[str, Any]) -> None:
        try:
            await _send(settings, events.APPROVAL_DECIDED, str(data["decision_id"]), data)
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
            f"not be told now: {_unsent(settings, unsent[0])}"
        )
    print(said)
    return 0 if outcome.applied else 1


async def decide_escalation(settings: Settings, args: argparse.Namespace) -> int:
    """`approve|edit|reject esc_…`: record the decision, announce it to the waiting run; with
    no engine to tell (the terminal runner), settle it here: the post is idempotent either way."""

    async def announce(data: dict[str, Any]) -> None:
        await _send(settings, events.ESCALATION_DECIDED, str(data["decision_id"]), data)

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


async def answer(settings: Settings, args: argparse.Namespace) -> int:
    """Answer one email here, without a durable engine; refunds are decided at the prompt."""
    if not args.body.strip():
        print('The email is empty: give the customer\'s words, e.g. "I was charged twice".', file=sys.stderr)
        return 2
    model_note = (
        "offline rule-based model (no OPENAI_API_KEY set)" if settings.uses_offline_model else settings.openai_model
    )

    async def fixed(request: db.RefundRequest) -> decisions.Decision:
        return decisions.Decision(request_id=request.id, approved=args.approve, reviewer="command-line")

    print(f"(model: {model_note})")
    async with db.open_pool(settings) as pool:
        try:
            outcome = await conversation.answer_email(
                pool,
                customer_id=args.customer,
                body=args.body,
                subject=args.subject,
                decide=fixed if (args.approve or args.reject) else _ask_in_terminal,
                settings=settings,
            )
        except (LookupError, conversation.ModelUnavailable) as error:
            print(error, file=sys.stderr)
            return 1
    for g in outcome.gate:
        print(f"refund {g.request_id or '(none)'}: {g.status}")
    if outcome.escalation_id:
        await _announce_escalation(settings, outcome.escalation_id, outcome.escalation_reason or "")
    print("\n" + outcome.reply)
    print(f"\n(run {outcome.run_id}; its audit rows carry this run id)")
    return 0


async def _announce_escalation(settings: Settings, escalation_id: str, reason: str) -> None:
    """Hand the escalation to the engine's escalation function when a dev server answers; the
    event id makes a resend a no-op. Without one it waits on the desk and in `pending`."""
    print(f"escalated {escalation_id}: {reason}")
    try:
        await _send(settings, events.ESCALATION_REQUESTED, f"escalation-{escalation_id}", {"request_id": escalation_id})
        print("  sent customer/escalation.requested: reviewers are notified and the run waits for a decision")
    except Exception:
        print(f"  no dev server answered at {_dev_server_url(_event_settings(settings))}; the escalation waits")
    print(f"  decide with: support-worker approve|edit|reject {escalation_id} --reviewer you")


async def _ask_in_terminal(request: db.RefundRequest) -> decisions.Decision:
    print("\nRefund waiting for approval")
    print(f"  request  {request.id}\n  order    {request.order_id}\n  amount   {format_money(request.amount_cents)}")
    print(f"  reason   {request.reason}")
    reviewer = "terminal"
    if request.approvals_needed > 1:  # four eyes: each approval is asked for, with a name
        print(f"  needs    {request.approvals_needed} different reviewers (above REFUND_FOUR_EYES_CENTS)")
        reviewer = _prompt("Your name, for the record: ").strip() or "terminal"
    approved = _prompt("Approve this refund? [y/N] ").strip().lower() in {"y", "yes"}
    note = None if approved else _prompt("Note for the record (optional): ").strip() or None
    return decisions.Decision(request_id=request.id, approved=approved, reviewer=reviewer, note=note)


def _prompt(text: str) -> str:
    """`input()` that Ctrl-C, SIGTERM or a closed terminal (SIGHUP) interrupt at once.

    It blocks the event loop on purpose: nothing else runs while the person decides, and a
    thread blocked in `input()` would keep `asyncio.run` from returning after Ctrl-C. It reads
    with short `select` waits rather than one blocking read: a signal that lands between the
    prompt and the read would otherwise wait for the next key press (the read is only
    interrupted by a signal that arrives while it blocks). The terminal runner closes the
    request when this raises (`conversation._decide_here`).
    """
    stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, signal.default_int_handler) for sig in stops}
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
        return _read_line(sys.stdin.fileno())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _read_line(fd: int) -> str:
    """One line from `fd`, a byte at a time (no buffer to hide input from `select`), back in
    Python every 0.2 s so a pending signal's KeyboardInterrupt is raised; EOFError at the end."""
    line = bytearray()
    while True:
        if not select.select([fd], [], [], 0.2)[0]:
            continue
        byte = os.read(fd, 1)
        if not byte:
            if line:
                break
            raise EOFError
        if byte == b"\n":
            break
        line += byte
    return line.decode(errors="replace").rstrip("\r")


async def notifier_status(settings: Settings) -> str:
    """How reviewers hear about waiting refunds, and whether Slack last refused the webhook."""
    if not settings.reviewer_webhook_url:
        return "off (REVIEWER_WEBHOOK_URL is not set; refunds wait on the desk)"
    async with db.open_pool(settings, max_size=1) as pool:
        problem = await notify.configuration_problem(pool)
    return problem or "REVIEWER_WEBHOOK_URL is set"


def up(settings: Settings, args: argparse.Namespace) -> int:
    """Database, migrations and (in development) seed; the host; the dev server when it can be fetched."""

    async def prepare() -> str:
        where = "DATABASE_URL" if settings.database_url else f"embedded PostgreSQL in {settings.embedded_pg_dir}"
        await migrate_database(settings, args)
        notifications = f"\nreviewer notifications: {await notifier_status(settings)}"
        if settings.environment != "development":
            return f"{where} (migrated; no sample data outside ENVIRONMENT=development){notifications}"
        await seed(settings, args)
        return f"{where} (migrated, sample data seeded if empty){notifications}"

    return launcher.up(settings, args, prepare=prepare)


# --------------------------------------------------------------------------- parsing


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="support-worker", description=__doc__.split("\n\n")[0])
    commands = root.add_subparsers(dest="command", required=True)

    run_up = commands.add_parser("up", help="start the database, the host and the dev server")
    run_up.add_argument("--port", type=int, default=8000)
    run_up.add_argument("--no-dev-server", action="store_true", help="do not try to start the Inngest dev server")
    run_up.add_argument("--dev-server-wait", type=float, default=90, help="seconds to wait for the dev server")

    email = commands.add_parser("send-email", help="send a customer/email.received event")
    who = email.add_mutually_exclusive_group(required=True)
    who.add_argument("--customer")
    who.add_argument("--from", dest="from_email")
    email.add_argument("--subject")
    email.add_argument("body")

    for name, help_text in (
        ("approve", "approve a pending refund (rr_…) or escalation (esc_…)"),
        ("reject", "reject a pending refund (rr_…) or escalation (esc_…)"),
    ):
        decision = commands.add_parser(name, help=help_text)
        decision.add_argument("request_id")
        decision.add_argument("--reviewer", required=True, help="who decides (recorded in the audit trail)")
        decision.add_argument("--note")
        decision.add_argument("--reply", help="send this reply to the customer instead of the agent's")
        if name == "approve":
            decision.add_argument("--amount", help="approve a lower amount, in dollars (e.g. 12.34)")
        else:
            decision.set_defaults(amount=None)

    edit = commands.add_parser("edit", help="post your own text for a pending escalation (esc_…)")
    edit.add_argument("request_id")
    edit.add_argument("--reviewer", required=True, help="who decides (recorded in the audit trail)")
    edit.add_argument("--text", required=True, help="what the senior support channel gets instead of the draft")

    ask = commands.add_parser("answer", help="answer one email here, without the durable engine")
    ask.add_argument("--customer", required=True, help="customer id (see: support-worker list)")
    ask.add_argument("--subject")
    ask.add_argument("body", help="the customer's email text")
    verdict = ask.add_mutually_exclusive_group()
    verdict.add_argument("--approve", action="store_true", help="approve any refund without asking")
    verdict.add_argument("--reject", action="store_true", help="reject any refund without asking")

    listing = commands.add_parser("pending", help="list refunds and escalations waiting for a reviewer")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    customers = commands.add_parser("list", help="list customers and their orders")
    customers.add_argument("--json", action="store_true", help="print JSON instead of a table")
    commands.add_parser("migrate", help="apply pending database migrations (migrations/*.sql)")
    bench = commands.add_parser("bench", help="measure engine calls, bytes and latency against a bare endpoint")
    bench.add_argument("--quick", action="store_true", help="fewer samples (CI): the same counts and sizes")
    commands.add_parser("seed", help="insert sample customers and orders into an empty database (development only)")

    trail = commands.add_parser("audit", help="print the audit trail, or `audit verify` its hash chain")
    trail.add_argument("check", nargs="?", choices=["verify"], help="verify: recompute the hash chain")
    trail.add_argument("--customer")
    trail.add_argument("--action", choices=[a.value for a in db.AuditAction])
    trail.add_argument("--run")
    trail.add_argument("--json", action="store_true", help="print JSON instead of a table")
    journal_view.add_command(commands)
    return root


def worker_argv(argv: Sequence[str]) -> list[str]:
    """`support-worker-email` flags (the old `python worker.py` ones) as `support-worker`
    commands: `--list` is `list`, `--audit` is `audit`, and an email with `--customer` is `answer`."""
    args = list(argv)
    if "--list" in args or not args:
        return ["list"]
    if "--audit" in args:
        args.remove("--audit")
        return ["audit", *args]
    return ["answer", *args]


async def run_async(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "send-email":
        return await send_email(settings, args)
    if args.command in ("approve", "reject", "edit") and args.request_id.startswith("esc_"):
        return await decide_escalation(settings, args)
    if args.command == "edit":
        hint = f"for a refund use: support-worker approve {args.request_id} --reply"
        print(f"edit is for escalations (esc_…); {hint}", file=sys.stderr)
        return 2
    if args.command in ("approve", "reject"):
        return await decide(settings, args, approved=args.command == "approve")
    commands = {
        "pending": listings.pending,
        "audit": listings.audit,
        "list": listings.list_customers,
        "answer": answer,
        "migrate": migrate_database,
        "seed": seed,
        "run": journal_view.command,
    }
    return await commands[args.command](settings, args)


def run(argv: Sequence[str], settings: Settings | None = None) -> int:
    """Run one command; a failure a person can act on is one line on stderr, not a traceback."""
    args = parser().parse_args(argv)
    try:
        settings = settings or get_settings()
        if args.command == "up":
            return up(settings, args)
        if args.command == "bench":
            from support_worker.ops import bench  # a development tool: it needs the `dev` extra (the test driver)

            return bench.main(quick=args.quick)
        return asyncio.run(run_async(args, settings))
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except Exception as error:
        message = _one_line(error, settings)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 1


def _one_line(error: Exception, settings: Settings | None) -> str | None:
    """What to tell a person about `error`, or None for a bug (which keeps its traceback)."""
    if isinstance(error, migrate.MigrationError | postgres.DatabaseUnreachable | conversation.TerminalSessionEnded):
        return str(error)  # each already says what happened and what to do
    if isinstance(error, openai.APIConnectionError):
        where = (settings.openai_base_url if settings else None) or "the OpenAI API"
        return (
            f"Cannot reach {where} ({error}). Check the network or OPENAI_BASE_URL; without OPENAI_API_KEY and "
            "OPENAI_BASE_URL the offline rule-based model answers instead."
        )
    if isinstance(error, openai.AuthenticationError):
        return "OpenAI refused OPENAI_API_KEY; set a valid key, or unset it to use the offline rule-based model."
    return None


def main() -> None:
    # The command line speaks for itself; library warnings are for the host's logs.
    logging.basicConfig(level=logging.ERROR, format="%(message)s")
    sys.exit(run(sys.argv[1:]))


def email_main() -> None:
    """`support-worker-email`: the terminal runner's old flags, mapped onto the one CLI."""
    logging.basicConfig(level=logging.ERROR, format="%(message)s")
    sys.exit(run(worker_argv(sys.argv[1:])))
