"""Models of retention, legal hold, eDiscovery export and import, each kept beside its logic."""
