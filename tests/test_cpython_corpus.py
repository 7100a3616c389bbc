"""CPython's own email test corpus, each message wrapped as an Exchange journal report.

These are the messages the `email` package is tested against: odd encodings,
broken MIME, RFC 2231 parameters, nested messages.  Every one must unwrap to
its exact bytes with the subject `email` reads.
"""

from __future__ import annotations

import email
import email.policy
import re
import sysconfig
from pathlib import Path

import pytest

from archive.parser.journal import parse_report
from tests.data_gen import wrap_as_journal

DATA = Path(sysconfig.get_paths()["stdlib"]) / "test" / "test_email" / "data"
MESSAGES = sorted(DATA.glob("msg_*.txt"))


def _norm(text: str | None) -> str:
    return re.sub(r"\s+", " ", text or "").strip()


def _expected(raw: bytes) -> tuple[str, str | None]:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    subject = msg["subject"]
    message_id = msg["message-id"]
    return _norm(str(subject) if subject is not None else ""), (
        str(message_id).strip().strip("<>") if message_id else None
    )


def test_the_stdlib_email_corpus_is_installed():
    assert DATA.is_dir(), (
        f"CPython's email test corpus is missing ({DATA}): this Python was built without its test package "
        "(Debian: install libpython3.11-testsuite; pyenv builds include it)"
    )
    assert len(MESSAGES) >= 40, f"expected CPython's ~48 msg_*.txt files in {DATA}, found {len(MESSAGES)}"


@pytest.mark.parametrize("path", MESSAGES, ids=lambda p: p.stem)
@pytest.mark.parametrize("cte", ["7bit", "binary"])
def test_wrapped_stdlib_message_unwraps_to_its_bytes_and_subject(path: Path, cte: str):
    raw = path.read_bytes()
    subject, message_id = _expected(raw)
    report = parse_report(wrap_as_journal(raw, recipients=["auditor@contoso.com"], cte=cte))
    assert report.is_journal
    assert report.original == raw
    assert _norm(report.subject) == subject
    assert report.message_id == message_id
    assert [r.address for r in report.envelope_recipients] == ["auditor@contoso.com"]
    assert not any(p.startswith("parser failure") for p in report.problems)


@pytest.mark.parametrize("path", MESSAGES, ids=lambda p: p.stem)
def test_stdlib_message_sent_bare_is_archived_as_itself(path: Path):
    raw = path.read_bytes()
    report = parse_report(raw)
    assert not report.is_journal and report.original == raw
    assert _norm(report.subject) == _expected(raw)[0]
