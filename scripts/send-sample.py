#!/usr/bin/env python3
"""Send a message file to the local SMTP ingest over STARTTLS, as Exchange would.

    .venv/bin/python scripts/send-sample.py journal-…@archive.archiva.com ../shared/corpus/01-simple.eml

The development certificate is self-signed, so it is not verified here
(Exchange verifies the real one in production).
"""

from __future__ import annotations

import argparse
import smtplib
import ssl
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipient", help="the journal address shown on /status/")
    parser.add_argument("message", type=Path, help="an .eml file, sent byte for byte")
    parser.add_argument("--server", default="127.0.0.1:2525", help="host:port (default 127.0.0.1:2525)")
    parser.add_argument("--sender", default="journal@contoso.com", help="envelope sender (MAIL FROM)")
    args = parser.parse_args()

    host, _, port = args.server.rpartition(":")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # noqa: S323 - the development certificate is self-signed
    data = args.message.read_bytes()
    try:
        with smtplib.SMTP(host or "127.0.0.1", int(port), timeout=60) as smtp:
            smtp.starttls(context=context)
            smtp.ehlo()
            # One step at a time, so the reply to each is shown when refused.
            for code, reply in (smtp.mail(args.sender), smtp.rcpt(args.recipient)):
                if code != 250:
                    print(f"refused: {code} {reply.decode(errors='replace')}", file=sys.stderr)
                    return 1
            code, reply = smtp.data(data)
    except (OSError, smtplib.SMTPException) as exc:
        print(f"not delivered: {exc}", file=sys.stderr)
        return 1
    print(f"{code} {reply.decode(errors='replace')}: {len(data)} bytes to {args.recipient}")
    return 0 if code == 250 else 1


if __name__ == "__main__":
    sys.exit(main())
