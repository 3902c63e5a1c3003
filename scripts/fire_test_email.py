#!/usr/bin/env python3
"""Fire a test `customer/email.received` event (003 D4 Part B), without a real email.

    .venv/bin/python scripts/fire_test_email.py --customer-id c-4429 --body "I was charged twice for order 1003"

The event id comes from the customer and the current time, so running it again sends a new
email, while a resend of the same event is dropped. Prints the run id and its dashboard link
(from the dev server; `support-worker up` or `npx inngest-cli@latest dev` must be running).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from support_worker.cli.fire import fire_test_email
from support_worker.core.settings import get_settings


def parser() -> argparse.ArgumentParser:
    parse = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parse.add_argument("--customer-id", required=True, help='the customer writing, e.g. "c-4429"')
    parse.add_argument("--body", required=True, help="what the customer writes")
    parse.add_argument("--subject", default=None, help="the email's subject (optional)")
    return parse


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    fired = fire_test_email(get_settings(), customer_id=args.customer_id, body=args.body, subject=args.subject)
    return asyncio.run(fired)


if __name__ == "__main__":
    sys.exit(main())
