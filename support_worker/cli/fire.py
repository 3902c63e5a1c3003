"""003 D4 Part B's test email: one `customer/email.received` event for a customer, its id
derived from the customer and the time (a resend of the same one is dropped by Inngest), then
the run it started and that run's dashboard link. `scripts/fire_test_email.py` is its command
line; the sending and the run lookup are the CLI's own (`cli/sending.py`, as
`support-worker send-email` uses them)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

from support_worker.cli import sending
from support_worker.core import events
from support_worker.core.settings import Settings


def test_event_id(customer_id: str, at: datetime) -> str:
    """The event's idempotency id: the customer and the moment, to the microsecond."""
    return f"test-email-{customer_id}-{at.astimezone(UTC):%Y%m%dT%H%M%S%fZ}"


async def fire_test_email(
    settings: Settings, *, customer_id: str, body: str, subject: str | None = None, now: datetime | None = None
) -> int:
    """Send the event; print its id, the run and the dashboard link. 0 when sent, 1 when not."""
    event_id = test_event_id(customer_id, now or datetime.now(UTC))
    data = {"customer_id": customer_id, "body": body, "subject": subject}
    target = sending.event_settings(settings)  # the dev server unless Inngest Cloud keys are set
    try:
        internal_ids = await sending.send(target, events.EMAIL_RECEIVED, event_id, data)
    except Exception as error:
        print(f"Not sent: event {event_id}. {sending.unsent(target, error)}", file=sys.stderr)
        return 1
    print(f"sent {events.EMAIL_RECEIVED} {event_id} for customer {customer_id}")
    print(f"  event id  {', '.join(internal_ids) or '(the event API returned none)'}")
    await sending._print_runs(target, internal_ids)
    return 0
