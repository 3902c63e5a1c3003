"""Durability added from outside: every model turn and tool call of the agent becomes a step.

Engine-free: a `Journal` takes any step object with `run(step_id, handler, *args,
output_type=...)` (Inngest's `ctx.step` has that shape), so swapping engines means passing a
different step. The agent is built once per process (building it costs more CPU than a step
call); the journal of the call being served is found through a context variable.
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from agents import Agent, FunctionTool, Model, ModelBehaviorError, ModelResponse, Usage
from agents.tool_context import ToolContext
from openai.types.responses import ResponseOutputItem
from pydantic import BaseModel, TypeAdapter


class Step(Protocol):
    """The one thing a journal needs from a durable engine: a memoized, retried call."""

    async def run(self, step_id: str, handler: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any: ...


class StoredTurn(BaseModel):
    """A model turn as stored in a step: output items as the API sent them, and usage."""

    output: list[dict[str, Any]]
    usage: dict[str, int]
    response_id: str | None


_OUTPUT_ITEMS = TypeAdapter(list[ResponseOutputItem])


def dump_model_response(response: ModelResponse) -> StoredTurn:
    """Only the fields that were set, by alias: replayed, the items produce the same wire
    JSON the model sent, never keys the API does not define."""
    return StoredTurn(
        output=[item.model_dump(mode="json", by_alias=True, exclude_unset=True) for item in response.output],
        usage={
            "requests": response.usage.requests,
            "input_tokens": response.usage.input_tokens,
            "output_tokens": response.usage.output_tokens,
            "total_tokens": response.usage.total_tokens,
        },
        response_id=response.response_id,
    )


def load_model_response(turn: StoredTurn) -> ModelResponse:
    return ModelResponse(
        output=list(_OUTPUT_ITEMS.validate_python(turn.output)),
        usage=Usage(
            requests=turn.usage["requests"],
            input_tokens=turn.usage["input_tokens"],
            output_tokens=turn.usage["output_tokens"],
            total_tokens=turn.usage["total_tokens"],
        ),
        response_id=turn.response_id,
    )


@dataclasses.dataclass
class Journal:
    """The step object of the call being served, and the turns counted so far in it."""

    step: Step
    turns: int = 0


_current: contextvars.ContextVar[Journal] = contextvars.ContextVar("support_worker_journal")


@contextmanager
def recording(step: Step) -> Iterator[Journal]:
    """Journal every model turn and tool call made inside this block through `step`."""
    token = _current.set(Journal(step))
    try:
        yield _current.get()
    finally:
        _current.reset(token)


def _journal() -> Journal:
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError("a journaled agent ran outside journal.recording(step)") from None


class JournaledModel(Model):
    """Each model call is its own step (`model-turn-N`): a retry replays finished turns from
    the journal instead of calling (and paying) the model again."""

    def __init__(self, inner: Model) -> None:
        self._inner = inner

    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        journal = _journal()
        journal.turns += 1

        async def call_model() -> StoredTurn:
            return dump_model_response(await self._inner.get_response(*args, **kwargs))

        turn = await journal.step.run(f"model-turn-{journal.turns}", call_model, output_type=StoredTurn)
        return load_model_response(turn)

    def stream_response(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("durable runs do not stream")


def journal_tool(tool: Any) -> Any:
    """A copy of `tool` whose every call is a step keyed by its tool-call id, which comes from
    the memoized model output and so is the same on every replay."""
    if not isinstance(tool, FunctionTool):
        return tool
    invoke = tool.on_invoke_tool

    async def journaled_invoke(tool_context: ToolContext[Any], arguments: str) -> Any:
        # Arguments that are not a JSON object fail the same way on every attempt: say so
        # outside the step (as the SDK would), instead of burning the step's retries.
        try:
            parsed = json.loads(arguments or "{}")
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise ModelBehaviorError(f"Invalid JSON input for tool {tool.name}")

        async def run_tool() -> Any:
            output = await invoke(tool_context, arguments)
            return output if isinstance(output, str | int | float | bool | type(None)) else str(output)

        return await _journal().step.run(f"tool-{tool.name}-{tool_context.tool_call_id}", run_tool)

    return dataclasses.replace(tool, on_invoke_tool=journaled_invoke)


def journaled(agent: Agent[Any]) -> Agent[Any]:
    """The same agent with a journaling model and journaling tools; build it once."""
    if not isinstance(agent.model, Model):
        raise TypeError("journaled() needs an agent built with a Model instance")
    return agent.clone(model=JournaledModel(agent.model), tools=[journal_tool(t) for t in agent.tools])
