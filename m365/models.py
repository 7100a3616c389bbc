"""Models of the Microsoft 365 connection, each kept beside its logic."""

from m365.sync import FolderDelta, Notification, Subscription  # noqa: E402,F401  (sync models live beside their logic)
