"""A deterministic, rule-based stand-in for a language model, used when no model is configured.

It is not an LLM and does not pretend to be one: it reads the customer's email with regular
expressions and fixed rules, and answers through the Agents SDK's `Model` interface with the
same kinds of output a real model produces (function calls to the agent's tools, then a reply
message). That lets the whole service, its approval gate and its durable layer run offline,
in tests and in CI, with identical answers for identical inputs.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from agents import Model, ModelResponse, ModelSettings, ModelTracing, Usage
from agents.agent_output import AgentOutputSchemaBase
from agents.handoffs import Handoff
from agents.items import TResponseInputItem, TResponseStreamEvent
from agents.tool import Tool
from openai.types.responses import (
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)

OFFLINE_MODEL_NAME = "offline-rules-v1"

_DUPLICATE = re.compile(
    r"charged (me )?twice|double[- ]?charged|duplicate (charge|payment)|billed twice|charged two times", re.I
)
_OVERCHARGE = re.compile(r"over-?charged|charged (me )?too much|wrong amount|instead of \$", re.I)
_FAILED = re.compile(
    r"order( #?\d+)? (has )?failed|failed order|(payment|order) (didn't|did not) go through"
    r"|never (arrived|received|came)|was cancelled but|marked as failed",
    re.I,
)
_ORDER_ID = re.compile(r"(?:order|#)\s*(?:#|no\.?|number)?\s*(\d{3,})", re.I)
_DOLLARS = re.compile(r"\$\s?(\d[\d,]*(?:\.\d{1,2})?)")
_REFUND_ASK = re.compile(r"refund (me )?\$\s?(\d[\d,]*(?:\.\d{1,2})?)", re.I)
_FROM_NAME = re.compile(r"^From: (?P<name>[^<\n]+?)\s*<", re.M)


def _cents(text: str) -> int:
    return round(float(text.replace(",", "")) * 100)


def _money(cents: int) -> str:
    return f"${cents / 100:,.2f}"


def _field(item: Any, key: str) -> Any:
    return item.get(key) if isinstance(item, dict) else getattr(item, key, None)


# Where the earlier thread begins in the agent's input (conversation/thread.py): the rules
# answer the new email only, never a complaint already answered.
THREAD_MARKER = "--- Earlier in this conversation (oldest first; already answered, for context only) ---"


@dataclass(frozen=True)
class _Conversation:
    """What the rules need from the input items: the email and the tool results so far."""

    email: str
    tool_calls: dict[str, str]  # tool name -> call id (latest call of that tool)
    tool_outputs: dict[str, str]  # tool name -> output text

    @classmethod
    def parse(cls, items: str | list[TResponseInputItem]) -> _Conversation:
        if isinstance(items, str):
            return cls(email=items, tool_calls={}, tool_outputs={})
        email = ""
        calls: dict[str, str] = {}
        outputs_by_call: dict[str, str] = {}
        for item in items:
            kind = _field(item, "type")
            role = _field(item, "role")
            if role == "user" and not email:
                content = _field(item, "content")
                if isinstance(content, str):
                    email = content
                elif isinstance(content, list):
                    email = " ".join(str(_field(part, "text") or "") for part in content)
            elif kind == "function_call":
                calls[str(_field(item, "name"))] = str(_field(item, "call_id"))
            elif kind == "function_call_output":
                output = _field(item, "output")
                outputs_by_call[str(_field(item, "call_id"))] = (
                    output if isinstance(output, str) else json.dumps(output)
                )
        outputs = {name: outputs_by_call[cid] for name, cid in calls.items() if cid in outputs_by_call}
        return cls(email=email, tool_calls=calls, tool_outputs=outputs)

    @property
    def body(self) -> str:
        # The agent's input is headers, a blank line, then the customer's own words.
        email = self.email.split(THREAD_MARKER)[0].rstrip() if THREAD_MARKER in self.email else self.email
        _, _, body = email.partition("\n\n")
        return body or email

    @property
    def customer_name(self) -> str:
        match = _FROM_NAME.search(self.email)
        return match.group("name").split()[0] if match else "there"


@dataclass(frozen=True)
class RefundIntent:
    """A refund-worthy complaint found in an email, before any order data is known."""

    kind: str  # duplicate_charge | overcharge | failed_order
    order_id: int | None
    asked_cents: int | None  # an explicit amount the customer demanded, if any
    overcharge_cents: int | None


def read_refund_intent(body: str) -> RefundIntent | None:
    """Classify an email by fixed rules. Returns None for emails that warrant no refund."""
    if _DUPLICATE.search(body):
        kind = "duplicate_charge"
    elif _OVERCHARGE.search(body):
        kind = "overcharge"
    elif _FAILED.search(body):
        kind = "failed_order"
    elif _REFUND_ASK.search(body):
        kind = "demanded"
    else:
        return None
    order_match = _ORDER_ID.search(body)
    ask = _REFUND_ASK.search(body)
    amounts = [_cents(m) for m in _DOLLARS.findall(body)]
    overcharge = (
        amounts[0] - amounts[1] if kind == "overcharge" and len(amounts) >= 2 and amounts[0] > amounts[1] else None
    )
    return RefundIntent(
        kind=kind,
        order_id=int(order_match.group(1)) if order_match else None,
        asked_cents=_cents(ask.group(2)) if ask else None,
        overcharge_cents=overcharge,
    )


class OfflineSupportModel(Model):
    """Rule-based responder implementing the SDK's `Model` interface; see the module docstring."""

    name = OFFLINE_MODEL_NAME

    async def get_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: Any | None = None,
    ) -> ModelResponse:
        convo = _Conversation.parse(input)
        turn = len(input) if isinstance(input, list) else 0
        output = self._next_output(convo, turn)
        return ModelResponse(output=output, usage=Usage(requests=1), response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[TResponseStreamEvent]:
        raise NotImplementedError("the offline model answers whole turns only; run without streaming")

    # ------------------------------------------------------------------ rules

    def _next_output(self, convo: _Conversation, turn: int) -> list[Any]:
        intent = read_refund_intent(convo.body)
        mentions_order = _ORDER_ID.search(convo.body) is not None
        if (intent or mentions_order) and "lookup_orders" not in convo.tool_calls:
            return [_call("lookup_orders", {}, turn)]
        orders = _parse_orders(convo.tool_outputs.get("lookup_orders"))
        if intent and "issue_refund" not in convo.tool_calls:
            refund = _plan_refund(intent, orders)
            if refund is not None:
                return [_call("issue_refund", refund, turn)]
        return [_message(self._reply(convo, intent, orders))]

    def _reply(self, convo: _Conversation, intent: RefundIntent | None, orders: dict[int, dict[str, Any]]) -> str:
        greeting = f"Hi {convo.customer_name},"
        sign_off = "\n\nBest regards,\nThe Support Team"
        refund_result = convo.tool_outputs.get("issue_refund")
        if refund_result is not None:
            if refund_result.startswith("Refund issued"):
                body = (
                    "thank you for letting us know, and sorry for the trouble. "
                    f"{refund_result.removeprefix('Refund issued: ')} "
                    "You should see it on your statement within 5-10 business days."
                )
            elif refund_result.startswith("Refund declined"):
                body = (
                    "thank you for your patience. After review, we were not able to approve a refund for this "
                    "charge, so no refund has been issued. If you have more details, reply to this email and "
                    "we will take another look."
                )
            elif refund_result.startswith("Refund withdrawn"):
                body = (
                    "as you asked, we have cancelled your refund request, so no refund has been issued. "
                    "If you change your mind, just reply to this email."
                )
            elif refund_result.startswith("Refund not issued"):
                body = (
                    "thank you for your patience. We could not complete the review of your refund in time, so "
                    "no refund has been issued yet. Reply to this email and we will pick it up again."
                )
            else:
                body = (
                    f"thank you for reaching out. We could not issue that refund: "
                    f"{refund_result.removeprefix('Refund refused: ')} "
                    "If something looks wrong, reply with the order number and what you were charged."
                )
            return f"{greeting}\n\n{body}{sign_off}"
        if intent is not None:
            return (
                f"{greeting}\n\nsorry to hear about the billing problem. I could not find which order you mean; "
                "could you reply with the order number shown on your receipt? Then we can sort it out quickly."
                f"{sign_off}"
            )
        order_match = _ORDER_ID.search(convo.body)
        if order_match and int(order_match.group(1)) in orders:
            order = orders[int(order_match.group(1))]
            return (
                f"{greeting}\n\nthanks for your message. Order {order['id']} ({order['description']}) is currently "
                f"marked as {order['status']}. Let us know if there is anything else we can help with.{sign_off}"
            )
        if order_match:
            return (
                f"{greeting}\n\nthanks for your message. I could not find order {order_match.group(1)} on your "
                f"account; could you double-check the number on your receipt?{sign_off}"
            )
        return (
            f"{greeting}\n\nthank you for getting in touch. We have received your message and a member of our "
            f"team will follow up if anything else is needed.{sign_off}"
        )


def _parse_orders(text: str | None) -> dict[int, dict[str, Any]]:
    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return {int(o["id"]): o for o in data.get("orders", []) if isinstance(o, dict) and "id" in o}


def _plan_refund(intent: RefundIntent, orders: dict[int, dict[str, Any]]) -> dict[str, Any] | None:
    """Pick the order and amount a refund call should name; None when the order is unknown."""
    order_id = intent.order_id
    if order_id is None and intent.kind == "failed_order":
        failed = [o for o in orders.values() if o.get("status") == "failed"]
        order_id = failed[0]["id"] if len(failed) == 1 else None
    if order_id is None:
        return None
    order = orders.get(order_id)
    if intent.asked_cents is not None:
        amount = intent.asked_cents
    elif intent.kind == "overcharge" and intent.overcharge_cents is not None:
        amount = intent.overcharge_cents
    elif order is not None:
        amount = int(order["amount_cents"])
    else:
        # The order is not this customer's; name it anyway so the policy explains the refusal.
        amount = 1
    reasons = {
        "duplicate_charge": "Customer reports being charged twice for this order.",
        "overcharge": "Customer reports being overcharged for this order.",
        "failed_order": "Customer reports this order failed but was charged.",
        "demanded": "Customer asked for a refund of a specific amount.",
    }
    return {"order_id": order_id, "amount_cents": amount, "reason": reasons[intent.kind]}


def _call(name: str, arguments: dict[str, Any], turn: int) -> ResponseFunctionToolCall:
    call_id = f"call_offline_{turn}_{name}"
    return ResponseFunctionToolCall(
        id=call_id,
        call_id=call_id,
        type="function_call",
        name=name,
        arguments=json.dumps(arguments, separators=(",", ":")),
    )


def _message(text: str) -> ResponseOutputMessage:
    return ResponseOutputMessage(
        id="msg_offline",
        type="message",
        role="assistant",
        status="completed",
        content=[ResponseOutputText(text=text, type="output_text", annotations=[], logprobs=[])],
    )
