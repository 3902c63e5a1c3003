"""The nervous system: the only module that imports `inngest`.

Top to bottom: the client, the event schemas, the journaling wrappers that make the plain
agent durable from outside, the functions, and the FastAPI host. Swapping Inngest for another
engine means rewriting this file; worker.py and db.py stay as they are.

Serve it with `uvicorn inngest_app:app --port 8000` and point the dev server at it with
`npx inngest-cli@latest dev -u http://127.0.0.1:8000/api/inngest`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, NoReturn

import asyncpg
import inngest
import inngest.fast_api
from agents import Agent, FunctionTool, Model, ModelResponse, Runner, Usage
from agents.tool_context import ToolContext
from fastapi import FastAPI
from openai.types.responses import ResponseOutputItem
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, TypeAdapter, ValidationError, model_validator

import db
import desk
import health
import ingress
import notify
import worker
from settings import Settings, get_settings

logger = logging.getLogger("support_worker.inngest")

APP_ID = "support-worker"
EMAIL_RECEIVED = "customer/email.received"
APPROVAL_DECIDED = "refund/approval.decided"
HEALTH_CHECK_REQUESTED = "customer/health_check.requested"
HEALTH_CHECK_TIERS = ["pro", "enterprise"]
# Priority by tier, from the event itself (the engine cannot ask Postgres): enterprise runs
# may start up to 10 minutes ahead of queued free-tier runs, pro up to 5. Events without a
# `tier` (e.g. typed into the dashboard) run at normal priority.
PRIORITY_BY_TIER = (
    'has(event.data.tier) ? (event.data.tier == "enterprise" ? 600 : (event.data.tier == "pro" ? 300 : 0)) : 0'
)
REFUND_WITHDRAWN = "customer/refund.withdrawn"
REJECTION_PREFIX = "rejected "
MAX_DECISION_ROUNDS = 5


# --------------------------------------------------------------------------- event schemas


class EmailReceived(BaseModel):
    """`customer/email.received` data. Name the customer by id or by the address they wrote from."""

    model_config = ConfigDict(extra="ignore")

    customer_id: StrictInt | None = Field(default=None, gt=0)
    from_email: str | None = Field(default=None, min_length=3, max_length=320)
    subject: str | None = Field(default=None, max_length=500)
    body: str = Field(min_length=1)

    @model_validator(mode="after")
    def _needs_a_sender(self) -> EmailReceived:
        if self.customer_id is None and not self.from_email:
            raise ValueError("give customer_id or from_email")
        if not self.body.strip():
            raise ValueError("body is empty")
        return self


class ApprovalDecided(BaseModel):
    """`refund/approval.decided` data, sent by a reviewer for one refund request."""

    model_config = ConfigDict(extra="ignore")

    request_id: str = Field(min_length=1, max_length=100)
    approved: StrictBool
    reviewer: str = Field(min_length=1, max_length=200)
    note: str | None = Field(default=None, max_length=2000)
    # Set by the desk and the CLI, which record the decision before announcing it; lets every
    # path that sees the same decision recognise it as one.
    decision_id: str | None = Field(default=None, max_length=200)
    # Approve with edits: a lower amount and/or a reply written by the reviewer.
    amount_cents: StrictInt | None = None
    reply: str | None = Field(default=None, max_length=20_000)
    # Set by the withdrawal function when the customer called the request off.
    withdrawn: StrictBool = False


class RefundWithdrawn(BaseModel):
    """`customer/refund.withdrawn` data: the request id, or the customer and the order."""

    model_config = ConfigDict(extra="ignore")

    request_id: str | None = Field(default=None, min_length=1, max_length=100)
    customer_id: StrictInt | None = None
    order_id: StrictInt | None = None
    reason: str | None = Field(default=None, max_length=500)

    @model_validator(mode="after")
    def _names_a_request(self) -> RefundWithdrawn:
        if self.request_id is None and (self.customer_id is None or self.order_id is None):
            raise ValueError("give request_id, or customer_id and order_id")
        return self


class HealthCheckRequested(BaseModel):
    """`customer/health_check.requested` data, sent by the daily cron (one per customer)."""

    model_config = ConfigDict(extra="ignore")

    customer_id: StrictInt = Field(gt=0)
    day: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$")


class Intake(BaseModel):
    """What the first step learned about the email; memoized, so later calls reuse it."""

    status: str  # "accepted" | "duplicate"
    customer: db.Customer | None = None
    subject: str | None = None
    body: str = ""
    first_run_id: str | None = None


def describe_validation_error(error: ValidationError) -> str:
    """One line a person can act on, e.g. "body: Field required; customer_id: ..."."""
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "data"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


# --------------------------------------------------------------------------- journaling wrappers

_OUTPUT_ITEMS = TypeAdapter(list[ResponseOutputItem])


def dump_model_response(response: ModelResponse) -> dict[str, Any]:
    """A model turn as plain JSON: output items by alias (what the Responses API itself uses),
    usage as numbers. Anything else would not survive the engine's round trip intact."""
    return {
        "output": [item.model_dump(mode="json", by_alias=True) for item in response.output],
        "usage": {
            "requests": response.usage.requests,
            "input_tokens": response.usage.input_tokens,
            "output_tokens": response.usage.output_tokens,
            "total_tokens": response.usage.total_tokens,
        },
        "response_id": response.response_id,
    }


def load_model_response(data: dict[str, Any]) -> ModelResponse:
    return ModelResponse(
        output=list(_OUTPUT_ITEMS.validate_python(data["output"])),
        usage=Usage(**data["usage"]),
        response_id=data["response_id"],
    )


class JournaledModel(Model):
    """Each model call becomes its own `step.run`, so a retry replays finished turns from the
    journal instead of calling (and paying) the model again. Outputs are dumped by alias to
    plain JSON and validated back, which is what survives the engine's round trip."""

    def __init__(self, inner: Model, step: inngest.Step) -> None:
        self._inner = inner
        self._step = step
        self._turn = 0

    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        self._turn += 1

        async def call_model() -> dict[str, Any]:
            return dump_model_response(await self._inner.get_response(*args, **kwargs))

        return load_model_response(await self._step.run(f"model-turn-{self._turn}", call_model))

    def stream_response(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("durable runs do not stream")


def journal_tool(tool: Any, step: inngest.Step) -> Any:
    """A copy of `tool` whose every call is a step keyed by its tool-call id.

    The id comes from the memoized model output, so it is the same on every replay. Tools
    that need approval pause unconditionally here: the refund gate below applies the policy
    inside a step, so the decision to ask a human is journaled too.
    """
    if not isinstance(tool, FunctionTool):
        return tool
    invoke = tool.on_invoke_tool

    async def journaled_invoke(tool_context: ToolContext[Any], arguments: str) -> Any:
        async def run_tool() -> Any:
            output = await invoke(tool_context, arguments)
            return output if isinstance(output, str | int | float | bool | type(None)) else str(output)

        return await step.run(f"tool-{tool.name}-{tool_context.tool_call_id}", run_tool)

    needs_approval = tool.needs_approval is not False
    return dataclasses.replace(tool, on_invoke_tool=journaled_invoke, needs_approval=needs_approval)


def journaled_agent(model: Model, step: inngest.Step) -> Agent[worker.SupportContext]:
    agent = worker.build_agent(JournaledModel(model, step))
    return agent.clone(tools=[journal_tool(t, step) for t in agent.tools])


# --------------------------------------------------------------------------- the app


@dataclasses.dataclass
class Runtime:
    """Process-wide resources the functions use; the pool is opened by the host's lifespan."""

    settings: Settings
    model: Model
    pool: asyncpg.Pool | None = None

    def require_pool(self) -> asyncpg.Pool:
        if self.pool is None:
            raise RuntimeError("the database pool is not open; serve the app through its FastAPI lifespan")
        return self.pool


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


async def send_event(settings: Settings, name: str, event_id: str, data: dict[str, Any]) -> None:
    """Send one event from outside a function (the CLI); `event_id` makes a resend a no-op."""
    await create_client(settings).send(inngest.Event(name=name, id=event_id, data=data))


def _error_monitoring(settings: Settings) -> list[Any]:
    """With SENTRY_DSN set, function and step failures go to Sentry; without it, nothing."""
    if not settings.sentry_dsn:
        return []
    try:
        import sentry_sdk
        from inngest.experimental.sentry_middleware import SentryMiddleware
    except ImportError as error:
        raise RuntimeError(
            "SENTRY_DSN is set but sentry-sdk is not installed: pip install 'support-worker[sentry]'"
        ) from error
    if not sentry_sdk.is_initialized():
        sentry_sdk.init(dsn=settings.sentry_dsn.get_secret_value())
    return [SentryMiddleware]


def create_functions(client: inngest.Inngest, runtime: Runtime) -> list[inngest.Function[Any]]:
    settings = runtime.settings

    async def audit_run_failure(ctx: inngest.Context) -> None:
        """Every function's on_failure: a run that exhausted its retries shows in Postgres."""
        data: dict[str, Any] = dict(ctx.event.data)
        original: dict[str, Any] = data["event"] if isinstance(data.get("event"), dict) else {}
        original_data: dict[str, Any] = original["data"] if isinstance(original.get("data"), dict) else {}
        customer_id = original_data.get("customer_id")
        failed_run = str(data.get("run_id") or ctx.run_id)
        error: dict[str, Any] = (
            data["error"] if isinstance(data.get("error"), dict) else {"message": str(data.get("error"))}
        )
        if str(error.get("message", "")).startswith(REJECTION_PREFIX):
            return  # a refused event is already audited as event_rejected; nothing failed
        await db.record_audit(
            runtime.require_pool(),
            action=db.AuditAction.RUN_FAILED,
            run_id=failed_run,
            customer_id=customer_id if isinstance(customer_id, int) else None,
            detail={
                "function_id": data.get("function_id"),
                "error": error,
                "event_name": original.get("name"),
            },
            idempotency_key=f"run_failed:{failed_run}",
        )

    @client.create_function(
        fn_id="handle-customer-email",
        name="Handle customer email",
        trigger=inngest.TriggerEvent(event=EMAIL_RECEIVED),
        retries=4,
        on_failure=audit_run_failure,
        concurrency=[
            # All email runs at once: each in-flight step holds at most one pool connection.
            inngest.Concurrency(limit=settings.email_concurrency),
            # One customer's share, so a noisy sender cannot starve everyone else.
            inngest.Concurrency(limit=settings.email_concurrency_per_customer, key="event.data.customer_id"),
        ],
        # Run starts per minute, matched to the model's rate limit (a few model calls a run).
        throttle=inngest.Throttle(limit=settings.email_throttle_per_minute, period=timedelta(minutes=1)),
        priority=inngest.Priority(run=PRIORITY_BY_TIER),
    )
    async def handle_customer_email(ctx: inngest.Context) -> dict[str, Any]:
        pool = runtime.require_pool()
        step = ctx.step
        event_key = ctx.event.id or ctx.run_id

        async def receive_message() -> Intake:
            try:
                email = EmailReceived.model_validate(dict(ctx.event.data))
            except ValidationError as error:
                await _reject(pool, ctx, describe_validation_error(error))
            if len(email.body) > settings.max_email_body_chars:
                await _reject(pool, ctx, f"body: longer than {settings.max_email_body_chars} characters")
            customer = (
                await db.get_customer(pool, customer_id=email.customer_id)
                if email.customer_id is not None
                else await db.find_customer_by_email(pool, email=email.from_email or "")
            )
            if customer is None:
                who = f"customer_id {email.customer_id}" if email.customer_id is not None else email.from_email
                await _reject(pool, ctx, f"unknown customer: {who}")
            first = await _record_message_once(pool, ctx, event_key, customer, email)
            if first != ctx.run_id:
                await db.record_audit(
                    pool,
                    action=db.AuditAction.EVENT_DUPLICATE,
                    run_id=ctx.run_id,
                    customer_id=customer.id,
                    detail={"event_id": ctx.event.id, "first_run_id": first},
                    idempotency_key=f"event_duplicate:{ctx.run_id}",
                )
                return Intake(status="duplicate", customer=customer, first_run_id=first)
            return Intake(status="accepted", customer=customer, subject=email.subject, body=email.body)

        intake = await step.run("receive-message", receive_message, output_type=Intake)
        if intake.status == "duplicate" or intake.customer is None:
            return {"status": "duplicate", "first_run_id": intake.first_run_id}
        customer = intake.customer

        agent = journaled_agent(runtime.model, step)
        run_config = worker.build_run_config(settings)
        context = worker.SupportContext(
            pool=pool,
            customer_id=customer.id,
            run_id=ctx.run_id,
            now=datetime.fromtimestamp(ctx.event.ts / 1000, UTC) if ctx.event.ts else datetime(2000, 1, 1, tzinfo=UTC),
            customer_message=intake.body,
        )
        result = await Runner.run(
            agent,
            worker.format_email(customer, subject=intake.subject, body=intake.body),
            context=context,
            run_config=run_config,
        )
        gate: list[worker.GateOutcome] = []
        while result.interruptions:
            state = result.to_state()
            for item in state.get_interruptions():
                outcome = await _refund_gate(step, pool, context, item)
                gate.append(outcome)
                worker.apply_gate_outcome(state, item, outcome)
            result = await Runner.run(agent, state, run_config=run_config)

        draft = str(result.final_output)

        async def send_reply() -> dict[str, Any]:
            sent = await worker.send_reply(pool, run_id=ctx.run_id, customer=customer, draft=draft, gate=gate)
            return sent.model_dump()

        sent = await step.run("send-reply", send_reply)
        return {"status": "replied", **sent, "gate": [g.model_dump() for g in gate]}

    async def _refund_gate(
        step: inngest.Step, pool: asyncpg.Pool, context: worker.SupportContext, item: Any
    ) -> worker.GateOutcome:
        """Open a request (policy first), wait for a reviewer, settle it in Postgres."""
        call_id = item.call_id or "unknown-call"
        arguments = worker.pending_refund_arguments(item)

        async def request_refund() -> dict[str, Any]:
            request, verdict = await worker.open_refund_request(
                pool,
                context=context,
                call_id=call_id,
                arguments=arguments,
                ttl_seconds=settings.refund_approval_timeout_hours * 3600,
            )
            return {"request_id": request.id if request else None, "explanation": verdict.explanation}

        opened = await step.run(f"request-refund-{call_id}", request_refund)
        request_id = opened["request_id"]
        if request_id is None:
            return worker.GateOutcome(
                call_id=call_id, status="blocked", request_id=None, message_for_model=opened["explanation"]
            )

        try:
            await step.run("notify-reviewers", partial(notify.notify_reviewers, pool, settings, request_id=request_id))
        except inngest.StepError as error:
            # The request is stored and on the desk; a dead notifier must not cost the refund.
            logger.warning("could not notify reviewers about %s: %s", request_id, error)

        async def check_recorded_decision() -> dict[str, Any]:
            # A decision can land between opening the request and the wait starting; the
            # engine does not look back for it, Postgres does.
            request = await db.get_refund_request(pool, request_id=request_id)
            left = await pool.fetchval(
                "SELECT GREATEST(0, EXTRACT(EPOCH FROM expires_at - now()))::float FROM refund_requests WHERE id = $1",
                request_id,
            )
            return {"status": request.status if request else "pending", "seconds_left": float(left or 0)}

        async def settle(decision_event: inngest.Event | None) -> worker.GateOutcome:
            decision = None
            if decision_event is not None:
                try:
                    decision = ApprovalDecided.model_validate(dict(decision_event.data)).model_dump()
                except ValidationError:
                    decision = None  # a malformed match is ignored; the row in Postgres decides
            decision_id = None
            if decision_event is not None:
                decision_id = (decision or {}).get("decision_id") or decision_event.id
            return await worker.settle_refund_request(
                pool, request_id=request_id, decision=decision, decision_id=decision_id
            )

        # Usually one round. A decision Postgres refuses (an edit that raises the amount)
        # leaves the request pending, and the run waits again for what time is left.
        outcome: worker.GateOutcome | None = None
        for round_number in range(MAX_DECISION_ROUNDS):
            checked = await step.run("check-recorded-decision", check_recorded_decision)
            decision_event: inngest.Event | None = None
            if checked["status"] == "pending" and checked["seconds_left"] > 0:
                timeout = (
                    timedelta(hours=settings.refund_approval_timeout_hours)
                    if round_number == 0
                    else timedelta(seconds=max(1, int(checked["seconds_left"])))
                )
                decision_event = await step.wait_for_event(
                    "await-refund-approval",
                    event=APPROVAL_DECIDED,
                    if_exp=f"async.data.request_id == {json.dumps(request_id)}",
                    timeout=timeout,
                )
            outcome = await step.run("settle-refund-request", settle, decision_event, output_type=worker.GateOutcome)
            if outcome.status != "pending":
                return outcome
        return await step.run("settle-refund-request", settle, None, output_type=worker.GateOutcome)

    @client.create_function(
        fn_id="record-refund-decision",
        name="Record refund decision",
        trigger=inngest.TriggerEvent(event=APPROVAL_DECIDED),
        retries=4,
        on_failure=audit_run_failure,
    )
    async def record_refund_decision(ctx: inngest.Context) -> dict[str, Any]:
        """Every decision lands in Postgres, whether or not a run is waiting for it yet."""
        pool = runtime.require_pool()

        async def record() -> dict[str, Any]:
            try:
                decision = ApprovalDecided.model_validate(dict(ctx.event.data))
            except ValidationError as error:
                await _reject(pool, ctx, describe_validation_error(error))
            outcome = await db.decide_refund_request(
                pool,
                request_id=decision.request_id,
                approved=decision.approved,
                reviewer=decision.reviewer,
                note=decision.note,
                decision_id=decision.decision_id or ctx.event.id or ctx.run_id,
                amount_cents=decision.amount_cents,
                reply=decision.reply,
            )
            if not outcome.applied and outcome.reason != "same_decision":
                await _audit_ignored(
                    pool,
                    ctx,
                    outcome,
                    request_id=decision.request_id,
                    detail={"approved": decision.approved, "reviewer": decision.reviewer},
                )
            return {"applied": outcome.applied, "reason": outcome.reason}

        return await ctx.step.run("record-decision", record)

    @client.create_function(
        fn_id="withdraw-refund-request",
        name="Withdraw refund request",
        trigger=inngest.TriggerEvent(event=REFUND_WITHDRAWN),
        retries=4,
        on_failure=audit_run_failure,
    )
    async def withdraw_refund_request(ctx: inngest.Context) -> dict[str, Any]:
        """The customer calls a refund off: record it, then wake the run waiting on it."""
        pool = runtime.require_pool()
        withdrawal_id = f"withdrawal-{ctx.event.id or ctx.run_id}"

        async def record_withdrawal() -> dict[str, Any]:
            try:
                withdrawal = RefundWithdrawn.model_validate(dict(ctx.event.data))
            except ValidationError as error:
                await _reject(pool, ctx, describe_validation_error(error))
            request_id = withdrawal.request_id
            if request_id is None and withdrawal.customer_id is not None and withdrawal.order_id is not None:
                pending = await db.find_pending_request(
                    pool, customer_id=withdrawal.customer_id, order_id=withdrawal.order_id
                )
                request_id = pending.id if pending else None
            outcome = (
                await db.withdraw_refund_request(
                    pool,
                    request_id=request_id,
                    withdrawal_id=withdrawal_id,
                    why=withdrawal.reason or "withdrawn by the customer",
                )
                if request_id is not None
                else db.DecisionOutcome(applied=False, reason="unknown_request", request=None)
            )
            withdrawn = outcome.applied or outcome.reason == "same_decision"
            if not withdrawn:
                await _audit_ignored(
                    pool,
                    ctx,
                    outcome,
                    request_id=request_id,
                    detail={"withdrawal": withdrawal.model_dump()},
                    customer_id=withdrawal.customer_id,
                )
            return {"withdrawn": withdrawn, "request_id": request_id, "reason": outcome.reason}

        result = await ctx.step.run("record-withdrawal", record_withdrawal)
        if result["withdrawn"]:
            # The waiting run listens for decisions on its request; a withdrawal is one.
            await ctx.step.send_event(
                "wake-waiting-run",
                inngest.Event(
                    name=APPROVAL_DECIDED,
                    id=withdrawal_id,
                    data={
                        "request_id": result["request_id"],
                        "approved": False,
                        "reviewer": "customer",
                        "withdrawn": True,
                        "decision_id": withdrawal_id,
                    },
                ),
            )
        return result

    @client.create_function(
        fn_id="daily-health-check",
        name="Daily health check",
        trigger=inngest.TriggerCron(cron=settings.health_check_cron),
        retries=2,
        on_failure=audit_run_failure,
    )
    async def daily_health_check(ctx: inngest.Context) -> dict[str, Any]:
        """Fan out one health-check event per paying customer, keyed by customer and day."""
        pool = runtime.require_pool()

        async def load_eligible_customers() -> dict[str, Any]:
            customers = await db.list_customers(pool)
            cooldown = settings.health_check_contact_cooldown_days
            contacted = await db.recently_contacted(pool, days=cooldown) if cooldown else set()
            paying = [c.id for c in customers if c.tier in HEALTH_CHECK_TIERS]
            return {
                "day": _scheduled_day(ctx.event),
                "eligible": [cid for cid in paying if cid not in contacted],
                "skipped_free": [c.id for c in customers if c.tier not in HEALTH_CHECK_TIERS],
                "skipped_contacted": [cid for cid in paying if cid in contacted],
            }

        loaded = await ctx.step.run("load-eligible-customers", load_eligible_customers)
        day, eligible = loaded["day"], loaded["eligible"]
        chunk = settings.health_check_fanout_chunk
        for start in range(0, len(eligible), chunk):
            events = [
                # The id makes the engine drop a second send of the same customer-day.
                inngest.Event(
                    name=HEALTH_CHECK_REQUESTED,
                    id=f"health-check-{customer_id}-{day}",
                    data={"customer_id": customer_id, "day": day},
                )
                for customer_id in eligible[start : start + chunk]
            ]
            await ctx.step.send_event(f"fan-out-{start // chunk + 1}", events)
        return {
            "day": day,
            "scheduled": len(eligible),
            "skipped": {
                "free_tier": len(loaded["skipped_free"]),
                "contacted_recently": len(loaded["skipped_contacted"]),
            },
            "skipped_reasons": {
                "free_tier": "free-tier customers are not health-checked",
                "contacted_recently": (
                    f"got a reply or an outreach note in the last {settings.health_check_contact_cooldown_days} days"
                ),
            },
        }

    @client.create_function(
        fn_id="customer-health-check",
        name="Customer health check",
        trigger=inngest.TriggerEvent(event=HEALTH_CHECK_REQUESTED),
        retries=3,
        on_failure=audit_run_failure,
        # Gentler than live email: the morning fan-out must never crowd out customers.
        concurrency=[inngest.Concurrency(limit=settings.health_check_concurrency)],
        throttle=inngest.Throttle(limit=settings.health_check_throttle_per_minute, period=timedelta(minutes=1)),
    )
    async def customer_health_check(ctx: inngest.Context) -> dict[str, Any]:
        pool = runtime.require_pool()

        async def gather_activity() -> dict[str, Any]:
            try:
                request = HealthCheckRequested.model_validate(dict(ctx.event.data))
            except ValidationError as error:
                await _reject(pool, ctx, describe_validation_error(error))
            customer = await db.get_customer(pool, customer_id=request.customer_id)
            if customer is None:
                await _reject(pool, ctx, f"unknown customer: customer_id {request.customer_id}")
            activity = await db.customer_activity(pool, customer_id=customer.id)
            return {"customer": customer.model_dump(), "activity": activity.model_dump(), "day": request.day}

        gathered = await ctx.step.run("gather-activity", gather_activity)
        customer = db.Customer.model_validate(gathered["customer"])
        summary = health.summarize(customer, db.Activity.model_validate(gathered["activity"]), day=gathered["day"])

        async def record_health_check() -> bool:
            return await db.record_audit(
                pool,
                action=db.AuditAction.HEALTH_CHECK_COMPLETED,
                run_id=ctx.run_id,
                customer_id=customer.id,
                detail=summary.model_dump(),
                idempotency_key=f"health_check_completed:{customer.id}:{summary.day}",
            )

        first = await ctx.step.run("record-health-check", record_health_check)
        if summary.outreach_note:

            async def record_outreach() -> bool:
                # The next morning's cron sees this and leaves the customer alone for a while.
                return await db.record_audit(
                    pool,
                    action=db.AuditAction.OUTREACH_RECORDED,
                    run_id=ctx.run_id,
                    customer_id=customer.id,
                    detail={"day": summary.day, "note": summary.outreach_note, "signals": summary.signals},
                    idempotency_key=f"outreach_recorded:{customer.id}:{summary.day}",
                )

            await ctx.step.run("record-outreach", record_outreach)
        return summary.model_dump() | {"recorded": first}

    return [
        handle_customer_email,
        record_refund_decision,
        withdraw_refund_request,
        daily_health_check,
        customer_health_check,
    ]


def _scheduled_day(event: inngest.Event) -> str:
    """The day a health check is for: from the tick, never from the clock at retry time.

    A cron tick's event carries its scheduled time and is the same on every retry. An
    invocation from the dashboard may name `data.day`; failing both, today (the step that
    calls this is memoized, so a retry still sees the first answer).
    """
    named = event.data.get("day")
    if isinstance(named, str) and len(named) == 10:
        return named
    if event.ts:
        return datetime.fromtimestamp(event.ts / 1000, UTC).date().isoformat()
    return datetime.now(UTC).date().isoformat()


async def _reject(pool: asyncpg.Pool, ctx: inngest.Context, why: str) -> NoReturn:
    """Audit why an event was refused, then end the run without burning retries."""
    raw_customer_id = ctx.event.data.get("customer_id")
    customer_id = (
        raw_customer_id if isinstance(raw_customer_id, int) and not isinstance(raw_customer_id, bool) else None
    )
    await db.record_audit(
        pool,
        action=db.AuditAction.EVENT_REJECTED,
        run_id=ctx.run_id,
        customer_id=customer_id,
        detail={"event": ctx.event.name, "event_id": ctx.event.id, "why": why},
        idempotency_key=f"event_rejected:{ctx.run_id}",
    )
    raise inngest.NonRetriableError(f"{REJECTION_PREFIX}{ctx.event.name}: {why}")


async def _audit_ignored(
    pool: asyncpg.Pool,
    ctx: inngest.Context,
    outcome: db.DecisionOutcome,
    *,
    request_id: str | None,
    detail: dict[str, Any],
    customer_id: int | None = None,
) -> None:
    """A decision or withdrawal that changed nothing still leaves a row saying why."""
    await db.record_audit(
        pool,
        action=db.AuditAction.DECISION_IGNORED,
        run_id=ctx.run_id,
        customer_id=outcome.request.customer_id if outcome.request else customer_id,
        detail={
            "request_id": request_id,
            "why": outcome.reason,
            "event_id": ctx.event.id,
            "current_status": outcome.request.status if outcome.request else None,
        }
        | detail,
        idempotency_key=f"decision_ignored:{ctx.event.id or ctx.run_id}",
    )


async def _record_message_once(
    pool: asyncpg.Pool, ctx: inngest.Context, event_key: str, customer: db.Customer, email: EmailReceived
) -> str:
    """Write `message_received` once per event; return the run that owns the event.

    A second run for the same event id (a duplicate delivery, a replay of a run that already
    answered) finds the owner's row and stands down. A replay of a run that *failed* is the
    recovery path, so it takes the event over with a row of its own. A redelivered call of
    the same run finds its own row and carries on.
    """
    detail = {"event_id": ctx.event.id, "subject": email.subject, "body": email.body}
    key = f"message_received:{event_key}"
    await db.record_audit(
        pool,
        action=db.AuditAction.MESSAGE_RECEIVED,
        run_id=ctx.run_id,
        customer_id=customer.id,
        detail=detail,
        idempotency_key=key,
    )
    owner = str(await pool.fetchval("SELECT run_id FROM audit_log WHERE idempotency_key = $1", key))
    if owner == ctx.run_id:
        return owner
    recovering = await pool.fetchval(
        "SELECT EXISTS (SELECT 1 FROM audit_log WHERE run_id = $1 AND action = 'run_failed')", owner
    )
    if not recovering:
        return owner
    await db.record_audit(
        pool,
        action=db.AuditAction.MESSAGE_RECEIVED,
        run_id=ctx.run_id,
        customer_id=customer.id,
        detail=detail | {"recovery_of": owner},
        idempotency_key=f"{key}:{ctx.run_id}",
    )
    return ctx.run_id


def create_app(settings: Settings | None = None, *, model: Model | None = None) -> FastAPI:
    """The FastAPI host: opens the pool for the app's life and serves `/api/inngest`."""
    settings = settings or get_settings()
    if not settings.inngest_dev_mode and not settings.inngest_signing_key:
        # In dev mode the SDK accepts unsigned calls, so anyone who can reach the endpoint
        # could forge a step result such as an approval; outside it, signatures are a must.
        raise RuntimeError(
            "INNGEST_SIGNING_KEY is not set and INNGEST_DEV is off. Outside dev mode the app only "
            "accepts calls signed by Inngest: set INNGEST_SIGNING_KEY from the Inngest dashboard, "
            "or set INNGEST_DEV=1 to develop locally against the dev server."
        )
    runtime = Runtime(settings=settings, model=model or worker.build_model(settings))
    client = create_client(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime.pool = await db.create_pool(settings)
        try:
            yield
        finally:
            await runtime.pool.close()
            runtime.pool = None

    app = FastAPI(title="support-worker", lifespan=lifespan)
    app.state.runtime = runtime
    app.state.inngest_client = client
    inngest.fast_api.serve(
        app, client, create_functions(client, runtime), serve_origin=settings.inngest_serve_origin
    )

    async def send(name: str, event_id: str, data: dict[str, Any]) -> None:
        await client.send(inngest.Event(name=name, id=event_id, data=data))

    async def find_customer(email: str) -> db.Customer | None:
        return await db.find_customer_by_email(runtime.require_pool(), email=email)

    async def announce_decision(data: dict[str, Any]) -> None:
        await send(APPROVAL_DECIDED, str(data["decision_id"]), data)

    app.include_router(
        ingress.build_router(settings, find_customer=find_customer, send=send, event_name=EMAIL_RECEIVED)
    )
    app.include_router(desk.build_router(settings, get_pool=runtime.require_pool, announce=announce_decision))

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {
            "ok": runtime.pool is not None,
            "dev_mode": settings.inngest_dev_mode,
            "model": "offline-rules" if settings.uses_offline_model else settings.openai_model,
        }

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
