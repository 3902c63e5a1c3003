"""The one money formatter the desk, the notifications and the replies share."""

from __future__ import annotations

import pytest

from support_worker.core.money import format_money


@pytest.mark.parametrize(
    ("cents", "shown"),
    [
        (0, "$0.00"),
        (5, "$0.05"),
        (49_900, "$499.00"),
        (129_900, "$1,299.00"),
        (123_456_789, "$1,234,567.89"),
        (-50, "-$0.50"),
    ],
)
def test_cents_read_as_dollars_with_thousands_separators(cents: int, shown: str) -> None:
    assert format_money(cents) == shown
