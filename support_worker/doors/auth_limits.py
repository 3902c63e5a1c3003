"""Repeated wrong credentials on the doors (desk and webhook) are locked out, per client and per
user, and audited; a client that is not guessing keeps getting in.

The rules (docs/controls.md), with N = AUTH_MAX_FAILURES and W = AUTH_FAILURE_WINDOW_SECONDS:

- A client (its address as the socket sees it, `request.client.host`) that sent N wrong
  credentials to a door within W seconds is answered `429 Too Many Requests` with Retry-After
  on that door, right credentials included, until fewer than N of its failures are younger
  than W. A sign-in that succeeds does not wipe its count (a reviewer's own account cannot be
  used to reset the count while guessing someone else's).
- A user name that got N wrong passwords within W seconds, from any clients, is locked for
  clients that have not signed in as that user (successfully, in this process) within the
  last day: they get the same 429 whatever they send. A client that has (a reviewer at her
  desk, Postmark's servers delivering mail) keeps passing with the right password, so an
  attacker elsewhere can neither lock her out nor make Postmark's retries of a good request
  fail; a wrong password from such a client still counts.
- Missing credentials (a browser's first request before it asks for a password) are no failure.
- Each lockout writes one `auth_throttled` audit row (the door, the client, the user name as
  given, how many failures, Retry-After); never the password. Audit errors never block sign-in.

The counters live in this process's memory (bounded to MAX_TRACKED keys, the oldest dropped):
several processes each count on their own, and a restart forgets them. Behind a proxy every
client has the proxy's address; put the limit in the proxy, or terminate TLS at this host.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
from fastapi import HTTPException, Request

import db

logger = logging.getLogger("support_worker.auth_limits")

MAX_TRACKED = 10_000  # clients and user names remembered per door (a flood of addresses is bounded)
KNOWN_GOOD_SECONDS = 24 * 3600  # how long a successful sign-in vouches for its client
TOO_MANY = "too many wrong credentials; try again later"


@dataclass
class _Failures:
    at: collections.deque[float] = field(default_factory=collections.deque)
    locked_since: float | None = None  # when the current lockout began (its audit row's key)


class AuthLimiter:
    """The lockout state of one door. `check` before comparing credentials, then `failed` or
    `succeeded` with what came of the comparison."""

    def __init__(
        self,
        door: str,
        *,
        max_failures: int,
        window_seconds: int,
        get_pool: Callable[[], asyncpg.Pool] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.door = door
        self.max_failures = max_failures
        self.window_seconds = window_seconds
        self._get_pool = get_pool
        self._clock = clock
        self._wall_clock = wall_clock
        self._clients: collections.OrderedDict[str, _Failures] = collections.OrderedDict()
        self._users: collections.OrderedDict[str, _Failures] = collections.OrderedDict()
        self._known_good: collections.OrderedDict[tuple[str, str], float] = collections.OrderedDict()

    @staticmethod
    def client_of(request: Request) -> str:
        return request.client.host if request.client else "unknown"

    def _recent(self, table: collections.OrderedDict[str, _Failures], key: str) -> _Failures | None:
        entry = table.get(key)
        if entry is None:
            return None
        cutoff = self._clock() - self.window_seconds
        while entry.at and entry.at[0] <= cutoff:
            entry.at.popleft()
        if not entry.at:
            del table[key]
            return None
        if len(entry.at) < self.max_failures:
            entry.locked_since = None
        return entry

    def _retry_after(self, entry: _Failures | None) -> int | None:
        """Seconds until this key is below the limit again, or None when it is not locked."""
        if entry is None or len(entry.at) < self.max_failures:
            return None
        unlocks_at = entry.at[len(entry.at) - self.max_failures] + self.window_seconds
        return max(1, math.ceil(unlocks_at - self._clock()))

    def _vouched(self, client: str, user: str) -> bool:
        since = self._known_good.get((client, user))
        return since is not None and self._clock() - since < KNOWN_GOOD_SECONDS

    def check(self, client: str, user: str | None) -> None:
        """Raise 429 with Retry-After when this client, or this user from an unvouched client,
        is locked out; otherwise let the credentials be compared."""
        waits = [self._retry_after(self._recent(self._clients, client))]
        if user is not None and not self._vouched(client, user):
            waits.append(self._retry_after(self._recent(self._users, user)))
        locked = [w for w in waits if w is not None]
        if locked:
            raise HTTPException(429, TOO_MANY, {"Retry-After": str(max(locked))})

    async def failed(self, client: str, user: str) -> None:
        """Count one wrong credential for the client and the user; audit a lockout once."""
        for kind, table, key in (("client", self._clients, client), ("user", self._users, user)):
            entry = self._recent(table, key) or _Failures()
            entry.at.append(self._clock())
            table[key] = entry
            table.move_to_end(key)
            while len(table) > MAX_TRACKED:
                table.popitem(last=False)
            if len(entry.at) >= self.max_failures and entry.locked_since is None:
                entry.locked_since = self._wall_clock()
                await self._audit(kind, key, client=client, user=user, entry=entry)

    def succeeded(self, client: str, user: str) -> None:
        """Remember that this client signed in as this user: it keeps passing while the user is locked."""
        self._known_good[(client, user)] = self._clock()
        self._known_good.move_to_end((client, user))
        while len(self._known_good) > MAX_TRACKED:
            self._known_good.popitem(last=False)

    async def _audit(self, kind: str, key: str, *, client: str, user: str, entry: _Failures) -> None:
        if self._get_pool is None:
            return
        try:
            await db.record_audit(
                self._get_pool(),
                action=db.AuditAction.AUTH_THROTTLED,
                run_id=None,
                customer_id=None,
                detail={
                    "door": self.door,
                    "locked": kind,
                    "client": client,
                    "user": user[:200],
                    "failures": len(entry.at),
                    "window_seconds": self.window_seconds,
                    "retry_after_seconds": self._retry_after(entry),
                },
                idempotency_key=f"auth_throttled:{self.door}:{kind}:{key[:200]}:{int(entry.locked_since or 0)}",
            )
        except Exception as error:  # the lockout holds whether or not the row could be written
            logger.warning("could not audit a %s lockout on the %s door: %s", kind, self.door, error)
