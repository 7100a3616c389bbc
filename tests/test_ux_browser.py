"""Everyday use in a real browser at 1280 and 390 px (issue 23): search as
cards on a phone, the search form writing the query, paging, a message's
way back and to its neighbours, the print view, System Status for a new
tenant, readable charts, API tokens and the team; axe-core on every page
(no serious or critical violation) and keyboard-only sign-up, search and
message page.  Screenshots of every page at both widths go to
test-artifacts/screenshots/ (`ux-<width>-NN-<page>.png`)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from tests.archive_support import archive, archive_corpus, corpus
from tests.browser_support import SCREENSHOTS, TIMEOUT_MS
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db(transaction=True)

AXE = Path(__file__).resolve().parent / "axe" / "axe.min.js"
AXE_SHA256 = "b511cd9dec01c76f4b2ad1723b66b6db37d4c2eb4ed199076e1829d9ee7b75e3"  # axe-core 4.10.2, tests/axe/README.md
WIDTHS = (1280, 390)

# Every page a signed-in owner reaches from the menu, and the signed-out ones.
OWNER_PAGES = [
    ("status", "/status/"),
    ("charts", "/status/charts/"),
    ("search", "/search/"),
    ("exports", "/exports/"),
    ("team", "/team/"),
    ("domains", "/domains/"),
    ("import", "/import/"),
    ("audit", "/audit/"),
    ("holds", "/holds/"),
    ("tokens", "/settings/tokens/"),
    ("m365", "/settings/m365/"),
    ("retention", "/settings/retention/"),
    ("account-email", "/accounts/email/"),
    ("account-password", "/accounts/password/change/"),
]
PUBLIC_PAGES = [
    ("home", "/"),
    ("sign-in", "/accounts/login/"),
    ("sign-up", "/accounts/signup/"),
    ("password-reset", "/accounts/password/reset/"),
    ("password-reset-done", "/accounts/password/reset/done/"),
]


class Shots:
    """`ux-<width>-NN-<name>.png`, full page."""

    def __init__(self, width: int | str):
        self.width = width
        self.count = 0
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for old in SCREENSHOTS.glob(f"ux-{width}-*.png"):
            old.unlink()

    def __call__(self, page, name: str) -> None:
        self.count += 1
        page.screenshot(path=str(SCREENSHOTS / f"ux-{self.width}-{self.count:02d}-{name}.png"), full_page=True)


def check_accessibility(page, name: str) -> None:
    """axe-core on the page as it is: no serious or critical violation."""
    # Not add_script_tag: the site's Content-Security-Policy (rightly) refuses
    # an inline script; an evaluated script runs beside it, as a devtool does.
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.evaluate(AXE.read_text(encoding="utf-8") + "\n;undefined")
    result = page.evaluate("() => axe.run(document, {resultTypes: ['violations']})")
    assert result["testEngine"]["version"] == "4.10.2"
    bad = [v for v in result["violations"] if v["impact"] in ("serious", "critical")]
    described = [f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}" for v in bad]
    assert not bad, f"{name}: " + "; ".join(described)


def fits(page, name: str, width: int) -> None:
    scroll = page.evaluate("document.documentElement.scrollWidth")
    if scroll > width:
        wide = page.evaluate(
            """(w) => [...document.querySelectorAll('body *')]
                .filter(e => e.getBoundingClientRect().right > w)
                .filter(e => !(e.parentElement && e.parentElement.closest('.table-wrap'))).slice(0, 8)
                .map(e => `${e.tagName}#${e.id}.${e.className} ${Math.round(e.getBoundingClientRect().right)}`)""",
            width,
        )
        raise AssertionError(f"{name} scrolls sideways at {width}px ({scroll}px): {wide}")


def charts_are_readable(page) -> None:
    """Every label inside its drawing (none cut by an edge), text no smaller than 9 px on screen."""
    cut = page.evaluate(
        """() => [...document.querySelectorAll('svg.chart__svg')].flatMap(svg => {
            const box = svg.getBoundingClientRect();
            return [...svg.querySelectorAll('text')].filter(t => {
                const r = t.getBoundingClientRect();
                return r.left < box.left - 1 || r.right > box.right + 1 || r.height < 9;
            }).map(t => `${svg.closest('figure').id}: ${t.textContent}`);
        })"""
    )
    assert not cut, f"chart labels cut or too small: {cut[:10]}"
    # The backlog says there is nothing waiting, rather than labels over empty tracks.
    assert page.locator("#chart-backlog-nothing").is_visible()


def sign_in(page, email: str) -> None:
    page.goto("/accounts/login/")
    page.fill("#id_login", email)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/status/")


def context_at(browser, live_server, width: int):
    context = browser.new_context(viewport={"width": width, "height": 900}, base_url=live_server.url)
    context.set_default_timeout(TIMEOUT_MS)
    return context


def test_the_vendored_axe_core_is_the_pinned_release():
    assert hashlib.sha256(AXE.read_bytes()).hexdigest() == AXE_SHA256


@pytest.mark.parametrize("width", WIDTHS)
def test_every_page_is_accessible_and_fits_at_both_widths(browser, live_server, org, width):
    archive_corpus(org.tenant)
    shots = Shots(width)
    context = context_at(browser, live_server, width)
    page = context.new_page()
    # The check finds what it should: a form field with no name, an image with no text.
    page.goto("/")
    page.evaluate("""() => document.querySelector('main').insertAdjacentHTML('beforeend',
        '<input type=text><img src=/static/web/favicon.svg>')""")
    with pytest.raises(AssertionError, match="label|image-alt"):
        check_accessibility(page, "broken on purpose")
    for name, path in PUBLIC_PAGES:
        page.goto(path)
        fits(page, name, width)
        check_accessibility(page, name)
        shots(page, name)
    sign_in(page, "alice@contoso.com")
    for name, path in OWNER_PAGES:
        response = page.goto(path)
        assert response.status == 200, path
        fits(page, name, width)
        check_accessibility(page, name)
        if name == "charts":
            charts_are_readable(page)
        shots(page, name)
    # A message, reached from the results, and its print view.
    page.goto("/search/")
    page.locator("#results .result__subject a").first.click()
    page.wait_for_url("**/messages/**")
    fits(page, "message", width)
    check_accessibility(page, "message")
    shots(page, "message")
    page.click("#print-view")
    page.wait_for_url("**view=print**")
    assert page.locator(".site-header").is_hidden()
    check_accessibility(page, "message-print")
    shots(page, "message-print")
    context.close()


@pytest.mark.parametrize("width", WIDTHS)
def test_search_reads_as_cards_on_a_phone_and_the_form_teaches_the_syntax(
    browser, live_server, org, width, monkeypatch
):
    monkeypatch.setattr("web.search.PAGE_SIZE", 3)
    archive_corpus(org.tenant)
    context = context_at(browser, live_server, width)
    page = context.new_page()
    sign_in(page, "alice@contoso.com")
    page.goto("/search/")
    first = page.locator("#results tr.result").first
    subject = first.locator(".result__subject a")
    box = subject.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width, box
    for part in (".result__from", ".result__date"):
        part_box = first.locator(part).bounding_box()
        assert part_box is not None and part_box["x"] + part_box["width"] <= width, part
    if width < 700:
        # Cards: the subject is the first line of its card, above sender and date.
        assert box["y"] < first.locator(".result__from").bounding_box()["y"]
        assert page.locator("#results thead").bounding_box()["height"] <= 1
    assert re.fullmatch(r"1–3 of \d+ messages archived, newest first", page.inner_text("#result-count"))

    # The form writes the query language into the box as you type.
    page.click(".search-builder summary")
    page.fill("#f_from", "alice@contoso.com")
    page.check("#f_has")
    assert page.input_value("#q") == "from:alice@contoso.com has:attachment"
    page.fill("#f_from", "")
    assert page.input_value("#q") == "has:attachment"
    page.fill("#f_after", "2020-01-01")
    assert page.input_value("#q") == "has:attachment after:2020-01-01"
    page.click("#search-builder button[type=submit]")
    page.wait_for_url(re.compile(r"q=has%3Aattachment\+after%3A2020-01-01"))
    assert page.locator("#results tr.result").count() >= 1

    # Paging both ways, oldest first, and back from a message to the same page.
    page.fill("#q", "")
    page.select_option("#sort", "oldest")
    page.click("#search-box-form button[type=submit]")
    page.wait_for_url("**sort=oldest**")
    page.click(".pager a[rel=next]")
    page.wait_for_url("**page=2**")
    assert page.inner_text("#result-count").startswith("4–6 of ")
    second_page_subject = page.locator("#results .result__subject a").nth(1).inner_text()
    page.locator("#results .result__subject a").nth(1).click()
    page.wait_for_url("**/messages/**")
    assert page.inner_text("#message-subject") == second_page_subject.removesuffix("…")
    page.click("#next-message")
    page.wait_for_url("**n=5**")
    page.click("#previous-message")
    page.wait_for_url("**n=4**")
    assert page.inner_text("#message-subject") == second_page_subject.removesuffix("…")
    page.click("#back-to-search")
    page.wait_for_url(re.compile(r"/search/\?sort=oldest&page=2$"))
    assert page.inner_text("#result-count").startswith("4–6 of ")
    page.click(".pager a[rel=prev]")
    page.wait_for_url("**page=1**")

    # A syntax error says what to type.
    page.fill("#q", "from:")
    page.press("#q", "Enter")
    assert "from: needs an address, e.g. from:anna@contoso.com" in page.inner_text("#search-error")
    context.close()


def test_keyboard_only_sign_up_search_and_message(browser, live_server, org, settings):
    archive_corpus(org.tenant)
    context = context_at(browser, live_server, 1280)
    page = context.new_page()

    def tab_to(selector: str, limit: int = 60) -> None:
        for _ in range(limit):
            page.keyboard.press("Tab")
            if page.evaluate("(s) => document.activeElement && document.activeElement.matches(s)", selector):
                return
        raise AssertionError(f"Tab never reaches {selector}")

    page.goto("/accounts/signup/")
    tab_to("#id_organization")
    page.keyboard.type("Keyboard Traders")
    tab_to("#id_email")
    page.keyboard.type("kim@keyboard.example")
    tab_to("#id_password1")
    page.keyboard.type(PASSWORD)
    tab_to("#id_password2")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url("**/accounts/confirm-email/**")
    check_accessibility(page, "verification-sent")

    # Search and the message page, as the owner of Contoso, keys only.
    page2 = context_at(browser, live_server, 1280).new_page()
    sign_in(page2, "alice@contoso.com")
    page2.goto("/search/")
    assert page2.evaluate("document.activeElement.id") == "q"  # the box has the focus
    page2.keyboard.type("subject:quarterly")
    page2.keyboard.press("Enter")
    page2.wait_for_url(re.compile(r"q=subject%3Aquarterly"))
    page = page2
    tab_to("#results .result__subject a")
    page.keyboard.press("Enter")
    page.wait_for_url("**/messages/**")
    assert "Quarterly" in page.inner_text("#message-subject")
    tab_to("#back-to-search")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/search/\?q=subject%3Aquarterly$"))
    context.close()


@pytest.mark.parametrize("width", WIDTHS)
def test_setup_first_tokens_and_team_at_both_widths(browser, live_server, org, width):
    """A new tenant's System Status leads with the four steps; an admin makes a
    search:read token and copies it; invites three people at once; leaves."""
    context = context_at(browser, live_server, width)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    page = context.new_page()
    sign_in(page, "bob@contoso.com")
    shots = Shots(f"{width}-admin")
    assert page.locator("#setup").bounding_box()["y"] < page.locator("#counters-heading").bounding_box()["y"]
    assert page.locator("#setup-checks li").count() == 4
    assert "only mail sent or received from now on" in page.inner_text("#from-now-on")
    page.click("#setup-reload")
    page.wait_for_url("**/status/#setup")
    # A journal report arrives while the page is open: the checks refresh in place
    # (every 20 s, or at once when the tab becomes visible again, as here).
    assert "check--ok" not in page.get_attribute("#check-journal", "class")
    archive(org.tenant, corpus("01-simple.eml"))
    page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
    page.wait_for_selector("#check-journal.check--ok")
    assert page.get_attribute("#setup-checks", "data-refreshed") == "1"
    # The journal address wraps at its @ or not at all: its local part stays on one line.
    local = page.locator("#journal-recipient .nowrap").first
    assert local.bounding_box()["height"] < 30
    fits(page, "status", width)
    shots(page, "status-setup")

    page.goto("/settings/tokens/")
    page.fill("#id_name", "reader")
    page.select_option("#id_scope", "search:read")
    page.click("form.form button[type=submit]")
    secret = page.inner_text("#new-token").strip()
    assert secret.startswith("arc_") and page.inner_text("#new-token-scope") == "search:read"
    page.click("#copy-new-token")
    assert page.evaluate("navigator.clipboard.readText()") == secret
    check_accessibility(page, "tokens-created")
    shots(page, "token-created")
    api = page.request.get("/api/v1/status", headers={"Authorization": f"Bearer {secret}"})
    assert api.status == 403 and "search:read" in api.json()["error"]

    page.goto("/team/")
    page.click("#invite-many summary")
    page.fill("#id_addresses", "frank@contoso.com\ngina@contoso.com, auditor\nhal@contoso.com")
    page.click("#send-invitations")
    page.wait_for_url("**/team/")
    text = page.inner_text("#pending-invitations")
    assert all(a in text for a in ("frank@contoso.com", "gina@contoso.com", "hal@contoso.com"))
    assert "Auditor" in page.locator("#pending-invitations tr", has_text="gina@contoso.com").inner_text()
    fits(page, "team", width)
    check_accessibility(page, "team-invited")
    shots(page, "team-invited")
    own = page.locator("details", has=page.locator("#leave-team"))
    own.locator("summary").click()
    assert page.inner_text("#leave-team") == "Leave"
    shots(page, "team-leave")
    context.close()
