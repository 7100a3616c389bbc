"""Models of retention, legal hold, eDiscovery export and import, each kept beside its logic."""

from compliance.scrub import ScrubFinding as ScrubFinding
from compliance.scrub import ScrubState as ScrubState
