"""The bench's growth table (issue 19): what one email costs as its conversation grows from
1 to 10 model turns, durable (through the host, driven like the engine) and in-process (the
same agent and model with no engine and no journal), and the host CPU meter both rest on."""

from __future__ import annotations

import json
import re
import statistics
import time
from datetime import UTC, datetime
from typing import Any

from agents import ModelResponse, Usage
from openai.types.responses import ResponseFunctionToolCall

import worker
from support_worker.agent.offline_model import OfflineSupportModel
from support_worker.conversation import intake
from support_worker.conversation import loop as conversation
from support_worker.core.events import EmailReceived
from support_worker.core.settings import Settings
from support_worker.store import sample_data
from support_worker.workflows import budget

EMAIL_FN = "handle-customer-email"


class HostCpu:
    """An ASGI wrapper summing the CPU seconds this process spends inside the host's requests.
    The bench's own driver waits for each response meanwhile, so in a run of sequential calls
    the sum is the host's share (uvicorn's HTTP parsing outside the app is not counted)."""

    def __init__(self, app: Any) -> None:
        self.app, self.seconds = app, 0.0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.process_time()
        try:
            await self.app(scope, receive, send)
        finally:
            self.seconds += time.process_time() - began


class LongTalkModel(OfflineSupportModel):
    """The offline model, except that an email saying `[turns=N]` gets N model turns: N - 1
    turns that each look the customer up again, then the offline model's answer."""

    async def get_response(self, system_instructions: Any, input: Any, *args: Any, **kwargs: Any) -> Any:
        text = json.dumps(input) if isinstance(input, list) else str(input)
        wanted = re.search(r"\[turns=(\d+)\]", text)
        done = sum(1 for i in input if isinstance(i, dict) and i.get("type") == "function_call_output")
        if wanted is None or done >= int(wanted.group(1)) - 1:
            return await super().get_response(system_instructions, input, *args, **kwargs)
        call_id = f"call_bench_{done + 1}"
        call = ResponseFunctionToolCall(
            id=call_id, call_id=call_id, type="function_call", name="lookup_customer", arguments="{}"
        )
        return ModelResponse(output=[call], usage=Usage(requests=1), response_id=None)


GROWTH_TURNS = (1, 3, 6, 10)


async def growth(env: Any, samples: int) -> dict[int, dict[str, float]]:
    """Per conversation length: engine calls, host CPU and wire bytes per email (the median
    of `samples` emails), and the same agent run in this process with no durability."""
    out: dict[int, dict[str, float]] = {}
    for turns in GROWTH_TURNS:
        cpu, wire, calls = [], [], 0
        for n in range(samples + 1):
            event = {
                "name": "customer/email.received",
                "id": f"bench-turns-{turns}-{n}",
                "data": {"customer_id": sample_data.GRACE, "body": f"[turns={turns}] Do you ship to Canada?"},
            }
            start, began = env.meter.mark(), env.cpu.seconds
            run = await env.driver.run(EMAIL_FN, event, resolver=env.drv.timeout_resolver)
            if run.status != "completed" or run.output.get("status") != "drafted":
                raise RuntimeError(f"the {turns}-turn email did not complete: {run.error or run.output}")
            if n:  # the first is a warm-up
                cpu.append(env.cpu.seconds - began)
                wire.append(sum(c[1] + c[2] for c in env.meter.calls[start:]))
            calls = len(run.calls)
            env.note_outputs(run)
        out[turns] = {
            "calls": calls,
            "cpu_ms": statistics.median(cpu) * 1000,
            "bytes": statistics.median(wire),
            "inline_cpu_ms": await _in_process_cpu(env, turns, samples) * 1000,
        }
    return out


async def _in_process_cpu(env: Any, turns: int, samples: int) -> float:
    """The same email answered here with no engine and no journal: the same intake, the same
    agent and model (token-metered, as the host's is), the same guarded, audited reply. CPU
    seconds per email (median): the floor durability is measured against."""
    agent = worker.build_agent(budget.MeteredModel(LongTalkModel()))
    run_config = worker.build_run_config(False)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    spent = []
    for n in range(samples + 1):
        run_id, body = f"inline-{turns}-{n}", f"[turns={turns}] Do you ship to Canada?"
        began = time.process_time()
        received = await intake.receive(
            env.pool,
            EmailReceived(customer_id=sample_data.GRACE, body=body),
            event_id=run_id,
            event_at=datetime.now(UTC),
            run_id=run_id,
            max_body_chars=settings.max_email_body_chars,
        )
        customer = received.customer
        context = worker.SupportContext(
            pool=env.pool, customer_id=customer.id, run_id=run_id, now=datetime.now(UTC), customer_message=body
        )
        talk = await conversation.converse(
            agent,
            worker.format_email(customer, subject=None, body=body),
            context=context,
            run_config=run_config,
            gate=_no_refunds,
            max_turns=settings.agent_max_turns,
            token_budget=settings.conversation_token_budget,
        )
        await conversation.send_reply(env.pool, run_id=run_id, customer=customer, draft=talk.draft, gate=talk.gate)
        if n:
            spent.append(time.process_time() - began)
        if not talk.draft:
            raise RuntimeError(f"the in-process {turns}-turn run did not answer")
    return statistics.median(spent)


async def _no_refunds(item: Any) -> Any:
    raise RuntimeError("the growth emails ask for no refund")
