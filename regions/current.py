"""The region this deployment serves, from settings."""

from __future__ import annotations

from functools import cache

from django.conf import settings

from regions.registry import REGIONS, Region, get_region, with_site


@cache
def current_region() -> Region:
    return with_site(get_region(settings.ARCHIVA_REGION), settings.ARCHIVA_SITE_DOMAIN)


def foreign_journal_domains() -> set[str]:
    """Journal domains of the other regions: mail for them is never ours."""
    here = current_region()
    return {r.journal_domain for r in REGIONS.values() if r.code != here.code} - {here.journal_domain}


def other_regions() -> list[Region]:
    """The regions this deployment does not serve, as their public sites
    (the registry's: a staging override of this region's site says nothing
    of the others'), for "your data lives elsewhere? sign up there"."""
    here = current_region()
    return [region for region in REGIONS.values() if region.code != here.code]
