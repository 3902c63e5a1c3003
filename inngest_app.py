"""Durability: the only module that imports `inngest`.

In the shape of inngest-py's FastAPI example, top to bottom: the client, the event schemas,
the functions (module level; each step wraps a call into engine-free code), their flow-control
registration, and the FastAPI host. The agent is `worker.py`, the refund workflow
`refunds.py`, the conversation loop `conversation.py`, the store `db.py`; swapping Inngest for
another engine means rewriting this file only.

Serve it with `uvicorn inngest_app:app --port 8000` and point the dev server at it with
`npx inngest-cli@latest dev -u http://127.0.0.1:8000/api/inngest`.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, NoReturn, TypeVar

import inngest
import inngest.fast_api
from agents import Model
from fastapi import FastAPI
from pydantic import BaseModel

import db
from support_worker.conversation import intake
from support_worker.conversation import loop as conversation
from support_worker.core.events import (
    APPROVAL_DECIDED,
    EMAIL_RECEIVED,
    EMAILS_WAITING,
    ESCALATION_DECIDED,
    ESCALATION_REQUESTED,
    HEALTH_CHECK_REQUESTED,
    REFUND_WITHDRAWN,
    ApprovalDecided,
    EscalationRequested,
    HealthCheckRequested,
    RefundWithdrawn,
    check_size,
)
from support_worker.core.settings import Settings, get_settings
from support_worker.doors import host
from support_worker.durable import agent_run, email_run, escalation_run, health_run, receiving, recorders
from support_worker.durable import runtime as runtime_module
from support_worker.durable.flow_keys import (
    APP_ID,
    CUSTOMER_KEY,
    EMAIL_RETRIES,
    FAILED_HERE,
    PRIORITY_BY_TIER,
    REJECTION_PREFIX,
)
from support_worker.durable.outputs import DecisionRecorded, EmailRunResult, EscalationOpened, HealthGathered
from support_worker.durable.runtime import Runtime
from support_worker.store import escalations as escalation_store
from support_worker.workflows import decisions, escalations, health, replies

logger = logging.getLogger("support_worker.inngest")

_runtime: Runtime | None = None


def runtime() -> Runtime:
    if _runtime is None:
        raise RuntimeError("the app is not configured: build it with inngest_app.create_app()")
    return _runtime


def create_client(settings: Settings) -> inngest.Inngest:
    return inngest.Inngest(
        app_id=APP_ID,
        is_production=not settings.inngest_dev_mode,
        signing_key=settings.inngest_signing_key.get_secret_value() if settings.inngest_signing_key else None,
        event_key=settings.inngest_event_key.get_secret_value() if settings.inngest_event_key else None,
        serializer=inngest.PydanticSerializer(),
        logger=logger,
        middleware=_error_monitoring(settings),
    )


async def send_event(settings: Settings, name: str, event_id: str, data: dict[str, Any]) -> list[str]:
    """Send one event from outside a function (the CLI); `event_id` makes a resend a no-op.
    Returns the ids the event API assigned."""
    check_size(settings.max_event_bytes, name, data)
    return await create_client(settings).send(inngest.Event(name=name, id=event_id, data=data))


def _error_monitoring(settings: Settings) -> list[Any]:
    """With SENTRY_DSN set, function and step failures go to Sentry; without it, nothing."""
    if not settings.sentry_dsn:
        return []
    try:
        from inngest.experimental.sentry_middleware import SentryMiddleware
    except ImportError as error:
        raise RuntimeError(
            "SENTRY_DSN is set but sentry-sdk is not installed: pip install 'support-worker[sentry]'"
        ) from error
    runtime_module.start_sentry(settings.sentry_dsn.get_secret_value())
    return [SentryMiddleware]


# --------------------------------------------------------------------------- shared helpers

Schema = TypeVar("Schema", bound=BaseModel)


async def parse_or_reject(ctx: inngest.Context, schema: type[Schema]) -> Schema:
    """The event's data as `schema`, or an `event_rejected` row saying why and a run that ends
    without retries. Call it inside a step, so the audit write itself is retried."""
    try:
        return parse(ctx, schema)
    except intake.Refused as refused:
        await reject(ctx, refused.why)


def parse(ctx: inngest.Context, schema: type[Schema]) -> Schema:
    """The event's data as `schema`, or `intake.Refused` saying what is wrong with it."""
    return receiving.parse(ctx.event.data, schema)


async def reject(ctx: inngest.Context, why: str) -> NoReturn:
    """Audit why an event was refused, then end the run without burning retries."""
    event = ctx.event
    pool = runtime().require_pool()
    await receiving.audit_rejection(
        pool, name=event.name, data=event.data, event_id=event.id, run_id=ctx.run_id, why=why
    )
    raise inngest.NonRetriableError(f"{REJECTION_PREFIX}{ctx.event.name}: {why}")


async def audit_run_failure(ctx: inngest.Context) -> None:
    """A failed run of this app as a `run_failed` row (durable/recorders.py)."""
    await recorders.audit_run_failure(ctx.step, runtime().require_pool(), dict(ctx.event.data), run_id=ctx.run_id)


def _event_time(event: inngest.Event) -> datetime:
    """The event's own time: the same on every retry and replay, unlike the clock."""
    return datetime.fromtimestamp(event.ts / 1000, UTC) if event.ts else datetime(2000, 1, 1, tzinfo=UTC)


# --------------------------------------------------------------------------- customer/email.received


async def receive_message(ctx: inngest.Context) -> intake.Intake:
    """The first step: the messages this run answers (its own, and with bursts gathered, what
    else its customer has waiting) and the thread before them (003 D3's load-thread, here to
    save an engine call), or a refusal with an `event_rejected` row and no retries."""
    rt = runtime()
    pool, event = rt.require_pool(), ctx.event
    try:
        received = await receiving.receive(
            pool,
            rt.settings,
            name=event.name,
            data=event.data,
            event_id=event.id or ctx.run_id,
            event_at=_event_time(event),
            run_id=ctx.run_id,
            ask_for_a_run=_ask_for_a_run,
        )
    except intake.Refused as refused:
        await reject(ctx, refused.why)
    return await receiving.with_thread(pool, received)


async def record_customer_email(ctx: inngest.Context) -> intake.Stored:
    """With bursts gathered, Inngest runs the email function once per burst, with its last event
    only: this function stores every event's message first, so the run can answer them all."""
    rt = runtime()

    async def store() -> intake.Stored:
        at, event_id = _event_time(ctx.event), ctx.event.id or ctx.run_id
        try:
            return await receiving.record(
                rt.require_pool(), rt.settings, ctx.event.data, event_id=event_id, event_at=at
            )
        except intake.Refused as refused:
            await reject(ctx, refused.why)

    stored = await ctx.step.run("store-message", store, output_type=intake.Stored)
    if stored.passed_over:
        # Stored after the run that should have taken it had already gathered: ask for another.
        await ctx.step.send_event("ask-for-a-run", _waiting_event(stored.customer_id, key=ctx.event.id or ctx.run_id))
    return stored


def _waiting_event(customer_id: str, *, key: str) -> inngest.Event:
    """`customer/emails.waiting`; the id makes a resend (a retried step) a no-op."""
    return inngest.Event(name=EMAILS_WAITING, id=f"waiting-{key}", data={"customer_id": customer_id})


async def _ask_for_a_run(customer_id: str, *, key: str) -> None:
    await runtime().require_client().send(_waiting_event(customer_id, key=key))


async def handle_customer_email(ctx: inngest.Context) -> EmailRunResult:
    """Answer one email: the agent runs in one step (`run-agent`, journaled in Postgres) until
    it answers, escalates or waits for a reviewer; each waiting refund goes through the gate's
    waits, then `resume-agent-<request>` goes on from the journal. The reply is saved as a draft
    (`save-draft-reply`, 003 D3) and, with Postmark configured, sent (`send-reply`)."""
    rt = runtime()
    pool = rt.require_pool()
    steps = email_run.agent_steps(rt.settings, rt.agent, rt.run_config, pool)
    last = ctx.attempt >= EMAIL_RETRIES
    tell = partial(email_run.tell_reviewers, pool, rt.settings, last_attempt=last, retry_after=_retry_after)
    now = _event_time(ctx.event)
    start = partial(
        agent_run.run_agent, steps, run_id=ctx.run_id, now=now, receive=partial(receive_message, ctx), tell=tell
    )
    talk = await ctx.step.run("run-agent", start, output_type=agent_run.AgentSummary)
    received = talk.intake
    if received is None or received.status != "accepted":
        ended = received.status if received else "nothing_waiting"
        return EmailRunResult(status=ended, first_run_id=received.first_run_id if received else None)
    customer = received.customer
    if received.more_waiting:  # more than one answer's worth: the rest get a run of their own
        await ctx.step.send_event("ask-for-a-run", _waiting_event(customer.id, key=f"more-{ctx.run_id}"))
    talk = await email_run.through_gates(
        ctx.step, steps, talk, received=received, run_id=ctx.run_id, now=now, tell=tell
    )
    if talk.escalation:
        body = "\n\n".join(text for _, text in await steps.read_texts(received.answering))
        escalation_id: str | None = await escalate(ctx, customer, body, talk.escalation)
    else:
        escalation_id = None
    draft = escalations.holding_reply(customer) if escalation_id else talk.draft
    save = email_run.save_draft(pool, received, run_id=ctx.run_id, draft=draft, gate=talk.gate)
    saved = await ctx.step.run("save-draft-reply", save, output_type=conversation.SentReply)
    sent = await send_reply(ctx, saved.draft_id)
    return email_run.run_result(saved, sent, escalation_id=escalation_id, gate=talk.gate)


async def send_reply(ctx: inngest.Context, draft_id: str | None) -> replies.Sent | None:
    """With Postmark's outbound API configured, send the draft once (`send-reply`); Postmark's
    5xx and 429 retry the step, honouring its Retry-After. A send that still fails leaves the
    draft on the desk rather than failing the run: the reply is saved either way."""
    rt = runtime()
    if draft_id is None or not replies.sending_configured(rt.settings):
        return None

    send = partial(email_run.send_draft, rt.require_pool(), rt.settings, draft_id=draft_id, retry_after=_retry_after)
    try:
        return await ctx.step.run("send-reply", send, output_type=replies.Sent)
    except inngest.StepError as error:
        logger.warning("draft %s not sent after the step's retries (%s); it waits on the desk", draft_id, error)
        return replies.Sent(draft_id=draft_id, status="not_configured", why=f"not sent: {error}")


async def escalate(
    ctx: inngest.Context, customer: db.Customer, customer_message: str, ask: escalations.EscalationAsk
) -> str:
    """Record the hand-off in Postgres, then announce it (the id makes a resend a no-op); the
    escalation function notifies reviewers and waits. The run itself ends with a holding reply."""
    rt = runtime()
    opener = partial(
        email_run.open_escalation, rt.require_pool(), rt.settings, ask, ctx.run_id, customer, customer_message
    )
    opened = await ctx.step.run(f"open-escalation-{ask.key}", opener, output_type=EscalationOpened)
    event = inngest.Event(
        name=ESCALATION_REQUESTED, id=f"escalation-{opened.request_id}", data={"request_id": opened.request_id}
    )
    await ctx.step.send_event(f"announce-escalation-{opened.request_id}", event)
    return opened.request_id


def _retry_after(message: str, seconds: float) -> inngest.RetryAfterError:
    return inngest.RetryAfterError(message, retry_after=timedelta(seconds=seconds))


# --------------------------------------------------------------------------- decisions and withdrawals


async def record_refund_decision(ctx: inngest.Context) -> DecisionRecorded:
    """Every decision lands in Postgres, whether or not a run is waiting for it yet. One that
    names only the customer decides their one pending request (decision_targets.py)."""
    rt = runtime()
    pool = rt.require_pool()

    async def record() -> DecisionRecorded:
        asked = await parse_or_reject(ctx, ApprovalDecided)
        return await recorders.record_refund_decision(
            pool,
            asked,
            event_id=ctx.event.id or ctx.run_id,
            run_id=ctx.run_id,
            real_event_id=ctx.event.id,
            require_reviewer=rt.settings.require_named_reviewer,
        )

    return await ctx.step.run("record-decision", record, output_type=DecisionRecorded)


async def withdraw_refund_request(ctx: inngest.Context) -> decisions.Withdrawal:
    """The customer calls a refund off: record it, then wake the run waiting on it."""
    pool = runtime().require_pool()
    withdrawal_id = f"withdrawal-{ctx.event.id or ctx.run_id}"

    async def record_withdrawal() -> decisions.Withdrawal:
        withdrawal = await parse_or_reject(ctx, RefundWithdrawn)
        return await recorders.record_withdrawal(
            pool, withdrawal, withdrawal_id=withdrawal_id, run_id=ctx.run_id, event_id=ctx.event.id
        )

    result = await ctx.step.run("record-withdrawal", record_withdrawal, output_type=decisions.Withdrawal)
    wake = recorders.waking_decision(result, withdrawal_id)
    if wake:
        await ctx.step.send_event(
            "wake-waiting-run", inngest.Event(name=APPROVAL_DECIDED, id=withdrawal_id, data=wake.model_dump())
        )
    return result


# --------------------------------------------------------------------------- customer/escalation.requested


async def handle_escalation(ctx: inngest.Context) -> escalations.Settled:
    """Tell the on-call reviewers, wait for approve, edit or reject (or the deadline), then post
    to the senior support channel as the branch says, and audit the branch once."""
    rt = runtime()
    pool = rt.require_pool()

    async def load() -> EscalationOpened:
        asked = await parse_or_reject(ctx, EscalationRequested)
        escalation = await escalation_store.get_escalation(pool, escalation_id=asked.request_id)
        if escalation is None:
            await reject(ctx, f"unknown escalation: {asked.request_id}")
        return EscalationOpened(request_id=escalation.id, reason=escalation.reason, customer_id=escalation.customer_id)

    loaded = await ctx.step.run("load-escalation", load, output_type=EscalationOpened)
    return await escalation_run.notify_wait_settle(
        ctx.step, pool, rt.settings, loaded, run_id=ctx.run_id, step_error=inngest.StepError
    )


async def record_escalation_decision(ctx: inngest.Context) -> DecisionRecorded:
    """Every escalation decision lands in Postgres, whether or not its run is waiting yet."""
    rt = runtime()
    pool = rt.require_pool()

    async def record() -> DecisionRecorded:
        await parse_or_reject(ctx, escalations.Decision)
        return await recorders.record_escalation_decision(
            pool,
            ctx.event.data,
            event_id=ctx.event.id or ctx.run_id,
            run_id=ctx.run_id,
            require_reviewer=rt.settings.require_named_reviewer,
        )

    return await ctx.step.run("record-decision", record, output_type=DecisionRecorded)


# --------------------------------------------------------------------------- the daily health check


async def daily_health_check(ctx: inngest.Context) -> dict[str, Any]:
    """The morning fan-out of health checks and the journal's clean-up (durable/health_run.py)."""
    rt = runtime()
    day = health.scheduled_day(ctx.event.data, ctx.event.ts)
    return await health_run.daily_health_check(ctx.step, rt.require_pool(), rt.settings, day=day, send=_send_events)


async def _send_events(events: list[dict[str, Any]]) -> None:
    await runtime().require_client().send([inngest.Event(**event) for event in events])


async def gather_activity(ctx: inngest.Context) -> HealthGathered:
    request = await parse_or_reject(ctx, HealthCheckRequested)
    today = _event_time(ctx.event).date().isoformat()
    return await health_run.gather_activity(runtime().require_pool(), request, today=today, reject=partial(reject, ctx))


async def customer_health_check(ctx: inngest.Context) -> dict[str, Any]:
    pool = runtime().require_pool()
    return await health_run.customer_health_check(ctx.step, pool, partial(gather_activity, ctx), run_id=ctx.run_id)


# --------------------------------------------------------------------------- registration


def create_functions(client: inngest.Inngest, settings: Settings) -> list[inngest.Function[Any]]:
    """Register the module's functions with their flow control, all of it from settings."""
    return [
        *_email_functions(client, settings),
        *_health_functions(client, settings),
        *_escalation_functions(client, settings),
        # Not an SDK `on_failure` handler: those are registered with zero retries, and the dead
        # letter must survive a database error. One function for the app's failed runs instead.
        client.create_function(
            fn_id="record-run-failure",
            name="Record run failure",
            trigger=inngest.TriggerEvent(event="inngest/function.failed", expression=FAILED_HERE),
            retries=4,
        )(audit_run_failure),
    ]


def _email_functions(client: inngest.Inngest, settings: Settings) -> list[inngest.Function[Any]]:
    burst = settings.email_burst_seconds > 0
    email = _on_event(
        client,
        "handle-customer-email",
        [EMAIL_RECEIVED, EMAILS_WAITING] if burst else EMAIL_RECEIVED,
        handle_customer_email,
        EmailRunResult,
        concurrency=[
            # All email runs at once: each in-flight step holds at most one pool connection.
            inngest.Concurrency(limit=settings.email_concurrency),
            # One customer's share, so a noisy sender cannot starve everyone else.
            inngest.Concurrency(limit=settings.email_concurrency_per_customer, key=CUSTOMER_KEY),
        ],
        # Run starts per minute, matched to the model's rate limit (a few model calls a run).
        throttle=inngest.Throttle(limit=settings.email_throttle_per_minute, period=timedelta(minutes=1)),
        priority=inngest.Priority(run=PRIORITY_BY_TIER),
        # One run per customer's burst, with its last event; the recorder stored the others.
        debounce=inngest.Debounce(
            key=CUSTOMER_KEY,
            period=timedelta(seconds=settings.email_burst_seconds),
            timeout=timedelta(seconds=settings.email_burst_timeout_seconds),
        )
        if burst
        else None,
    )
    recorder = _on_event(client, "record-customer-email", EMAIL_RECEIVED, record_customer_email, intake.Stored)
    decided = _on_event(client, "record-refund-decision", APPROVAL_DECIDED, record_refund_decision, DecisionRecorded)
    withdraw = _on_event(
        client, "withdraw-refund-request", REFUND_WITHDRAWN, withdraw_refund_request, decisions.Withdrawal
    )
    return [email, *([recorder] if burst else []), decided, withdraw]


def _health_functions(client: inngest.Inngest, settings: Settings) -> list[inngest.Function[Any]]:
    daily = client.create_function(
        fn_id="daily-customer-health-check",
        name="Daily customer health check",
        trigger=inngest.TriggerCron(cron=settings.health_check_cron),
        retries=2,
    )(daily_health_check)
    per_customer = _on_event(
        client,
        "process-customer-health-check",
        HEALTH_CHECK_REQUESTED,
        customer_health_check,
        retries=3,
        # Gentler than live email: the morning fan-out must never crowd out customers.
        concurrency=[inngest.Concurrency(limit=settings.health_check_concurrency)],
        throttle=inngest.Throttle(limit=settings.health_check_throttle_per_minute, period=timedelta(minutes=1)),
    )
    return [daily, per_customer]


def _escalation_functions(client: inngest.Inngest, settings: Settings) -> list[inngest.Function[Any]]:
    # Its own small cap: escalations never crowd out live email.
    cap = [inngest.Concurrency(limit=settings.escalation_concurrency)]
    handle = _on_event(
        client,
        "escalate-with-human-approval",
        ESCALATION_REQUESTED,
        handle_escalation,
        escalations.Settled,
        concurrency=cap,
    )
    decided = _on_event(
        client, "record-escalation-decision", ESCALATION_DECIDED, record_escalation_decision, DecisionRecorded
    )
    return [handle, decided]


def _on_event(
    client: inngest.Inngest,
    fn_id: str,
    event: str | list[str],
    handler: Any,
    output_type: type[BaseModel] | None = None,
    *,
    retries: int = 4,
    **flow_control: Any,
) -> inngest.Function[Any]:
    """A function triggered by an event (or any of several), retried `retries` times, with its
    flow control; its name is its id in words ("record-refund-decision": "Record refund decision")."""
    options = flow_control | ({"output_type": output_type} if output_type else {})
    names = [event] if isinstance(event, str) else event
    triggers: list[inngest.TriggerCron | inngest.TriggerEvent] = [inngest.TriggerEvent(event=e) for e in names]
    trigger = triggers[0] if len(triggers) == 1 else triggers
    name = fn_id.replace("-", " ").capitalize()
    return client.create_function(fn_id=fn_id, name=name, trigger=trigger, retries=retries, **options)(handler)


# --------------------------------------------------------------------------- the host


def create_app(settings: Settings | None = None, *, model: Model | None = None) -> FastAPI:
    """The FastAPI host: configures the runtime, opens the pool for the app's life, serves
    `/api/inngest`, the webhook, the desk and the health probes."""
    global _runtime
    settings = settings or get_settings()
    runtime_module.require_signing(settings)
    client = create_client(settings)
    rt = _runtime = runtime_module.build(settings, model, client)
    app = FastAPI(title="support-worker", lifespan=runtime_module.lifespan(rt))
    app.state.runtime = rt
    app.state.inngest_client = client
    # Outside dev mode a sync must be signed by Inngest, and the URL it registers is the
    # configured origin, never one derived from the request's Host header.
    inngest.fast_api.serve(
        app,
        client,
        create_functions(client, settings),
        enable_unauthed_sync=settings.inngest_dev_mode,
        serve_origin=runtime_module.serve_origin(settings),
    )
    if not settings.inngest_dev_mode:
        app.add_middleware(host.RefuseStaleSignatures, max_age_seconds=settings.signature_max_age_seconds)

    async def send(name: str, event_id: str, data: dict[str, Any]) -> None:
        check_size(settings.max_event_bytes, name, data)
        await client.send(inngest.Event(name=name, id=event_id, data=data))

    host.mount_doors(app, settings, get_pool=rt.require_pool, send=send)
    host.add_probes(app, settings, rt.require_pool)
    return app


def __getattr__(name: str) -> Any:
    """`uvicorn inngest_app:app` builds the app on first access, from the environment.

    Built lazily so that importing this module (tests, tools) never requires a configured
    environment, while serving it without INNGEST_DEV or a signing key fails with a clear
    message. Building connects to nothing; the lifespan opens the pool.
    """
    if name == "app":
        built = create_app()
        globals()["app"] = built
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
