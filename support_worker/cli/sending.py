"""`support-worker send-email`, and how every command tells the engine: events sent to the dev
server (or Inngest Cloud with its keys), and where to watch the runs they start."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

import httpx

import db
import inngest_app
from support_worker.core import events
from support_worker.core.settings import Settings
from support_worker.ops import launcher

# How long `send-email` waits for the dev server to start a run, and how often it asks.
RUN_WAIT_SECONDS = 2.0
RUN_POLL_SECONDS = 0.2


def dev_server_url(settings: Settings) -> str:
    return launcher.dev_server_url(settings)


def event_settings(settings: Settings) -> Settings:
    """Sending from the terminal targets the dev server unless Inngest Cloud keys are set."""
    if settings.inngest_event_key and not settings.inngest_dev_mode:
        return settings
    os.environ.setdefault("INNGEST_DEV", dev_server_url(settings))
    return settings.model_copy(update={"inngest_dev": os.environ["INNGEST_DEV"]})


async def send(settings: Settings, name: str, event_id: str, data: dict[str, Any]) -> list[str]:
    return await inngest_app.send_event(event_settings(settings), name, event_id, data)


def unsent(settings: Settings, error: Exception) -> str:
    """Why an event could not be sent, and what to do about it, in one line."""
    if settings.inngest_event_key and not settings.inngest_dev_mode:
        return f"Inngest's event API could not take the event ({error}); check INNGEST_EVENT_KEY and the network."
    url = dev_server_url(settings)
    command = " ".join(launcher.dev_server_command("http://127.0.0.1:8000"))
    return (
        f"No dev server answered at {url}: the Inngest dev server at {url} is unreachable ({error}); "
        f"start it (e.g. {command}) or set INNGEST_DEV."
    )


async def send_email(settings: Settings, args: argparse.Namespace) -> int:
    data: dict[str, Any] = {"body": args.body, "subject": args.subject}
    async with db.open_pool(settings, max_size=1) as pool:
        customer = (
            await db.get_customer(pool, customer_id=args.customer)
            if args.customer is not None
            else await db.find_customer_by_email(pool, email=args.from_email or "")
        )
    if customer is None:
        print("No such customer. List them with: support-worker list", file=sys.stderr)
        return 1
    data |= {"customer_id": customer.id, "tier": customer.tier}
    event_id = f"cli-{uuid.uuid4().hex}"
    target = event_settings(settings)  # the dev server's URL as the send will use it
    try:
        internal_ids = await send(target, events.EMAIL_RECEIVED, event_id, data)
    except Exception as error:
        print(f"Not sent: event {event_id}. {unsent(target, error)}", file=sys.stderr)
        return 1
    print(f"sent {events.EMAIL_RECEIVED} {event_id} for {customer.name} (customer {customer.id})")
    print(f"  event id  {', '.join(internal_ids) or '(the event API returned none)'}")
    if settings.email_burst_seconds:  # the run below only records it; EMAIL_BURST_SECONDS
        print(f"  answer    about {settings.email_burst_seconds} s after the customer's last email, one for all")
    await _print_runs(target, internal_ids)
    return 0


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
    url = dev_server_url(settings)
    runs = await _runs_started_by(url, event_ids)
    if runs is None:
        print(f"  runs      the dev server at {url} took the event but its REST API did not answer")
    elif not runs:
        print(f"  runs      none started within {RUN_WAIT_SECONDS:g} s; is the app synced? See {url}/runs")
    for run_id in runs or []:
        print(f"  run       {run_id}  {url}/run?runID={run_id}")


async def announce_escalation(settings: Settings, escalation_id: str, reason: str) -> None:
    """Hand the escalation to the engine's escalation function when a dev server answers; the
    event id makes a resend a no-op. Without one it waits on the desk and in `pending`."""
    print(f"escalated {escalation_id}: {reason}")
    try:
        await send(settings, events.ESCALATION_REQUESTED, f"escalation-{escalation_id}", {"request_id": escalation_id})
        print("  sent customer/escalation.requested: reviewers are notified and the run waits for a decision")
    except Exception:
        print(f"  no dev server answered at {dev_server_url(event_settings(settings))}; the escalation waits")
    print(f"  decide with: support-worker approve|edit|reject {escalation_id} --reviewer you")
