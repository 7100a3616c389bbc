"""A tenant that signs in with Microsoft through the fake, and the person's side of it.

`entra_org` connects Contoso to a directory of the fake (its domain
verified by the connection test, as an admin does it), registers the
callback as the app's Web redirect URI and turns sign-in on.
`at_microsoft` is the person at Microsoft's sign-in page: they pick an
account and are sent back to Archiva with a code.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import requests

from m365.connection import check_connection
from m365.models import Connection
from signin.actions import set_signin
from signin.entra import callback_url
from tenants.models import Role
from tests.conftest import Org, membership_of
from tests.ms_fake import MicrosoftFake
from tests.ms_support import ALL_ROLES, connect


def entra_org(
    fake: MicrosoftFake, org: Org, *, default_role: str = Role.USER, roles: frozenset[str] = ALL_ROLES
) -> Connection:
    """Contoso connected to a new directory (contoso.com verified), its app granted `roles`, sign-in on."""
    connection = connect(fake, org.tenant, domains=[("contoso.com", True)], roles=roles)
    result = check_connection(connection)
    assert result.ok, result.error
    fake.add_redirect_uri(str(connection.client_id), callback_url())
    set_signin(membership_of(org.owner), enabled=True, default_role=default_role)
    return connection


def at_microsoft(fake: MicrosoftFake, authorize_url: str, account: str) -> requests.Response:
    """Microsoft's sign-in page, submitted with `account`: the answer (a redirect back, or an error page)."""
    split = urlsplit(authorize_url)
    assert authorize_url.startswith(fake.url), authorize_url
    page = requests.get(authorize_url, verify=str(fake.ca_path), timeout=10)
    assert page.status_code == 200, page.text
    form = {**dict(parse_qsl(split.query)), "account": account}
    return requests.post(authorize_url, data=form, verify=str(fake.ca_path), allow_redirects=False, timeout=10)


def callback_path(response: requests.Response) -> str:
    """The path and query of Archiva's callback that Microsoft redirected to."""
    assert response.status_code == 302, response.text
    location = response.headers["Location"]
    assert location.startswith(callback_url()), location
    split = urlsplit(location)
    return f"{split.path}?{split.query}"
