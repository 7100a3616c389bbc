"""What tenants announce to the layers above them, which they may not import."""

from __future__ import annotations

from django.dispatch import Signal

# Sent by `actions.verify_domain` once a domain is verified, with `domain`:
# ingest releases the connector's validation mail held for it.
domain_verified = Signal()
