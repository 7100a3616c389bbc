#!/usr/bin/env bash
# Runtime check: does requirements.txt alone run the product?  (Issue 21: the
# test venv had `packaging` through pytest, so CI was green while a worker on
# Redis died at start in an install of requirements.txt alone.)
#
# Builds .venv-runtime from requirements.txt only (rebuilt when the file
# changes), migrates a PostgreSQL database of its own, then for each broker
# (Redis, RabbitMQ) starts web, smtpd, a worker and beat from the Procfile
# under scripts/supervise.py, sends one journal report over SMTP and waits
# until it is archived and found by search.  Fails if any process exited
# (the supervisor would have started it again and hidden the fault).
#
#   scripts/runtime-check.sh            (.ci/run calls it before make test)
#
# Needs PostgreSQL (127.0.0.1:5432, trust), Redis (6379) and RabbitMQ (5672, guest).
set -euo pipefail

cd "$(dirname "$0")/.."
VENV="${RUNTIME_VENV:-.venv-runtime}"
DB="archiva_runtime_check_$$"
WORK="$(mktemp -d -t archiva-runtime-XXXXXX)"
REDIS_URL="${RUNTIME_REDIS_URL:-redis://127.0.0.1:6379/13}"
RABBIT_VHOST="archiva-runtime-check"
supervisor=""

fail() { echo "FAIL: $*" >&2; exit 1; }
cleanup() {
    if [ -n "$supervisor" ] && kill -0 "$supervisor" 2>/dev/null; then
        kill -TERM "$supervisor" 2>/dev/null || true
        wait "$supervisor" 2>/dev/null || true
    fi
    [ -x "$VENV/bin/python" ] && db drop || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { "$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# db create|drop: this run's database on the local PostgreSQL.
db() {
    "$VENV/bin/python" - "$1" "$DB" <<'PY'
import sys, psycopg
action, name = sys.argv[1], sys.argv[2]
with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    if action == "create":
        conn.execute(f'CREATE DATABASE "{name}"')
PY
}

echo "== $VENV from requirements.txt alone"
stamp="$VENV/.requirements-sha256"
want="$(sha256sum requirements.txt | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    rm -rf "$VENV"
    python="$(bash scripts/find-python.sh)"
    "$python" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.txt
    echo "$want" >"$stamp"
else
    echo "up to date"
fi

export DATABASE_URL="postgresql://postgres@127.0.0.1:5432/$DB"
export SECRET_KEY="runtime-check-secret-key-not-for-production-0123456789"
export ARCHIVA_REGION=us ARCHIVA_DATA_DIR="$WORK/data" ARCHIVA_SMTP_REQUIRE_TLS=0 ARCHIVA_METRICS_PORT=0
export ARCHIVA_LOG_LEVEL=info PYTHONUNBUFFERED=1 CELERY_BROKER_URL="$REDIS_URL"
export ARCHIVA_SMTP_PORT ARCHIVA_HTTP_PORT
manage() { "$VENV/bin/python" manage.py "$@"; }

echo "== migrate database $DB"
db create
manage migrate --noinput >/dev/null
"$VENV/bin/python" scripts/prepare_data_dir.py
"$VENV/bin/python" -c 'import os, redis; redis.Redis.from_url(os.environ["CELERY_BROKER_URL"]).flushdb()'  # tasks of earlier runs
address=$(manage shell -c '
from regions.current import current_region
from tenants.access import current_token
from tenants.actions import create_tenant
from tenants.models import User
tenant = create_tenant("Runtime check", User.objects.create_user("owner@contoso.com", None))
print("CHECK", f"journal-{current_token(tenant).token}@{current_region().journal_domain}")
' | sed -n 's/^CHECK //p')
[ -n "$address" ] || fail "could not create a tenant"

# The Procfile as `make run` runs it, with this venv's programs.
sed "s#\.venv/bin/#$VENV/bin/#g" Procfile >"$WORK/Procfile"

# run_with BROKER_NAME BROKER_URL ARCHIVED_BEFORE
run_with() {
    local name=$1 url=$2 expected=$(($3 + 1)) log="$WORK/$1.log" subject="runtime check over $1"
    ARCHIVA_SMTP_PORT=$(free_port) ARCHIVA_HTTP_PORT=$(free_port) CELERY_BROKER_URL=$url
    echo "== $name: web, smtpd, worker and beat (SMTP $ARCHIVA_SMTP_PORT, HTTP $ARCHIVA_HTTP_PORT)"
    CELERY_BROKER_URL=$url "$VENV/bin/python" scripts/supervise.py "$WORK/Procfile" >"$log" 2>&1 &
    supervisor=$!
    CELERY_BROKER_URL=$url "$VENV/bin/python" - "$address" "$subject" "$expected" <<'PY' || { tail -n 60 "$log"; fail "$name: the report was not archived and found"; }
import os, smtplib, sys, time, urllib.request
address, subject, expected = sys.argv[1], sys.argv[2], int(sys.argv[3])
smtp_port, http_port = int(os.environ["ARCHIVA_SMTP_PORT"]), os.environ["ARCHIVA_HTTP_PORT"]
deadline = time.monotonic() + 90
while True:  # the ingest's banner and the web's /healthz
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=2) as answer:
            assert answer.status == 200
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as smtp:
            refused = smtp.sendmail("ndr@contoso.com", [address], f"From: a@contoso.com\r\nTo: b@contoso.com\r\nSubject: {subject}\r\n\r\nhello\r\n".encode())
            assert not refused, refused
        break
    except (OSError, smtplib.SMTPException) as exc:
        if time.monotonic() > deadline:
            sys.exit(f"web or ingest not answering: {exc!r}")
        time.sleep(0.5)
print("accepted over SMTP")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "archiva.settings")
import django
django.setup()
from ingest.models import Delivery
from search import get_backend
from search.backends.base import Scope
while True:
    archived = Delivery.objects.filter(status="archived", message__index_status="indexed")
    tenant = archived.values_list("tenant_id", flat=True).first()
    hits = get_backend().search(Scope(tenant), "*").count if tenant else 0
    if archived.count() == expected and hits == expected:
        print(f"archived and found: {hits} report(s)")
        break
    if time.monotonic() > deadline:
        sys.exit(f"after 90 s: {archived.count()} archived and indexed, {hits} found; expected {expected}")
    time.sleep(0.5)
PY
    kill -TERM "$supervisor"
    wait "$supervisor" || true
    supervisor=""
    if grep -E '\| exited with|ModuleNotFoundError|Unrecoverable error' "$log"; then
        tail -n 60 "$log"
        fail "$name: a process exited (see above)"
    fi
}

run_with redis "$REDIS_URL" 0

if command -v rabbitmqctl >/dev/null && [ "$(id -u)" = 0 ]; then
    rabbitmqctl -q add_vhost "$RABBIT_VHOST" >/dev/null 2>&1 || true  # exists already: fine
    rabbitmqctl -q set_permissions -p "$RABBIT_VHOST" guest '.*' '.*' '.*' >/dev/null
    run_with rabbitmq "amqp://guest:guest@127.0.0.1:5672/$RABBIT_VHOST" 1
else
    run_with rabbitmq "amqp://guest:guest@127.0.0.1:5672//" 1
fi
echo "OK: requirements.txt alone runs web, smtpd, worker and beat on Redis and RabbitMQ; reports archived and found"
