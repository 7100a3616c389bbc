"""The journal-report parser: MS-XJRNL envelopes, MIME, TNEF, attachment text.

Pure: bytes in, `parsed.ParsedReport` out, with no Django, no database and
no storage.  It imports only the standard library, its parsing libraries,
`infra` and itself (tests/test_layers.py checks), so ingest and the
archive can both use it and it can run in the sandbox's child process.
`journal.parse_report` is the entry point; `mime` serves the message page's
attachment list and downloads.
"""
