"""`support-worker migrate | seed | up`: the schema, the sample data, and everything started at once."""

from __future__ import annotations

import argparse
import sys

import db
from support_worker.core.settings import Settings
from support_worker.ops import launcher
from support_worker.store import sample_data, schema
from support_worker.workflows import notify


async def migrate_database(settings: Settings, args: argparse.Namespace) -> int:
    conn = await db.connect(settings)
    try:
        applied = await schema.migrate_database(conn)
    finally:
        await conn.close()
    print(f"migrated: applied {', '.join(applied)}" if applied else "migrated: nothing to apply, the schema is current")
    return 0


async def seed(settings: Settings, args: argparse.Namespace) -> int:
    if settings.environment != "development":
        print(
            "Not seeding: the sample customers are made up, and ENVIRONMENT is production. "
            "Seed a development database (ENVIRONMENT=development) instead.",
            file=sys.stderr,
        )
        return 1
    async with db.open_pool(settings, max_size=1) as pool:
        seeded = await sample_data.seed(pool)
    if seeded:
        first, last = sample_data.CUSTOMERS[0][0], sample_data.CUSTOMERS[-1][0]
        print(f"seeded: {len(sample_data.CUSTOMERS)} sample customers ({first} to {last}) with orders (ids from 1001)")
    else:
        print("seed: nothing to do, customers already has rows (sample data only goes into an empty database)")
    return 0


async def notifier_status(settings: Settings) -> str:
    """How reviewers hear about waiting refunds, and whether Slack last refused the webhook."""
    if not settings.reviewer_webhook_url:
        return "off (REVIEWER_WEBHOOK_URL is not set; refunds wait on the desk)"
    async with db.open_pool(settings, max_size=1) as pool:
        problem = await notify.configuration_problem(pool)
    return problem or "REVIEWER_WEBHOOK_URL is set"


def up(settings: Settings, args: argparse.Namespace) -> int:
    """Database, migrations and (in development) seed; the host; the dev server when it can be fetched."""

    async def prepare() -> str:
        where = "DATABASE_URL" if settings.database_url else f"embedded PostgreSQL in {settings.embedded_pg_dir}"
        await migrate_database(settings, args)
        notifications = f"\nreviewer notifications: {await notifier_status(settings)}"
        if settings.environment != "development":
            return f"{where} (migrated; no sample data outside ENVIRONMENT=development){notifications}"
        await seed(settings, args)
        return f"{where} (migrated, sample data seeded if empty){notifications}"

    return launcher.up(settings, args, prepare=prepare)
