"""Postgres connection strings as Neon's console prints them, made fit for asyncpg."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

logger = logging.getLogger("support_worker.db")


def _strip_query_params(url: str, names: set[str]) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    kept, removed = [], {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in names:
            removed[key] = value
        else:
            kept.append((key, value))
    return urlunsplit(parts._replace(query=urlencode(kept))), removed


def connect_options(database_url: str) -> tuple[str, dict[str, Any]]:
    """Turn a connection string as Neon's console prints it into asyncpg arguments.

    - `channel_binding=require` is a libpq option asyncpg does not know; asyncpg would
      forward it to the server as a run-time setting and the server refuses to start the
      session. We drop it (asyncpg still authenticates with SCRAM-SHA-256 over TLS).
    - `sslmode=require` is understood by asyncpg as it is.
    - A `-pooler` host is PgBouncer in transaction mode, where a prepared statement made on
      one server connection is gone on the next; asyncpg's statement cache must be off.
    """
    dsn, removed = _strip_query_params(database_url, {"channel_binding"})
    if removed:
        logger.info("ignoring libpq-only options asyncpg does not support: %s", sorted(removed))
    options: dict[str, Any] = {}
    host = urlsplit(dsn).hostname or ""
    if "-pooler." in host:
        options["statement_cache_size"] = 0
    return dsn, options


def direct_url(database_url: str) -> str:
    """Neon's direct endpoint for a pooled (`-pooler`) URL; any other URL as it is.

    Migrating holds a session-level advisory lock across several transactions, which
    PgBouncer's transaction mode cannot keep (each transaction may land on another server
    connection). Neon's direct endpoint is the same host without `-pooler`.
    """
    parts = urlsplit(database_url)
    if "-pooler." not in (parts.hostname or ""):
        return database_url
    credentials, at, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=credentials + at + host.replace("-pooler.", ".", 1)))
