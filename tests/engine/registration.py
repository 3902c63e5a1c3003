"""What a sync must satisfy, read from Inngest's validators; the stub refuses the rest (400).

`pkg/registration/process.go` (`ProcessFunctions`) validates every function of a sync and fails
the whole sync with all the reasons when any is invalid. The rules, with their sources:

* `pkg/inngest/function.go`, `Function.Validate`: a name; the priority expression compiles;
  batching excludes debounce, cancellation and priority; at most five cancellations; the debounce
  key compiles and its period parses and lies within 1 s .. 7 days (`consts.MinDebouncePeriod`,
  `MaxDebouncePeriod`). The debounce *timeout* is not validated there: one that does not parse is
  read as no timeout (`Debounce.TimeoutDuration`), which the driver copies.
* `pkg/inngest/concurrency.go`, `ConcurrencyLimits.Validate`: at most two limits
  (`consts.MaxConcurrencyLimits`), each key compiles, a non-function scope needs a key.
* `pkg/inngest/trigger.go`: at most ten triggers, none duplicated, an event name (<= 255 chars)
  whose `expression` compiles, or a cron (<= 255 chars) that robfig/cron v3 parses with
  `Minute | Hour | Dom | Month | Dow`: five fields, no seconds, no `@descriptors`, a `TZ=` zone the
  tz database knows.
* Durations (`period`, `timeout`) are go-str2duration strings ("90s", "1h30m", "2d", "1w").
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Mapping
from typing import Any

from engine.cel import cel_compiles

MIN_DEBOUNCE_MS, MAX_DEBOUNCE_MS = 1000, 7 * 86_400_000
MAX_CONCURRENCY_LIMITS, MAX_TRIGGERS, MAX_CANCELLATIONS, MAX_NAME = 2, 10, 5, 255

_UNIT_MS = {"ns": 1e-6, "us": 1e-3, "µs": 1e-3, "ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}
_UNIT_MS |= {"d": 86_400_000, "w": 7 * 86_400_000}
_DURATION_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|ms|s|m|h|d|w)")


def duration_ms(text: str) -> int:
    """A go-str2duration string in milliseconds; ValueError when it does not parse."""
    body = text[1:] if text[:1] in "+-" else text
    if body == "0":
        return 0
    pos, total = 0, 0.0
    while pos < len(body):
        part = _DURATION_PART.match(body, pos)
        if not part or part.group(1) in ("", "."):
            raise ValueError(f'time: invalid duration "{text}"')
        total += float(part.group(1)) * _UNIT_MS[part.group(2)]
        pos = part.end()
    if not body:
        raise ValueError(f'time: invalid duration "{text}"')
    return int(-total if text.startswith("-") else total)


# --- robfig/cron v3 with the five standard fields ------------------------------------------

_CRON_FIELDS = [  # (lowest, highest, names)
    (0, 59, ()),
    (0, 23, ()),
    (1, 31, ()),
    (1, 12, ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")),
    (0, 6, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")),
]


def cron_error(spec: str) -> str | None:
    """robfig/cron v3's complaint about `spec`, or None when it parses."""
    if spec == "":
        return "empty spec string"
    if spec.startswith("TZ=") or spec.startswith("CRON_TZ="):
        space = spec.find(" ")
        if space < 0:
            return f"provided bad location {spec[spec.find('=') + 1 :]}: no schedule after it"
        zone = spec[spec.find("=") + 1 : space]
        if zone not in ("", "UTC", "Local") and not _known_zone(zone):
            return f"provided bad location {zone}: unknown time zone {zone}"
        spec = spec[space:].strip()
    if spec.startswith("@"):
        return f"parser does not accept descriptors: {spec}"
    fields = spec.split()
    if len(fields) != len(_CRON_FIELDS):
        return f"expected exactly 5 fields, found {len(fields)}: [{' '.join(fields)}]"
    for field, bounds in zip(fields, _CRON_FIELDS, strict=True):
        for expr in (piece for piece in field.split(",") if piece):
            error = _cron_range_error(expr, *bounds)
            if error:
                return error
    return None


def _known_zone(zone: str) -> bool:
    try:
        zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _cron_int(text: str, names: tuple[str, ...], offset: int) -> int:
    if text.lower() in names:
        return names.index(text.lower()) + offset
    if not re.fullmatch(r"[+-]?\d+", text):
        raise ValueError(f"failed to parse int from {text}")
    if int(text) < 0:
        raise ValueError(f"negative number ({int(text)}) not allowed: {text}")
    return int(text)


def _cron_range_error(expr: str, low: int, high: int, names: tuple[str, ...]) -> str | None:
    range_step = expr.split("/")
    low_high = range_step[0].split("-")
    try:
        if low_high[0] in ("*", "?"):
            start, end = low, high
        elif len(low_high) > 2:
            return f"too many hyphens: {expr}"
        else:
            start = _cron_int(low_high[0], names, low)
            end = _cron_int(low_high[-1], names, low)
        if len(range_step) > 2:
            return f"too many slashes: {expr}"
        step = _cron_int(range_step[1], (), 0) if len(range_step) == 2 else 1
    except ValueError as error:
        return str(error)
    if len(range_step) == 2 and len(low_high) == 1:
        end = high
    for broken, message in (
        (start < low, f"beginning of range ({start}) below minimum ({low}): {expr}"),
        (end > high, f"end of range ({end}) above maximum ({high}): {expr}"),
        (start > end, f"beginning of range ({start}) beyond end of range ({end}): {expr}"),
        (step == 0, f"step of range should be a positive number: {expr}"),
    ):
        if broken:
            return message
    return None


# --- whole functions ------------------------------------------------------------------------


def function_errors(fn: Mapping[str, Any]) -> list[str]:
    """Every reason `Function.Validate` (and the SDK payload's decoding) gives for `fn`."""
    errors: list[str] = []
    if not fn.get("name"):
        errors.append("A function name is required")
    errors += _concurrency_errors(fn.get("concurrency"))
    errors += _trigger_errors(fn.get("triggers") or [])
    batch, debounce, priority = fn.get("batchEvents"), fn.get("debounce"), fn.get("priority") or {}
    cancels = fn.get("cancel") or []
    if batch and cancels:
        errors.append("Batching and cancellation are mutually exclusive")
    if batch and debounce:
        errors.append("Batching and debouncing are mutually exclusive")
    if priority.get("run") is not None:
        if problem := cel_compiles(priority["run"]):
            errors.append(f"Priority.Run expression is invalid: {problem}")
        if batch:
            errors.append("A function cannot specify Priority.Run and Batch together")
    for cancel in cancels:
        if cancel.get("if") and (problem := cel_compiles(cancel["if"])):
            errors.append(f"Cancellation expression is invalid: {problem}")
    if len(cancels) > MAX_CANCELLATIONS:
        errors.append(f"This function exceeds the max number of cancellation events: {MAX_CANCELLATIONS}")
    if debounce:
        errors += _debounce_errors(debounce)
    if throttle := fn.get("throttle"):
        try:
            duration_ms(throttle.get("period", ""))
        except ValueError as error:  # Throttle.UnmarshalJSON: the payload does not decode
            errors.append(f"throttle period: {error}")
    return errors


def _concurrency_errors(concurrency: Any) -> list[str]:
    limits = concurrency if isinstance(concurrency, list) else [concurrency] if concurrency else []
    if len(limits) > MAX_CONCURRENCY_LIMITS:
        return [f"There are more concurrency limits specified than the allowed max of: {MAX_CONCURRENCY_LIMITS}"]
    errors = []
    for limit in limits:
        scope, key = limit.get("scope") or "fn", limit.get("key")
        if scope != "fn" and key is None:
            errors.append(f"A concurrency key must be specified for {scope} scoped limits")
        if key is not None and (problem := cel_compiles(key)):
            errors.append(f"Invalid concurrency key '{key}': {problem}")
    return errors


def _trigger_errors(triggers: list[Mapping[str, Any]]) -> list[str]:
    errors, seen = [], set()
    if len(triggers) > MAX_TRIGGERS:
        errors.append(f"This function exceeds the max number of triggers: {MAX_TRIGGERS}")
    for trigger in triggers:
        event, cron, expression = trigger.get("event"), trigger.get("cron"), trigger.get("expression")
        name = f"event: {event}" if event is not None else f"cron: {cron}"
        if repr(sorted(trigger.items())) in seen:
            errors.append(f"duplicate trigger {name}")
        seen.add(repr(sorted(trigger.items())))
        if (event is None) == (cron is None):
            errors.append("A trigger must supply an event name or a cron schedule, not both")
        elif event is not None:
            if not event:
                errors.append("An event trigger must specify an event name")
            if len(event) > MAX_NAME:
                errors.append(f"event name is too long. maximum length is {MAX_NAME} characters")
            if expression is not None and (problem := cel_compiles(expression)):
                errors.append(f"invalid trigger expression on '{event}': {problem}")
        else:
            if cron_error(cron):
                errors.append(f"'{cron}' isn't a valid cron schedule")
            if len(cron) > MAX_NAME:
                errors.append(f"cron is too long. maximum length is {MAX_NAME} characters")
    return errors


def _debounce_errors(debounce: Mapping[str, Any]) -> list[str]:
    errors = []
    key, period = debounce.get("key") or None, debounce.get("period", "")
    if key is not None and (problem := cel_compiles(key)):
        errors.append(f"Debounce expression is invalid: {problem}")
    try:
        period_ms = duration_ms(period)
    except ValueError as error:
        errors.append(f"The debounce period of '{period}' is invalid: {error}")
        period_ms = 0
    if period_ms < MIN_DEBOUNCE_MS:
        errors.append(f"The debounce period of '{period}' is less than the min of: 1s")
    if period_ms > MAX_DEBOUNCE_MS:
        errors.append(f"The debounce period of '{period}' is greater than the max of: 168h0m0s")
    return errors


def sync_errors(payload: Mapping[str, Any]) -> list[str]:
    """All reasons the engine would refuse this sync (`ProcessFunctions`), each naming its function."""
    functions = payload.get("functions") or []
    if not functions:
        return ["No functions registered within your app"]
    return [f"{fn.get('id', '?')}: {error}" for fn in functions for error in function_errors(fn)]


def debounce_timeout_ms(debounce: Mapping[str, Any]) -> int | None:
    """`Debounce.TimeoutDuration`: None when absent or unparseable (then there is no cap)."""
    try:
        return duration_ms(debounce["timeout"]) if debounce.get("timeout") else None
    except ValueError:
        return None
