"""Loaded first (`-p tests.env`): the environment the test suite runs in.

Tests run against real servers: PostgreSQL and Redis on this machine by
default (override with DATABASE_URL / CELERY_BROKER_URL).  Every run gets a
fresh data folder so nothing leaks between runs.
"""

import os
import tempfile

# A database name per run, so that concurrent runs on one machine (several
# developers, CI) never drop each other's test database.
os.environ.setdefault("DATABASE_URL", f"postgresql://postgres@127.0.0.1:5432/archiva_{os.getpid()}")
os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/15")
os.environ.setdefault("ARCHIVA_REGION", "us")
os.environ.setdefault("SECRET_KEY", "test-secret-key-not-for-production-use-0123456789")
os.environ.setdefault("ARCHIVA_BROKER_TIMEOUT", "1")
if "ARCHIVA_DATA_DIR" not in os.environ:
    os.environ["ARCHIVA_DATA_DIR"] = tempfile.mkdtemp(prefix="archiva-test-")
# Tests talk to servers on loopback only; the machine's proxy settings and
# CA bundle must not get in the way.
for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
    os.environ.pop(name, None)
os.environ["NO_PROXY"] = "127.0.0.1,localhost"
