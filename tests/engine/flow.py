"""Virtual time and flow control, as Inngest's queue applies them, for `InngestDriver.deliver`.

Runs are asyncio tasks calling the app for real (so the app sees real concurrency); time is
virtual: it jumps to the next timer only when every task is blocked on the clock or on a slot.

* Concurrency (`pkg/execution/queue/item.go`, `GetCustomConcurrencyKeys`; `pkg/inngest/
  concurrency.go`): each limit is a set of slots per evaluated key (no key: one per function),
  keys evaluated once, from the event that starts the run (a burst's last event). A slot is held
  while a step executes, i.e. during one call to the app; a sleeping or waiting run holds none.
  A call that finds its slots full queues.
* Queue order (`QueueItem.Score`, `Item.GetPriorityFactor`): a run's items are ordered by the
  run's start time minus its priority factor (seconds, x1000 ms), so older and higher-priority
  runs go first.
* Throttle (`pkg/constraintapi/lua/helper/gcra.lua`, `throttle`, as `acquire.lua` calls it):
  GCRA with emission interval `period / limit` and tolerance `limit + burst` emissions. A start
  over the limit is delayed until it fits, never dropped.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import heapq
import itertools
from collections.abc import Coroutine
from typing import Any


class FlowDeadlock(AssertionError):
    """Every task waits for a slot that no running call holds: the engine would hang too."""


@dataclasses.dataclass(order=True)
class _Waiter:
    score: int
    seq: int
    keys: list[tuple[str, int]] = dataclasses.field(compare=False)
    future: asyncio.Future[None] = dataclasses.field(compare=False)


class Flow:
    """The clock, the concurrency slots and the throttles of one `deliver`."""

    def __init__(self, start_ms: int) -> None:
        self.now = start_ms
        self.in_use: collections.Counter[str] = collections.Counter()
        self.peak: collections.Counter[str] = collections.Counter()  # the most slots a key ever had taken
        self.queued: collections.Counter[str] = collections.Counter()  # calls that had to wait, by key
        self._timers: list[tuple[int, int, asyncio.Future[None]]] = []
        self._waiters: list[_Waiter] = []
        self._tat: dict[str, float] = {}
        self._seq = itertools.count()
        self._active = 0
        self._idle = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._deadlines: dict[asyncio.Future[Any], asyncio.Future[None]] = {}  # a wait -> its timeout timer

    # --- tasks and time ---------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        self._active += 1

        async def tracked() -> Any:
            try:
                return await coro
            finally:
                self._blocked()

        task = asyncio.ensure_future(tracked())
        self._tasks.append(task)
        return task

    def _blocked(self) -> None:
        self._active -= 1
        if self._active == 0:
            self._idle.set()

    async def sleep_until(self, at_ms: int) -> None:
        """Block this task until virtual time reaches `at_ms`."""
        if at_ms <= self.now:
            return
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (at_ms, next(self._seq), future))
        self._blocked()
        await future

    async def wait_for(self, future: asyncio.Future[Any], *, until_ms: int) -> Any:
        """Block until `resolve(future, ...)` or until `until_ms`, whichever is first (None then)."""
        timer = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (until_ms, next(self._seq), timer))
        timer.add_done_callback(lambda t: None if t.cancelled() or future.done() else future.set_result(None))
        self._deadlines[future] = timer
        self._blocked()
        try:
            return await future
        finally:
            self._deadlines.pop(future, None)

    def resolve(self, future: asyncio.Future[Any], value: Any) -> bool:
        """Complete a `wait_for` from outside (an event arrived); False when it has ended already."""
        timer = self._deadlines.pop(future, None)
        if timer is None or future.done() or timer.done():
            return False
        timer.cancel()
        self._active += 1
        future.set_result(value)
        return True

    async def run(self) -> None:
        """Advance virtual time until no task is left; raise the first task's error."""
        while True:
            if self._active:
                await self._idle.wait()
            self._idle.clear()
            if self._active:
                continue
            failed = [t for t in self._tasks if t.done() and not t.cancelled() and t.exception()]
            if failed:
                raise failed[0].exception()  # type: ignore[misc]
            if not self._timers:
                if self._waiters:
                    raise FlowDeadlock(f"calls wait for slots nobody holds: {[w.keys for w in self._waiters]}")
                return
            self.now = self._timers[0][0]
            while self._timers and self._timers[0][0] == self.now:
                _, _, future = heapq.heappop(self._timers)
                if future.cancelled():
                    continue  # a wait an event resolved first
                self._active += 1
                future.set_result(None)

    # --- concurrency ------------------------------------------------------------------

    async def acquire(self, keys: list[tuple[str, int]], *, score: int) -> None:
        """Take one slot of each `(key, limit)`, queuing (by `score`) while any is full."""
        if not keys:
            return
        if not self._waiters and self._fits(keys):
            self._take(keys)
            return
        waiter = _Waiter(score, next(self._seq), keys, asyncio.get_running_loop().create_future())
        heapq.heappush(self._waiters, waiter)
        self._blocked()
        self._grant()
        if not waiter.future.done():  # really queued (not just behind calls on other keys)
            for key, _ in keys:
                self.queued[key] += 1
        await waiter.future

    def release(self, keys: list[tuple[str, int]]) -> None:
        for key, _ in keys:
            self.in_use[key] -= 1
        self._grant()

    def _fits(self, keys: list[tuple[str, int]]) -> bool:
        return all(self.in_use[key] < limit for key, limit in keys)

    def _take(self, keys: list[tuple[str, int]]) -> None:
        for key, _ in keys:
            self.in_use[key] += 1
            self.peak[key] = max(self.peak[key], self.in_use[key])

    def _grant(self) -> None:
        """Wake, best score first, every queued call whose slots are all free (a call blocked on
        one key never holds back a call on other keys)."""
        kept = []
        for waiter in sorted(self._waiters):
            if self._fits(waiter.keys):
                self._take(waiter.keys)
                self._active += 1
                waiter.future.set_result(None)
            else:
                kept.append(waiter)
        self._waiters = kept
        heapq.heapify(self._waiters)

    # --- throttle ---------------------------------------------------------------------

    async def throttle(self, key: str, *, limit: int, period_ms: int, burst: int) -> None:
        """Delay a run start until the GCRA admits it (`helper/gcra.lua`, `throttle`)."""
        limit = max(limit, 1)
        emission = period_ms / limit
        tolerance = emission * (limit + burst)  # `dvt`, with acquire.lua's maxBurst = limit + burst - 1
        tat = max(self._tat.get(key, self.now), self.now)
        allow_at = tat + emission - tolerance
        self._tat[key] = tat + emission  # reserved now, so later starts queue behind this one
        await self.sleep_until(int(allow_at + 0.999))
