"""Which cron schedules Inngest accepts, so a bad HEALTH_CHECK_CRON fails at startup, by name.

Inngest refuses the whole sync when one function's cron does not parse: its validator
(`pkg/inngest/trigger.go`, `CronTrigger.Validate`) runs robfig/cron v3's parser with exactly the
five standard fields (`Minute | Hour | Dom | Month | Dow`), no seconds and no descriptors, so
`@daily` and six-field specs are refused. A `TZ=` or `CRON_TZ=` prefix must name a zone the tz
database knows. Each field is a comma-separated list of `*`, `?`, `n`, `a-b`, each optionally
`/step`; months and weekdays also take names (`jan`, `mon`).
"""

from __future__ import annotations

import re
import zoneinfo

# (name, lowest, highest, names) for each of the five fields, as robfig/cron v3 bounds them.
_MONTHS = {m: n for n, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split(), 1)}
_DAYS = {d: n for n, d in enumerate("sun mon tue wed thu fri sat".split())}
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 6, _DAYS),
)
_INT = re.compile(r"[+-]?[0-9]+")


def problem(spec: str) -> str | None:
    """Why Inngest would refuse `spec` as a cron trigger, or None when it parses."""
    if not spec:
        return "empty spec string"
    if spec.startswith(("TZ=", "CRON_TZ=")):
        if " " not in spec:
            return "a TZ= prefix must be followed by the schedule"
        zone, spec = spec[spec.index("=") + 1 : spec.index(" ")], spec[spec.index(" ") :].strip()
        if not _known_zone(zone):
            return f"provided bad location {zone}: unknown time zone"
    if spec.startswith("@"):
        return f"parser does not accept descriptors: {spec}"
    fields = spec.split()
    if len(fields) != 5:
        return f"expected exactly 5 fields, found {len(fields)}: [{' '.join(fields)}]"
    for text, (name, low, high, names) in zip(fields, _FIELDS, strict=True):
        for part in filter(None, text.split(",")):
            why = _range_problem(part, low, high, names)
            if why:
                return f"{name}: {why}"
    return None


def _known_zone(zone: str) -> bool:
    """Go's `time.LoadLocation`: "" and "UTC" are UTC, "Local" the host's zone, else the tz database."""
    if zone in ("", "UTC", "Local"):
        return True
    try:
        zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _range_problem(expr: str, low: int, high: int, names: dict[str, int]) -> str | None:
    range_and_step = expr.split("/")
    bounds = range_and_step[0].split("-")
    if len(bounds) > 2:
        return f"too many hyphens: {expr}"
    if len(range_and_step) > 2:
        return f"too many slashes: {expr}"
    try:
        if bounds[0] in ("*", "?"):
            start, end = low, high
        else:
            start = _number(bounds[0], names)
            end = _number(bounds[1], names) if len(bounds) == 2 else start
        step = _number(range_and_step[1], {}) if len(range_and_step) == 2 else 1
    except ValueError as error:
        return str(error)
    if len(range_and_step) == 2 and len(bounds) == 1:
        end = high  # "n/step" means "n-highest/step"
    if start < low:
        return f"beginning of range ({start}) below minimum ({low}): {expr}"
    if end > high:
        return f"end of range ({end}) above maximum ({high}): {expr}"
    if start > end:
        return f"beginning of range ({start}) beyond end of range ({end}): {expr}"
    if step == 0:
        return f"step of range should be a positive number: {expr}"
    return None


def _number(text: str, names: dict[str, int]) -> int:
    if text.lower() in names:
        return names[text.lower()]
    if not _INT.fullmatch(text):
        raise ValueError(f"failed to parse int from {text}")
    if int(text) < 0:
        raise ValueError(f"negative number ({int(text)}) not allowed: {text}")
    return int(text)
