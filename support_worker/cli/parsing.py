"""The `support-worker` command line's arguments, and nothing heavier than argparse.

`--help`, `--version` and every argument error are answered from here, before any command
imports the Agents SDK, openai, inngest or asyncpg (each command imports those itself).

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

`list`, `pending` and `audit` print a table, or JSON with `--json`. `support-worker-email`
takes the old `python worker.py` flags and maps them onto these commands.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from importlib import metadata

import support_worker
from support_worker.store.audit_actions import AuditAction

DESCRIPTION = "`support-worker`: the one command line for people running the service."


def version() -> str:
    """The installed distribution's version; the package's own when it is not installed."""
    try:
        return metadata.version("support-worker")
    except metadata.PackageNotFoundError:
        return support_worker.__version__


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="support-worker", description=DESCRIPTION)
    root.add_argument("--version", action="version", version=f"support-worker {version()}")
    commands = root.add_subparsers(dest="command", required=True)
    _serving(commands)
    _deciding(commands)
    _answering(commands)
    _listing(commands)
    return root


def _serving(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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


def _deciding(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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


def _answering(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ask = commands.add_parser("answer", help="answer one email here, without the durable engine")
    ask.add_argument("--customer", required=True, help="customer id (see: support-worker list)")
    ask.add_argument("--subject")
    ask.add_argument("body", help="the customer's email text")
    verdict = ask.add_mutually_exclusive_group()
    verdict.add_argument("--approve", action="store_true", help="approve any refund without asking")
    verdict.add_argument("--reject", action="store_true", help="reject any refund without asking")


def _listing(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    trail.add_argument("--action", choices=[a.value for a in AuditAction])
    trail.add_argument("--run")
    trail.add_argument("--json", action="store_true", help="print JSON instead of a table")


def refusal(args: argparse.Namespace) -> str | None:
    """What is wrong with arguments argparse accepted, said before any command imports its libraries."""
    if args.command == "edit" and not args.request_id.startswith("esc_"):
        return f"edit is for escalations (esc_…); for a refund use: support-worker approve {args.request_id} --reply"
    if args.command == "answer" and not args.body.strip():
        return "The email is empty: give the customer's words, e.g. \"I was charged twice\"."
    return None


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
