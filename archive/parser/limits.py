"""Bounds on what parsing one message may cost.

A journal report is written by Exchange but its content is whatever a sender
attached: every size, count and time the parser spends is bounded here, and a
part over a bound is skipped with the reason recorded, never fatal.
"""

from __future__ import annotations

from dataclasses import dataclass

MB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    max_attachment_bytes: int = 50 * MB  # decoded size of one attachment we try to read
    max_text_chars: int = 1_000_000  # extracted text kept per attachment, and for the body
    max_html_chars: int = 5_000_000  # body_html kept
    max_attachments: int = 500  # parts looked at per message (names beyond are still not read)
    max_depth: int = 5  # nested message/rfc822 and TNEF levels
    timeout: float = 20.0  # wall-clock seconds for one risky attachment
    message_budget: float = 120.0  # wall-clock seconds of risky extraction per message
    memory_bytes: int = 1024 * MB  # address-space limit of the extraction child
    jobs_per_child: int = 200  # recycle the child after this many attachments (leaks, fragmentation)
    max_zip_members: int = 10_000
    max_unzipped_bytes: int = 200 * MB  # sum of declared member sizes
    max_member_bytes: int = 64 * MB  # one XML member read from a zip
    max_zip_ratio: int = 200  # a member above 1 MiB compressed more than this is a bomb
    max_pdf_pages: int = 2_000

    def child_options(self) -> dict[str, int]:
        """What the extraction child needs to know, as JSON-able values."""
        return {
            "max_text_chars": self.max_text_chars,
            "max_attachment_bytes": self.max_attachment_bytes,
            "max_zip_members": self.max_zip_members,
            "max_unzipped_bytes": self.max_unzipped_bytes,
            "max_member_bytes": self.max_member_bytes,
            "max_zip_ratio": self.max_zip_ratio,
            "max_pdf_pages": self.max_pdf_pages,
        }


DEFAULT_LIMITS = Limits()


class Skip(Exception):  # noqa: N818 - it names the outcome, not an error
    """Raised by an extractor: the attachment is skipped for the reason given."""
