"""Durability added from outside: the agent's model turns and tool results journaled in Postgres.

Engine-free. The agent runs for as long as it can inside one durable step; before it goes on
from a model turn or a tool call, the turn's output (or the tool's result) is written to the
`agent_journal` table (store/agent_journal.py). A retried or redelivered step, or the step that
resumes the run after a reviewer decided, replays the run from the journal: a turn already
there is never asked of the model again, a tool result already there never runs the tool again.

The agent is built once per process (building it costs more CPU than a step); the journal of
the step being served is found through a context variable.
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg
from agents import Agent, FunctionTool, Model, ModelBehaviorError, ModelResponse, Usage
from agents.tool_context import ToolContext
from openai.types.responses import ResponseOutputItem
from pydantic import BaseModel, TypeAdapter

from support_worker.store import agent_journal


class StoredTurn(BaseModel):
    """A model turn as stored in the journal: output items as the API sent them, and usage."""

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
    """One agent step's view of its run's journal: the entries written so far (read once, when
    the step starts), and what this replay has reached. `segment` is the step's number among
    the run's agent steps (0: `run-agent`); entries it writes carry it."""

    pool: asyncpg.Pool
    run_id: str
    segment: int
    entries: dict[tuple[int, str, str], Any]
    turns: int = 0  # model turns reached, replayed or new
    tool_calls: int = 0  # tool calls reached, replayed or new
    asked: int = 0  # model turns this step asked the model for (not in the journal yet)
    unwritten: list[tuple[agent_journal.Key, Any]] = dataclasses.field(default_factory=list)

    @classmethod
    async def open(cls, pool: asyncpg.Pool, *, run_id: str, segment: int) -> Journal:
        return cls(pool, run_id, segment, await agent_journal.load(pool, run_id=run_id))

    async def once(
        self, kind: agent_journal.Kind, call_id: str, make: Callable[[], Awaitable[Any]], *, defer: bool = False
    ) -> Any:
        """The entry for (this turn, `kind`, `call_id`): read from the journal, or made by
        `make()` and written first. Either way the caller gets the stored JSON, so a first run
        and every replay continue from exactly the same value. A `defer`red entry is written
        with the next one (one round trip fewer): for what is safe to redo until something
        depends on it, such as the intake, which the first model turn's input is made of."""
        key = (self.turns, kind, call_id)
        if key in self.entries:
            return self.entries[key]
        payload = json.loads(json.dumps(await make()))  # as the journal will give it back
        if defer:
            self.entries[key] = payload
            self.unwritten.append((key, payload))
            return payload
        batch, self.unwritten = [*self.unwritten, (key, payload)], []
        stored = await agent_journal.write_all(self.pool, run_id=self.run_id, segment=self.segment, entries=batch)
        self.entries.update(stored)
        return stored[key]

    @contextmanager
    def recording(self) -> Iterator[Journal]:
        """Journal every model turn and tool call the agent makes inside this block."""
        token = _current.set(self)
        try:
            yield self
        finally:
            _current.reset(token)


_current: contextvars.ContextVar[Journal] = contextvars.ContextVar("support_worker_journal")


def _journal() -> Journal:
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError("a journaled agent ran outside Journal.recording()") from None


class JournaledModel(Model):
    """Each model turn is journaled: a replay answers finished turns from the journal instead
    of calling (and paying) the model again."""

    def __init__(self, inner: Model) -> None:
        self._inner = inner

    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        journal = _journal()
        journal.turns += 1

        async def call_model() -> dict[str, Any]:
            journal.asked += 1
            return dump_model_response(await self._inner.get_response(*args, **kwargs)).model_dump(mode="json")

        stored = await journal.once("model", "", call_model)
        return load_model_response(StoredTurn.model_validate(stored))

    def stream_response(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("durable runs do not stream")


def journal_tool(tool: Any) -> Any:
    """A copy of `tool` whose every result is journaled under its tool-call id, which comes
    from the journaled model output and so is the same on every replay."""
    if not isinstance(tool, FunctionTool):
        return tool
    invoke = tool.on_invoke_tool

    async def journaled_invoke(tool_context: ToolContext[Any], arguments: str) -> Any:
        # Arguments that are not a JSON object fail the same way on every attempt: say so at
        # once (as the SDK would), instead of burning the step's retries.
        try:
            parsed = json.loads(arguments or "{}")
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise ModelBehaviorError(f"Invalid JSON input for tool {tool.name}")
        journal = _journal()
        journal.tool_calls += 1

        async def run_tool() -> Any:
            output = await invoke(tool_context, arguments)
            return output if isinstance(output, str | int | float | bool | type(None)) else str(output)

        return await journal.once("tool", tool_context.tool_call_id, run_tool)

    return dataclasses.replace(tool, on_invoke_tool=journaled_invoke)


def journaled(agent: Agent[Any]) -> Agent[Any]:
    """The same agent with a journaling model and journaling tools; build it once."""
    if not isinstance(agent.model, Model):
        raise TypeError("journaled() needs an agent built with a Model instance")
    return agent.clone(model=JournaledModel(agent.model), tools=[journal_tool(t) for t in agent.tools])


# --------------------------------------------------------------------------- reading it


def describe(entries: list[agent_journal.Entry], *, limit: int = 120) -> list[dict[str, Any]]:
    """One line per journal entry, for a person reading a run (`support-worker run <id>`, the
    desk): which agent step wrote it, the turn, what it was, and what it said, cut at `limit`."""
    names = {
        item.get("call_id"): item.get("name")
        for entry in entries
        if entry.kind == "model"
        for item in entry.payload.get("output", [])
        if item.get("type") == "function_call"
    }
    return [
        {
            "step": "run-agent" if entry.segment == 0 else f"resume-agent ({entry.segment})",
            "turn": entry.turn,
            "entry": entry.kind
            if entry.kind in ("intake", "model")
            else f"{entry.kind} {names.get(entry.call_id, '?')}",
            "said": _cut(_said(entry), limit),
            "at": entry.recorded_at.isoformat(timespec="seconds"),
        }
        for entry in entries
    ]


def _said(entry: agent_journal.Entry) -> str:
    payload = entry.payload
    if entry.kind == "intake":
        return f"{payload.get('status')}: {len(payload.get('answering') or [])} message(s)"
    if entry.kind == "gate":
        outcome = payload.get("outcome") or {}
        return f"refund request {outcome.get('request_id') or '(none)'}: {outcome.get('status')}"
    if entry.kind == "tool":
        return str(payload)
    parts = []
    for item in payload.get("output", []):
        if item.get("type") == "function_call":
            parts.append(f"calls {item.get('name')}({item.get('arguments')})")
        elif item.get("type") == "message":
            parts.append(" ".join(c.get("text", "") for c in item.get("content", []) if isinstance(c, dict)))
    tokens = (payload.get("usage") or {}).get("total_tokens")
    return f"[{tokens} tokens] " + "; ".join(parts)


def _cut(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
