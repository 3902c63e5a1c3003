"""Money as people read it. Amounts are integer cents everywhere else."""

from __future__ import annotations


def format_money(cents: int) -> str:
    """`129900` -> `$1,299.00`."""
    return f"${cents / 100:,.2f}"
