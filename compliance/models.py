"""Models of retention, legal hold, eDiscovery export and import, each kept beside its logic."""

from compliance.holds import Hold as Hold  # noqa: E402,F401
from compliance.models_export import Export as Export  # noqa: E402,F401
from compliance.models_export import Import as Import  # noqa: E402,F401
from compliance.purge import PendingPurge as PendingPurge  # noqa: E402,F401
from compliance.retention import RetentionChange as RetentionChange  # noqa: E402,F401
from compliance.retention import RetentionPolicy as RetentionPolicy  # noqa: E402,F401
from compliance.scrub import ScrubFinding as ScrubFinding  # noqa: E402,F401
from compliance.scrub import ScrubState as ScrubState  # noqa: E402,F401
from compliance.worm import HeldObject as HeldObject  # noqa: E402,F401
