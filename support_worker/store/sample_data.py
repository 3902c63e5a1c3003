"""Six sample customers with orders, for development and tests; never seeded by a migration.

`support-worker seed` (and `support-worker up` when ENVIRONMENT=development) inserts them, only
into an empty `customers` table. Customer ids are text, in the shape the course's events use:
"c-4429" (Grace, pro) is the customer of 001's walk-throughs, "c-test-1" the one 003 D8's
happy path writes from. Orders are numbered from 1001 in this order (README and docs
walk-throughs and tests name them; c-test-1's are 1012 and 1013).
"""

from __future__ import annotations

import asyncpg

from db import Tier

# (id, email, name, tier, [(order description, amount in cents, order status), ...])
CUSTOMERS: list[tuple[str, str, str, Tier, list[tuple[str, int, str]]]] = [
    (
        "c-4428",
        "ada@example.com",
        "Ada Lovelace",
        "enterprise",
        [("Analytical engine support plan", 129_900, "paid"), ("Punch card refills", 4_999, "delivered")],
    ),
    (
        "c-4429",
        "grace@example.com",
        "Grace Hopper",
        "pro",
        [
            ("Compiler license", 49_900, "paid"),
            ("Debugging moth kit", 1_999, "shipped"),
            ("Nanosecond wire bundle", 2_500, "failed"),
        ],
    ),
    (
        "c-4430",
        "alan@example.com",
        "Alan Turing",
        "pro",
        [("Enigma rotor set", 15_000, "delivered"), ("Tape reel", 899, "paid")],
    ),
    (
        "c-4431",
        "katherine@example.com",
        "Katherine Johnson",
        "free",
        [("Orbital mechanics handbook", 3_450, "delivered"), ("Slide rule", 2_200, "paid")],
    ),
    (
        "c-4432",
        "linus@example.com",
        "Linus Torvalds",
        "free",
        [("Mechanical keyboard", 11_900, "delivered"), ("Penguin plush", 1_500, "failed")],
    ),
    (
        "c-test-1",
        "test-customer@example.com",
        "Tess Tester",
        "free",
        [("Monthly plan", 2_900, "paid"), ("Setup fee", 4_900, "delivered")],
    ),
]

ADA, GRACE, ALAN, KATHERINE, LINUS, TEST_CUSTOMER = (customer[0] for customer in CUSTOMERS)

# Seeders in several processes at once queue here; the first inserts, the rest find rows.
SEED_LOCK_KEY = 7262612


async def seed(pool: asyncpg.Pool) -> bool:
    """Insert the sample customers and orders when there are no customers at all.

    Returns whether it inserted anything. Never touches a database that has customers, so
    running it against real data is harmless.
    """
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", SEED_LOCK_KEY)
        if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM customers)"):
            return False
        for customer_id, email, name, tier, orders in CUSTOMERS:
            await conn.execute(
                "INSERT INTO customers (id, email, name, tier) VALUES ($1, $2, $3, $4)",
                customer_id,
                email,
                name,
                tier,
            )
            for description, amount_cents, status in orders:
                await conn.execute(
                    "INSERT INTO orders (customer_id, description, amount_cents, status) VALUES ($1, $2, $3, $4)",
                    customer_id,
                    description,
                    amount_cents,
                    status,
                )
    return True
