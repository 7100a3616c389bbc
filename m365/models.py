"""Models of the Microsoft 365 connection, each kept beside its logic."""

from m365.importing import ImportDay, ImportMailbox, ImportRun, ImportSource  # noqa: E402,F401
