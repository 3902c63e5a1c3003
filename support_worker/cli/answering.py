"""`support-worker answer`: one email answered here, without the durable engine; a refund is
decided at the terminal's prompt (or by `--approve` / `--reject`)."""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys

import db
from support_worker.cli import sending
from support_worker.conversation import loop as conversation
from support_worker.core.money import format_money
from support_worker.core.settings import Settings
from support_worker.workflows import decisions


async def answer(settings: Settings, args: argparse.Namespace) -> int:
    """Answer one email here, without a durable engine; refunds are decided at the prompt
    (an empty email never gets here: `parsing.refusal`)."""
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
                decide=fixed if (args.approve or args.reject) else ask_in_terminal,
                settings=settings,
            )
        except (LookupError, conversation.ModelUnavailable) as error:
            print(error, file=sys.stderr)
            return 1
    for g in outcome.gate:
        print(f"refund {g.request_id or '(none)'}: {g.status}")
    if outcome.escalation_id:
        await sending.announce_escalation(settings, outcome.escalation_id, outcome.escalation_reason or "")
    print("\n" + outcome.reply)
    print(f"\n(run {outcome.run_id}; its audit rows carry this run id)")
    return 0


async def ask_in_terminal(request: db.RefundRequest) -> decisions.Decision:
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
