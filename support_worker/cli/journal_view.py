"""`support-worker run <run-id>`: a durable run's agent journal, entry by entry.

What the dashboard's step outputs summarize (turns, tool calls, the pause), the journal holds in
full: the intake, each model turn (the tools it called, or its answer), each tool's result and
each refund request opened. Read-only; `cli/parsing.py` registers the command, `cli/main.py`
imports this module only when it runs.
"""

from __future__ import annotations

import argparse

import db
from support_worker.cli.listings import print_rows
from support_worker.core.settings import Settings
from support_worker.durable import journal
from support_worker.store import agent_journal


async def run_journal(settings: Settings, run_id: str, *, as_json: bool = False) -> int:
    """Print the run's journal; 1 (and a line saying so) when it has none."""
    async with db.open_pool(settings, max_size=1) as pool:
        entries = await agent_journal.entries(pool, run_id=run_id)
    if not entries:
        print(
            f"No journal for run {run_id}: it never ran the agent, or its journal is older than "
            f"AGENT_JOURNAL_RETENTION_DAYS ({settings.agent_journal_retention_days})."
        )
        return 1
    print_rows(journal.describe(entries), as_json=as_json, empty="")
    return 0


async def command(settings: Settings, args: argparse.Namespace) -> int:
    return await run_journal(settings, args.run_id, as_json=args.json)
