"""Models of the Microsoft 365 connection, each kept beside its logic."""

from m365.sync import FolderDelta, ItemWatermark, Notification, Subscription  # noqa: E402,F401  (sync models live beside their logic)
from m365 import signals  # noqa: E402,F401  (subscriptions follow their connection)
