"""Money as people read it. Amounts are integer cents everywhere else (they cross step JSON)."""

from __future__ import annotations


def format_money(cents: int) -> str:
    """Cents as dollars with thousands separators: 129900 -> "$1,299.00", -50 -> "-$0.50"."""
    sign = "-" if cents < 0 else ""
    dollars, rest = divmod(abs(cents), 100)
    return f"{sign}${dollars:,}.{rest:02d}"
