"""The "Test connection" button of a settings page (Microsoft 365, IMAP journaling).

Both pages do the same with it: refuse before the settings are saved, run
the check (which stores and audits its result), say how it went in a
message, and go back to the page's result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse


class Outcome(Protocol):
    @property
    def ok(self) -> bool: ...

    @property
    def error(self) -> str: ...


R = TypeVar("R", bound=Outcome)


def run_connection_test(
    request: HttpRequest,
    page: str,
    *,
    missing: str,
    check: Callable[[], R],
    success: Callable[[R], str],
) -> HttpResponse:
    """Run `check` and redirect to the URL named `page` with its outcome; `missing`,
    when not "", is what to enter and save first (nothing is tried)."""
    if missing:
        messages.error(request, missing)
        return redirect(page)
    result = check()
    if result.ok:
        messages.success(request, success(result))
    else:
        messages.error(request, f"The test failed: {result.error}")
    return redirect(reverse(page) + "#test-result")
