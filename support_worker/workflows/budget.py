"""The cost cap per conversation: every model turn's token usage is recorded, and a run stops
calling the model once the next turn would take it past CONVERSATION_TOKEN_BUDGET.

Engine-free. `MeteredModel` wraps the model the agent uses; `metering(...)` (entered by
`conversation.converse`) says which run the turns belong to. Turns are numbered in the order
the run makes them, and the check counts only the turns before the current one, so a durable
run replayed from its journal takes the same decision at the same turn.

The check needs no database read: every turn before the current one passed through the same
`metering` block first (a durable call replays the finished turns from its journal, in order,
before it reaches a new one), so the meter's running sum is the sum Postgres would give. Each
turn's usage is still written once to `model_usage` (keyed by run and turn), and a process
that already wrote a turn does not send the same no-op insert again on the next replay.
"""

from __future__ import annotations

import contextvars
import dataclasses
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg
from agents import Model, ModelResponse

from support_worker.store import escalations as store


class OverBudget(Exception):
    """The next model turn would take this run past its token budget."""

    def __init__(self, *, spent: int, budget: int, turn: int) -> None:
        self.spent, self.budget, self.turn = spent, budget, turn
        super().__init__(f"{spent} tokens spent before turn {turn}; the budget is {budget}")


@dataclasses.dataclass
class Meter:
    pool: asyncpg.Pool
    run_id: str
    budget: int
    turns: int = 0
    spent: int = 0  # the tokens of every turn so far in this block
    last: int = 0  # the last turn's


# (run, turn) pairs this process has written to `model_usage`: a replay of a turn it wrote
# skips the insert (which would do nothing). A bounded memory, oldest forgotten first; a
# forgotten pair only costs the idempotent insert again.
RECORDED_TURNS_KEPT = 10_000  # about 2 MB
_recorded: OrderedDict[tuple[str, int], None] = OrderedDict()


_current: contextvars.ContextVar[Meter | None] = contextvars.ContextVar("support_worker_meter", default=None)


@contextmanager
def metering(pool: asyncpg.Pool, *, run_id: str, budget: int) -> Iterator[Meter]:
    """Count and cap the model turns made inside this block against `run_id`."""
    meter = Meter(pool=pool, run_id=run_id, budget=budget)
    token = _current.set(meter)
    try:
        yield meter
    finally:
        _current.reset(token)


def would_exceed(*, spent: int, last_turn: int, budget: int) -> bool:
    """A turn costs at least what the last one did (each resends the whole conversation), so
    the run stops when spending that much again would pass the budget."""
    return spent + last_turn > budget


class MeteredModel(Model):
    """Checks the budget before each model call and records the call's usage after it. Wrap
    it around the journaling model, so the check runs on every replay, in the same order."""

    def __init__(self, inner: Model) -> None:
        self._inner = inner

    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        meter = _current.get()
        if meter is None:
            return await self._inner.get_response(*args, **kwargs)
        meter.turns += 1
        turn = meter.turns
        if would_exceed(spent=meter.spent, last_turn=meter.last, budget=meter.budget):
            raise OverBudget(spent=meter.spent, budget=meter.budget, turn=turn)
        response = await self._inner.get_response(*args, **kwargs)
        await _record_once(meter, turn, response)
        meter.spent += response.usage.total_tokens
        meter.last = response.usage.total_tokens
        return response

    def stream_response(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("support runs do not stream")


async def _record_once(meter: Meter, turn: int, response: ModelResponse) -> None:
    """Write the turn's usage (the database keeps it once per run and turn)."""
    key = (meter.run_id, turn)
    if key in _recorded:
        _recorded.move_to_end(key)
        return
    usage = response.usage
    await store.record_usage(
        meter.pool,
        run_id=meter.run_id,
        turn=turn,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        total_tokens=usage.total_tokens,
    )
    _recorded[key] = None
    if len(_recorded) > RECORDED_TURNS_KEPT:
        _recorded.popitem(last=False)
