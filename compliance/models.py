"""Models of retention, legal hold, eDiscovery export and import, each kept beside its logic."""

from compliance.models_export import Export, Import  # noqa: F401
