"""What production refuses from an operator, beyond placeholders: weak secrets, malformed
signing keys, an origin that is not one, and a reviewer list that cannot be read one way.

`settings.production_problems` lists these with the rest; `parse_reviewers` is how
REVIEW_DESK_USERS is read in every environment, so an ambiguous list never starts anything.
The rules, as docs/configuration.md states them:

- DESK_FORM_SECRET: at least 32 characters.
- Reviewer passwords and WEBHOOK_PASSWORD: at least 12 characters, and not the user's own name
  (compared as reviewer identities: `alice:ALICE` is refused).
- INNGEST_SIGNING_KEY: `signkey-<env>-<hex>` as the Inngest SDK reads it (it strips the prefix
  and decodes the rest as hex), with at least 32 hex digits, and nothing else: no whitespace,
  no newline.
- Every secret: no leading or trailing whitespace (a newline pasted into a key is refused).
- INNGEST_SERVE_ORIGIN: `https://host[:port]`, nothing after it (a trailing `/` is allowed).
- REVIEW_DESK_USERS: `name:password` pairs separated by commas (the first `:` ends the name,
  so a password may hold `:`), or, for passwords that hold commas, a JSON object
  `{"name": "password", ...}`. A pair without `:`, an empty name or password, or two names that
  are one reviewer identity is refused in every environment.
"""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

from support_worker.core.identity import reviewer_identity

MIN_FORM_SECRET_CHARS = 32
MIN_PASSWORD_CHARS = 12
MIN_SIGNING_KEY_HEX_DIGITS = 32
SIGNING_KEY = re.compile(r"signkey-[A-Za-z0-9_]+-(?P<hex>[0-9a-fA-F]+)")


def parse_reviewers(raw: str) -> dict[str, str]:
    """REVIEW_DESK_USERS as name -> password, or ValueError saying where it is ambiguous
    (by position, never quoting a password)."""
    text = raw.strip()
    if not text:
        return {}
    if text.startswith("{"):
        return _reviewers_from_json(text)
    found: dict[str, str] = {}
    for n, item in enumerate(text.split(","), start=1):
        name, colon, password = item.strip().partition(":")
        if not colon or not name.strip() or not password:
            raise ValueError(
                f"REVIEW_DESK_USERS: item {n} is not name:password (a password cannot hold a comma in this "
                'form; write the list as JSON instead: {"alice": "a,b", "bob": "..."})'
            )
        _add(found, name.strip(), password)
    return found


def _reviewers_from_json(text: str) -> dict[str, str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"REVIEW_DESK_USERS looks like JSON but is not valid JSON (at char {error.pos})") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ValueError('REVIEW_DESK_USERS as JSON must be an object of names to passwords: {"alice": "..."}')
    found: dict[str, str] = {}
    for name, password in data.items():
        if not name.strip() or not password:
            raise ValueError("REVIEW_DESK_USERS: every reviewer needs a name and a password")
        _add(found, name.strip(), password)
    return found


def _add(found: dict[str, str], name: str, password: str) -> None:
    identity = reviewer_identity(name)
    if not identity:
        raise ValueError("REVIEW_DESK_USERS: a reviewer's name is empty once invisible characters are removed")
    clash = next((other for other in found if reviewer_identity(other) == identity), None)
    if clash is not None:
        raise ValueError(
            f"REVIEW_DESK_USERS names {name!r} and {clash!r}, which are one reviewer (names are compared "
            "case-folded and Unicode-normalized); four eyes would count them once"
        )
    found[name] = password


def signing_key_problem(key: str) -> str | None:
    match = SIGNING_KEY.fullmatch(key)
    if match is None:
        shape = "has whitespace in it" if key != "".join(key.split()) else "is not signkey-<env>-<hex>"
        return f"INNGEST_SIGNING_KEY {shape}; copy it again from the Inngest dashboard (Manage > Signing key)"
    digits = match.group("hex")
    if len(digits) % 2 or len(digits) < MIN_SIGNING_KEY_HEX_DIGITS:
        return (
            f"INNGEST_SIGNING_KEY has {len(digits)} hex digits after its prefix; Inngest's keys have an even "
            f"number, at least {MIN_SIGNING_KEY_HEX_DIGITS}: copy it again from the Inngest dashboard"
        )
    return None


def origin_problem(origin: str) -> str | None:
    """Why INNGEST_SERVE_ORIGIN is not `https://host[:port]`, or None."""
    parts = urlsplit(origin)
    try:
        parts.port  # noqa: B018 (raises on a port that is not a number in range)
    except ValueError:
        return f"INNGEST_SERVE_ORIGIN has a port that is not a number from 1 to 65535: {origin!r}"
    if parts.scheme != "https" or not parts.hostname:
        return f"INNGEST_SERVE_ORIGIN must be https://host[:port] (e.g. https://support.example.com): {origin!r}"
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return f"INNGEST_SERVE_ORIGIN must not carry credentials: {parts.scheme}://{parts.hostname}"
    if parts.path not in ("", "/") or parts.query or parts.fragment or origin != origin.strip():
        return (
            f"INNGEST_SERVE_ORIGIN must be an origin only, https://host[:port], without a path, query or spaces "
            f"(the SDK would drop them): {origin!r}"
        )
    return None


def password_problem(where: str, *, name: str, password: str) -> str | None:
    if len(password) < MIN_PASSWORD_CHARS:
        return f"{where} is shorter than {MIN_PASSWORD_CHARS} characters; use a longer one"
    if reviewer_identity(password) == reviewer_identity(name):
        return f"{where} is the user's own name; choose a real password"
    return None


def form_secret_problem(secret: str) -> str | None:
    if len(secret) < MIN_FORM_SECRET_CHARS:
        return (
            f"DESK_FORM_SECRET is shorter than {MIN_FORM_SECRET_CHARS} characters; use e.g. "
            'python3 -c "import secrets; print(secrets.token_hex(32))"'
        )
    return None
