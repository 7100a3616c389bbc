"""Retention periods: "30d", "6m", "7y" or "forever", counted back from now in calendar terms.

A period in years or months is calendar arithmetic (7 years from 2019-02-28 is
2026-02-28), because that is how the laws that set them count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from dateutil.relativedelta import relativedelta

FOREVER = "forever"
UNITS = {"d": "days", "m": "months", "y": "years"}
MAX_YEARS = 200  # beyond it a period is a typo, not a policy
_PERIOD = re.compile(r"^\s*(\d{1,5})\s*([dmy])\s*$", re.IGNORECASE)


class PeriodError(ValueError):
    """A period that cannot be read; str(error) is a message for the user."""


@dataclass(frozen=True)
class Period:
    """`count` of `unit` ("d", "m" or "y"); count None is forever."""

    count: int | None
    unit: str = "d"

    @property
    def forever(self) -> bool:
        return self.count is None

    def __str__(self) -> str:
        return FOREVER if self.count is None else f"{self.count}{self.unit}"

    def cutoff(self, now: datetime) -> datetime | None:
        """Messages dated before this have outlived the period; None for forever."""
        if self.count is None:
            return None
        cutoff: datetime = now - relativedelta(**{UNITS[self.unit]: self.count})
        return cutoff

    def min_days(self) -> float:
        """The fewest days the period can last (months of 28 days, years of 365)."""
        if self.count is None:
            return float("inf")
        return {"d": 1, "m": 28, "y": 365}[self.unit] * self.count

    def max_days(self) -> float:
        if self.count is None:
            return float("inf")
        return {"d": 1, "m": 31, "y": 366}[self.unit] * self.count

    def at_least(self, other: Period) -> bool:
        """Whether this period is certainly no shorter than `other`, whatever the dates."""
        if self.count is None:
            return True
        if other.count is None:
            return False
        if (self.unit == "d") == (other.unit == "d"):  # same kind: exact
            return _in_unit(self) >= _in_unit(other)
        return self.min_days() >= other.max_days()


def _in_unit(period: Period) -> int:
    assert period.count is not None
    return period.count * 12 if period.unit == "y" else period.count


def parse_period(value: object) -> Period:
    """ "30d", "6m", "7y" or "forever" (case and spaces ignored); PeriodError otherwise."""
    if not isinstance(value, str):
        raise PeriodError("A period is text such as 30d, 6m, 7y or forever.")
    if value.strip().lower() == FOREVER:
        return Period(None)
    match = _PERIOD.match(value)
    if not match:
        raise PeriodError(f"“{value[:40]}” is not a period: write 30d, 6m, 7y or forever.")
    count, unit = int(match.group(1)), match.group(2).lower()
    if count == 0:
        raise PeriodError("A period must be at least one day.")
    if count * {"d": 1, "m": 30, "y": 365}[unit] > MAX_YEARS * 365:
        raise PeriodError(f"A period longer than {MAX_YEARS} years: use forever.")
    return Period(count, unit)
