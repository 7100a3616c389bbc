"""The registry of data regions, as data.

A deployment serves exactly one region (`ARCHIVA_REGION`).  Each region has
its own public site and the journal domain `archive.<site>` that Exchange
Online delivers journal reports to.  Staging and test deployments override
the site with `ARCHIVA_SITE_DOMAIN`; the journal domain follows it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Region:
    code: str
    name: str
    site: str

    @property
    def journal_domain(self) -> str:
        return f"archive.{self.site}"

    @property
    def signup_url(self) -> str:
        """Where a new customer signs up for an archive in this region."""
        return f"https://{self.site}/accounts/signup/"

    @property
    def validation_address(self) -> str:
        """Where the Exchange send connector's validation mail goes."""
        return f"archive@{self.journal_domain}"


REGIONS: dict[str, Region] = {
    "us": Region(code="us", name="United States", site="archiva.com"),
    "eu": Region(code="eu", name="European Union", site="mailarchiva.eu"),
}


def get_region(code: str) -> Region:
    try:
        return REGIONS[code]
    except KeyError:
        raise KeyError(f"unknown region {code!r}; known: {', '.join(sorted(REGIONS))}") from None


def with_site(region: Region, site: str | None) -> Region:
    """The region as deployed, with the site overridden for staging or tests."""
    if not site:
        return region
    return Region(code=region.code, name=region.name, site=site)
