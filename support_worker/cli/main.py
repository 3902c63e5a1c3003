"""`support-worker`: parse the arguments, then import only what the command needs.

`--help`, `--version` and argument errors are answered by `parsing` alone, in a fraction of a
second; each command's module imports the Agents SDK, openai, inngest or asyncpg itself. Ctrl-C
at any moment after start-up ends the command with exit code 130 and one line, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from support_worker.cli.parsing import parser, refusal, worker_argv

if TYPE_CHECKING:
    from support_worker.core.settings import Settings

__all__ = ["email_main", "main", "parser", "run", "run_async", "worker_argv"]

INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a command stopped by Ctrl-C

# Each async command, as (module under support_worker.cli, function): imported when it runs.
COMMANDS = {
    "send-email": ("sending", "send_email"),
    "answer": ("answering", "answer"),
    "migrate": ("database", "migrate_database"),
    "seed": ("database", "seed"),
    "pending": ("listings", "pending"),
    "audit": ("listings", "audit"),
    "list": ("listings", "list_customers"),
}


async def run_async(args: argparse.Namespace, settings: Settings) -> int:
    refused = refusal(args)
    if refused:
        print(refused, file=sys.stderr)
        return 2
    if args.command in ("approve", "reject", "edit"):
        return await _decide(args, settings)
    module, function = COMMANDS[args.command]
    command = getattr(importlib.import_module(f"support_worker.cli.{module}"), function)
    code: int = await command(settings, args)
    return code


async def _decide(args: argparse.Namespace, settings: Settings) -> int:
    from support_worker.cli import deciding

    if args.request_id.startswith("esc_"):
        return await deciding.decide_escalation(settings, args)
    return await deciding.decide(settings, args, approved=args.command == "approve")


def run(argv: Sequence[str], settings: Settings | None = None) -> int:
    """Run one command; a failure a person can act on is one line on stderr, not a traceback."""
    args = parser().parse_args(argv)
    try:
        return _run_parsed(args, settings)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return INTERRUPTED
    except Exception as error:
        message = _one_line(error, settings)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 1


def _run_parsed(args: argparse.Namespace, settings: Settings | None) -> int:
    from support_worker.core.settings import get_settings

    settings = settings or get_settings()
    if args.command == "up":
        from support_worker.cli import database

        return database.up(settings, args)
    if args.command == "bench":
        from support_worker.ops import bench  # a development tool: it needs the `dev` extra (the test driver)

        return bench.main(quick=args.quick)
    import asyncio

    return asyncio.run(run_async(args, settings))


def _one_line(error: Exception, settings: Settings | None) -> str | None:
    """What to tell a person about `error`, or None for a bug (which keeps its traceback).

    Only a module the command imported can have raised its errors, so the modules are looked
    up in `sys.modules` rather than imported here (openai alone takes a second to import).
    """
    said = _loaded("support_worker.store.migrate", "MigrationError")
    said += _loaded("support_worker.store.postgres", "DatabaseUnreachable")
    said += _loaded("support_worker.conversation.loop", "TerminalSessionEnded")
    if isinstance(error, said):
        return str(error)  # each already says what happened and what to do
    if isinstance(error, _loaded("openai", "APIConnectionError")):
        where = (settings.openai_base_url if settings else None) or "the OpenAI API"
        return (
            f"Cannot reach {where} ({error}). Check the network or OPENAI_BASE_URL; without OPENAI_API_KEY and "
            "OPENAI_BASE_URL the offline rule-based model answers instead."
        )
    if isinstance(error, _loaded("openai", "AuthenticationError")):
        return "OpenAI refused OPENAI_API_KEY; set a valid key, or unset it to use the offline rule-based model."
    return None


def _loaded(module: str, name: str) -> tuple[type, ...]:
    """The class `module.name` as a one-tuple for `isinstance`, or () when `module` was never imported."""
    loaded = sys.modules.get(module)
    return (getattr(loaded, name),) if loaded is not None else ()


def _main(argv: Sequence[str]) -> int:
    try:
        # The command line speaks for itself; library warnings are for the host's logs.
        logging.basicConfig(level=logging.ERROR, format="%(message)s")
        return run(argv)
    except KeyboardInterrupt:  # Ctrl-C while the arguments were parsed: nothing started yet
        return INTERRUPTED


def main() -> None:
    sys.exit(_main(sys.argv[1:]))


def email_main() -> None:
    """`support-worker-email`: the terminal runner's old flags, mapped onto the one CLI."""
    sys.exit(_main(worker_argv(sys.argv[1:])))
