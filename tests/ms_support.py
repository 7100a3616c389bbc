"""The Microsoft fake as a pytest fixture, and a tenant connected to it the way an admin does it.

Imported by tests/conftest.py, so any test can ask for
`ms_fake`: a running MicrosoftFake with ARCHIVA_MS_LOGIN_URL,
ARCHIVA_MS_GRAPH_URL and ARCHIVA_MS_CA_BUNDLE pointing at it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.ms_fake import MicrosoftFake

# Every application permission the connection page asks for.
ALL_ROLES = frozenset(
    {
        "User.Read.All",
        "Directory.Read.All",
        "Organization.Read.All",
        "Domain.Read.All",
        "Mail.Read",
        "Mail.Send",
        "Calendars.Read",
        "Contacts.Read",
        "IMAP.AccessAsApp",
        "MailboxSettings.Read",
    }
)


@pytest.fixture
def ms_fake(settings) -> Iterator[MicrosoftFake]:
    """Microsoft's identity platform and Graph on a local HTTPS server, the product pointed at it."""
    fake = MicrosoftFake().start()
    settings.ARCHIVA_MS_LOGIN_URL = fake.url
    settings.ARCHIVA_MS_GRAPH_URL = fake.url
    settings.ARCHIVA_MS_CA_BUNDLE = str(fake.ca_path)
    try:
        yield fake
    finally:
        fake.stop()


def connect(
    fake: MicrosoftFake,
    tenant,
    *,
    roles=ALL_ROLES,
    org_name: str = "Contoso Ltd",
    domains: list[tuple[str, bool]] | None = None,
    upload: bool = True,
):
    """`tenant` connected to a new directory of the fake, as an admin does it.

    In the fake ("Azure"): a directory with `domains`, an app registration
    granted `roles`. In Archiva: the connection with both GUIDs and a new
    certificate, whose public part is uploaded to the app (unless
    upload=False). Returns the Connection; the directory's id is
    `str(connection.directory_id)`.
    """
    from m365.certificates import Subject, create_certificate
    from m365.models import Connection

    directory_id, client_id = str(uuid.uuid4()), str(uuid.uuid4())
    fake.add_tenant(directory_id, org_name, domains=domains if domains is not None else [("contoso.com", True)])
    fake.register_app(directory_id, client_id, roles=set(roles))
    connection, _ = Connection.objects.update_or_create(
        tenant=tenant, defaults={"directory_id": directory_id, "client_id": client_id}
    )
    certificate = create_certificate(connection, Subject(common_name="Archiva", organization=org_name, country="US"))
    if upload:
        fake.upload_certificate(client_id, certificate.certificate_pem)
    return connection
