"""HTTP hardening: a strict Content-Security-Policy on every response, the
production settings read from the environment, and rate limits on sign-in
and sign-up."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from django.core.cache import cache
from django.http import HttpResponse
from django.test import RequestFactory
from django.urls import reverse

from infra.env import ConfigError
from tenants.actions import add_domain
from tenants.models import Membership
from tests.conftest import PASSWORD
from web.csp import HEADER, ContentSecurityPolicyMiddleware, csp_override, parse_extra

pytestmark = pytest.mark.django_db


def directives(header: str) -> dict[str, list[str]]:
    return {part.split()[0]: part.split()[1:] for part in header.split("; ")}


# --- Content-Security-Policy ------------------------------------------------------


def test_every_response_gets_a_strict_policy(client, org):
    client.force_login(org.owner)
    for url in ["/", reverse("status"), reverse("status-charts"), reverse("team"), "/static/web/archiva.css", "/nope"]:
        response = client.get(url)
        policy = directives(response[HEADER])
        assert policy["default-src"] == ["'self'"], url
        assert policy["script-src"] == ["'self'"]
        assert policy["style-src"] == ["'self'"]
        assert policy["frame-ancestors"] == ["'none'"]
        assert policy["object-src"] == ["'none'"]
        assert policy["base-uri"] == ["'none'"]
        assert "'unsafe-inline'" not in response[HEADER]
        assert "'unsafe-eval'" not in response[HEADER]


INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)(?![^>]*type=\"application/json\")[^>]*>", re.I)
INLINE_HANDLER = re.compile(r"<[^>]+\son[a-z]+=", re.I)
STYLE_ATTRIBUTE = re.compile(r"<[^>]+\sstyle=", re.I)


def test_our_pages_need_nothing_inline(client, org):
    """Nothing the policy would block: no inline script, handler or style attribute."""
    add_domain(Membership.objects.get(user=org.owner), "contoso.com")
    anonymous = ["/", reverse("account_signup"), reverse("account_login"), reverse("account_reset_password")]
    for url in anonymous:
        html = client.get(url).content.decode()
        assert not INLINE_SCRIPT.search(html), url
        assert not INLINE_HANDLER.search(html), url
        assert not STYLE_ATTRIBUTE.search(html), url
    client.force_login(org.owner)
    signed_in = [reverse("status"), reverse("status-charts"), reverse("team"), reverse("domains")]
    signed_in += [reverse("account_email"), reverse("account_change_password")]
    for url in signed_in:
        html = client.get(url).content.decode()
        assert not INLINE_SCRIPT.search(html), url
        assert not INLINE_HANDLER.search(html), url
        assert not STYLE_ATTRIBUTE.search(html), url


def test_a_view_may_set_its_own_policy_and_the_middleware_keeps_it():
    """E.g. a message view that shows the body in a sandboxed iframe."""
    own = "default-src 'none'; frame-ancestors 'self'"

    def view(request):
        response = HttpResponse("x")
        response[HEADER] = own
        return response

    response = ContentSecurityPolicyMiddleware(view)(RequestFactory().get("/"))
    assert response[HEADER] == own

    @csp_override(frame_src=["'self'"], default_src=["'none'"])
    def framed(request):
        return HttpResponse("x")

    policy = directives(ContentSecurityPolicyMiddleware(framed)(RequestFactory().get("/"))[HEADER])
    assert policy["frame-src"] == ["'self'"]
    assert policy["default-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]  # the rest stays strict


def test_extra_sources_extend_the_policy(settings):
    settings.ARCHIVA_CSP_EXTRA = "img-src https://cdn.example;  report-uri /csp-report ; img-src data:"
    header = ContentSecurityPolicyMiddleware(lambda r: HttpResponse())(RequestFactory().get("/"))[HEADER]
    policy = directives(header)
    assert policy["img-src"] == ["'self'", "data:", "https://cdn.example"]
    assert policy["report-uri"] == ["/csp-report"]
    assert policy["script-src"] == ["'self'"]


@pytest.mark.parametrize("extra", ["3d-src x", "img_src x"])
def test_a_malformed_extra_policy_stops_the_app(extra):
    with pytest.raises(ConfigError, match="ARCHIVA_CSP_EXTRA"):
        parse_extra(extra)


def test_the_other_protective_headers(client, db):
    response = client.get("/")
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["Cross-Origin-Opener-Policy"] == "same-origin"


def test_hsts_is_sent_over_https_when_configured(client, db, settings):
    settings.SECURE_HSTS_SECONDS = 31536000
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    assert client.get("/", secure=True)["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"
    assert "Strict-Transport-Security" not in client.get("/")


# --- production settings from the environment -----------------------------------------

PROBE = (
    "import json, django; from django.conf import settings as s; django.setup(); print(json.dumps({"
    "'session': s.SESSION_COOKIE_SECURE, 'csrf': s.CSRF_COOKIE_SECURE, 'hsts': s.SECURE_HSTS_SECONDS,"
    "'subdomains': s.SECURE_HSTS_INCLUDE_SUBDOMAINS, 'redirect': s.SECURE_SSL_REDIRECT,"
    "'cache': s.CACHES['default']['BACKEND'], 'proxy': s.SECURE_PROXY_SSL_HEADER, 'origins': s.CSRF_TRUSTED_ORIGINS}))"
)


def load_settings(**environ) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in {"SITE_ROOT", "ARCHIVA_CACHE_URL"}}
    env.update(environ, DJANGO_SETTINGS_MODULE="archiva.settings")
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60)


def test_an_https_site_gets_secure_cookies_and_hsts_by_default():
    result = load_settings(SITE_ROOT="https://archiva.com", ARCHIVA_BEHIND_PROXY="1")
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout)
    assert values["session"] is values["csrf"] is True
    assert values["hsts"] == 31536000
    assert values["proxy"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert values["origins"] == ["https://archiva.com"]
    assert values["cache"].endswith("LocMemCache")


def test_each_protection_can_be_set_from_the_environment():
    result = load_settings(
        SITE_ROOT="http://localhost:8000",
        SESSION_COOKIE_SECURE="1",
        CSRF_COOKIE_SECURE="yes",
        SECURE_HSTS_SECONDS="600",
        SECURE_HSTS_INCLUDE_SUBDOMAINS="on",
        SECURE_SSL_REDIRECT="true",
        ARCHIVA_CACHE_URL="redis://127.0.0.1:6379/3",
    )
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout)
    assert values["session"] is values["csrf"] is values["subdomains"] is values["redirect"] is True
    assert values["hsts"] == 600
    assert values["cache"] == "django.core.cache.backends.redis.RedisCache"


@pytest.mark.parametrize(
    ("name", "value"),
    [("SECURE_SSL_REDIRECT", "maybe"), ("ARCHIVA_CACHE_URL", "memcached://x"), ("ARCHIVA_CSP_EXTRA", "")],
)
def test_malformed_security_settings_stop_the_process(name, value):
    result = load_settings(**{name: value})
    if name == "ARCHIVA_CSP_EXTRA":
        assert result.returncode == 0  # empty means none
        return
    assert result.returncode != 0
    assert name in result.stderr


# --- rate limits -------------------------------------------------------------------------


@pytest.fixture
def rate_limits(settings):
    """Turn allauth's rate limits on (the suite runs with them off) on a clean cache."""
    cache.clear()
    yield settings
    cache.clear()


def test_repeated_failed_sign_ins_are_limited(client, org, rate_limits):
    rate_limits.ACCOUNT_RATE_LIMITS = {"login_failed": "10/m/ip,3/5m/key"}
    for _ in range(3):
        response = client.post(reverse("account_login"), {"login": "alice@contoso.com", "password": "wrong"})
        assert response.status_code == 200
        assert "The email address and/or password you specified are not correct." in response.content.decode()
    # Even the right password is refused now, with the reason on the form.
    response = client.post(reverse("account_login"), {"login": "alice@contoso.com", "password": PASSWORD})
    assert "Too many failed login attempts. Try again later." in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_too_many_sign_in_attempts_from_one_address_get_429(client, org, rate_limits):
    rate_limits.ACCOUNT_RATE_LIMITS = {"login": "3/m/ip"}
    for n in range(3):
        client.post(reverse("account_login"), {"login": f"x{n}@contoso.com", "password": "wrong"})
    response = client.post(reverse("account_login"), {"login": "alice@contoso.com", "password": PASSWORD})
    assert response.status_code == 429
    assert "Too many attempts" in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_sign_ins_are_not_limited_when_limits_are_off(client, org, settings):
    settings.ACCOUNT_RATE_LIMITS = False
    for _ in range(6):
        client.post(reverse("account_login"), {"login": "alice@contoso.com", "password": "wrong"})
    response = client.post(reverse("account_login"), {"login": "alice@contoso.com", "password": PASSWORD})
    assert response.status_code == 302


def test_sign_ups_from_one_address_are_limited(client, db, rate_limits):
    rate_limits.ACCOUNT_RATE_LIMITS = {"signup": "2/m/ip"}
    for n in range(2):
        response = client.post(reverse("account_signup"), {"email": f"bot{n}@example.net", "organization": "X"})
        assert response.status_code == 200  # the form back: no password
    response = client.post(reverse("account_signup"), {"email": "bot9@example.net", "organization": "X"})
    assert response.status_code == 429
    assert client.get(reverse("account_signup")).status_code == 200  # the page itself stays readable


def test_the_production_limits_cover_sign_in_and_sign_up():
    """Under pytest the limits are off (they would leak between tests); the deployed values:"""
    source = open(os.path.join(os.path.dirname(__file__), "..", "archiva", "settings.py")).read()
    line = next(x for x in source.splitlines() if x.startswith("ACCOUNT_RATE_LIMITS"))
    assert '"login_failed"' in line and '"signup"' in line
