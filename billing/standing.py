"""A tenant's standing: what its billing state allows, and what the admins are told.

Never lose mail for money: nothing here is ever asked by the ingest, which
accepts and archives journal reports whatever the standing.  What money
changes is the web side, and only after a grace period:

    free       billing off (no STRIPE_SECRET_KEY): everything, always
    trial      everything until the trial ends; then 14 days of grace
    active     everything
    past_due   a payment failed: 14 days of grace, then read-only
    canceled   read-only (searchable, exportable) for 30 days, then closed

Read-only: search, message view and export still work; nothing else
changes (web.billing's gate).  Closed: only the billing page, to resume.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from billing.models import BillingAccount, BillingStatus

GRACE = dt.timedelta(days=14)
READABLE_AFTER_CANCEL = dt.timedelta(days=30)
TRIAL_REMINDER = dt.timedelta(days=7)


class Access:
    FULL = "full"
    READ_ONLY = "read_only"
    CLOSED = "closed"


@dataclass(frozen=True)
class Standing:
    status: str  # "free" or a BillingStatus value
    access: str  # Access.*
    notice: str = ""  # the admins' banner; "" for none
    level: str = "info"  # info, warn, danger
    until: dt.datetime | None = None  # when the notice's deadline falls (trial end, grace end, closing)

    @property
    def read_only(self) -> bool:
        return self.access != Access.FULL

    @property
    def closed(self) -> bool:
        return self.access == Access.CLOSED


FREE = Standing(status="free", access=Access.FULL)


def _day(moment: dt.datetime) -> str:
    return f"{moment:%d %b %Y}"


def standing_of(account: BillingAccount, now: dt.datetime) -> Standing:
    """What `account`'s state allows at `now` (billing on)."""
    if account.status == BillingStatus.ACTIVE:
        if account.cancel_at_period_end and account.current_period_end:
            end = account.current_period_end
            return Standing(account.status, Access.FULL, f"Your subscription ends on {_day(end)}.", "info", end)
        return Standing(account.status, Access.FULL)
    if account.status == BillingStatus.TRIAL:
        return _trial(account, now)
    if account.status == BillingStatus.PAST_DUE:
        since = account.past_due_since or now
        return _overdue(account.status, since + GRACE, now, "A payment failed")
    canceled = account.canceled_at or now
    closes = canceled + READABLE_AFTER_CANCEL
    if now < closes:
        text = (
            f"Your subscription is canceled: the archive is read-only, searchable and exportable until {_day(closes)}."
        )
        return Standing(account.status, Access.READ_ONLY, text + " Mail is still archived.", "danger", closes)
    text = "Your subscription is canceled: search and export are closed. Mail is still archived; resume to open it."
    return Standing(account.status, Access.CLOSED, text, "danger", closes)


def _trial(account: BillingAccount, now: dt.datetime) -> Standing:
    ends = account.trial_ends
    if account.stripe_subscription_id or now < ends - TRIAL_REMINDER:
        return Standing(account.status, Access.FULL, until=ends)
    if now < ends:
        return Standing(
            account.status,
            Access.FULL,
            f"Your trial ends on {_day(ends)}: subscribe to keep full access.",
            "info",
            ends,
        )
    return _overdue(account.status, ends + GRACE, now, "Your trial has ended")


def _overdue(status: str, grace_ends: dt.datetime, now: dt.datetime, what: str) -> Standing:
    if now < grace_ends:
        text = (
            f"{what}. Mail is still archived; pay by {_day(grace_ends)} or the archive becomes read-only "
            "(search and export only)."
        )
        return Standing(status, Access.FULL, text, "warn", grace_ends)
    text = f"{what}: the archive is read-only (search and export only) until paid. Mail is still archived."
    return Standing(status, Access.READ_ONLY, text, "danger", grace_ends)
