#!/usr/bin/env bash
# Runtime check: does requirements.txt alone run the product?  (Issue 21: the
# test venv had `packaging` through pytest, so CI was green while a worker on
# Redis died at start in an install of requirements.txt alone.)
#
# Builds .venv-runtime from requirements.txt only (rebuilt when the file
# changes) and migrates a PostgreSQL database of its own.  Then two passes, each
# a fresh deployment (its own copy of that database, data folder and tenant):
#
#   redis     PostgreSQL + Redis broker; the embedded store and search (folders, Tantivy)
#   rabbitmq  the scale settings: PostgreSQL + RabbitMQ broker + an S3-compatible
#             store (ARCHIVA_S3_ENDPOINT: moto) + an Elasticsearch-API server
#             (ARCHIVA_SEARCH_URL: noida-db) + the Redis cache (ARCHIVA_CACHE_URL)
#
# Each pass starts web, smtpd, a worker and beat from the Procfile under
# scripts/supervise.py, sends one journal report over SMTP and waits until it
# is archived and found by search (scripts/runtime_check_report.py); the scale
# pass also checks that the report is an object in the tenant's S3 bucket and
# a document in the Elasticsearch index, so a dependency only S3 (boto3) or
# Elasticsearch (elasticsearch-py) needs is caught too.  Fails if any process
# exited (the supervisor would have started it again and hidden the fault).
#
# moto and noida-db are test tools: they run from the dev venv (.venv, made
# with `make venv-dev` when it lacks them), on free ports, with their data in
# this run's temporary folder, and are stopped at exit.  The product's
# processes run from .venv-runtime only.  A server that does not start fails
# the check with its name; nothing is skipped.
#
#   scripts/runtime-check.sh            (.ci/run calls it before make test)
#
# Needs PostgreSQL (127.0.0.1:5432, trust), Redis (6379) and RabbitMQ (5672, guest).
set -euo pipefail

cd "$(dirname "$0")/.."
VENV="${RUNTIME_VENV:-.venv-runtime}"
DEV_VENV="${RUNTIME_DEV_VENV:-.venv}"
DB="archiva_runtime_check_$$"
WORK="$(mktemp -d -t archiva-runtime-XXXXXX)"
REDIS_URL="${RUNTIME_REDIS_URL:-redis://127.0.0.1:6379/13}"
CACHE_URL="${RUNTIME_CACHE_URL:-redis://127.0.0.1:6379/14}"
RABBIT_VHOST="archiva-runtime-check"
supervisor="" moto="" noida="" noida_dir=""

fail() { echo "FAIL: $*" >&2; exit 1; }
cleanup() {
    stop_pid "$supervisor"
    stop_pid "$moto"
    [ -z "$noida_dir" ] || "$noida" down --data-dir "$noida_dir" >/dev/null 2>&1 || true
    [ -x "$VENV/bin/python" ] && db drop "$DB" "${DB}_redis" "${DB}_rabbitmq" || true
    rm -rf "$WORK"
}
trap cleanup EXIT

stop_pid() {
    if [ -n "$1" ] && kill -0 "$1" 2>/dev/null; then
        kill -TERM "$1" 2>/dev/null || true
        wait "$1" 2>/dev/null || true
    fi
}

free_port() { "$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# db create NAME [TEMPLATE] | db drop NAME...: databases on the local PostgreSQL.
db() {
    "$VENV/bin/python" - "$@" <<'PY'
import sys, psycopg
action, names = sys.argv[1], sys.argv[2:]
with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
    if action == "drop":
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    else:
        name, template = names[0], (names[1:] or ["template1"])[0]
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
PY
}

# wait_port NAME PORT LOG [PID]: until PORT accepts connections; fails naming
# NAME (with LOG's tail) when PID exits first or after 60 s.
wait_port() {
    local name=$1 port=$2 log=$3 pid=${4:-} deadline=$((SECONDS + 60))
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$log" >&2
            fail "$name exited at start (log above)"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 20 "$log" >&2
            fail "$name is not answering on 127.0.0.1:$port after 60 s (log above)"
        fi
        sleep 0.2
    done
}

# The test tools' venv: .venv as `make test` makes it (a fresh clone in CI has none yet).
dev_tools() {
    if ! "$DEV_VENV/bin/python" -c 'import moto.server, noida_db' 2>/dev/null; then
        echo "== $DEV_VENV (moto, noida-db) with make venv-dev"
        make --no-print-directory VENV="$DEV_VENV" venv-dev || fail "could not make $DEV_VENV, which provides moto and noida-db"
    fi
    # Found as tests/search_support.py finds it: beside the venv's python, else on PATH.
    noida="$DEV_VENV/bin/noida-db"
    [ -x "$noida" ] || noida="$(command -v noida-db)" || fail "Elasticsearch API (noida-db) is not installed in $DEV_VENV nor on PATH"
}

# start_servers: moto and noida-db on free ports, in the background (they
# start while the database is migrated); wait_servers: until both answer.
start_servers() {
    s3_port=$(free_port) es_port=$(free_port) noida_dir="$WORK/noida"
    "$DEV_VENV/bin/python" -m moto.server -H 127.0.0.1 -p "$s3_port" >"$WORK/moto.log" 2>&1 &
    moto=$!
    "$noida" up --only elasticsearch --elasticsearch-port "$es_port" --data-dir "$noida_dir" >"$WORK/noida.log" 2>&1 || {
        tail -n 20 "$WORK/noida.log" >&2
        fail "Elasticsearch API server (noida-db) did not start (log above)"
    }
}
wait_servers() {
    wait_port "S3 server (moto)" "$s3_port" "$WORK/moto.log" "$moto"
    wait_port "Elasticsearch API server (noida-db)" "$es_port" "$WORK/noida.log"
    echo "== test servers from $DEV_VENV: S3 (moto) on port $s3_port, Elasticsearch API (noida-db) on port $es_port"
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

dev_tools
start_servers

export SECRET_KEY="runtime-check-secret-key-not-for-production-0123456789"
export ARCHIVA_REGION=us ARCHIVA_SMTP_REQUIRE_TLS=0 ARCHIVA_METRICS_PORT=0
export ARCHIVA_LOG_LEVEL=info PYTHONUNBUFFERED=1 CELERY_BROKER_URL="$REDIS_URL"
export DATABASE_URL ARCHIVA_DATA_DIR ARCHIVA_SMTP_PORT ARCHIVA_HTTP_PORT
manage() { "$VENV/bin/python" manage.py "$@"; }

echo "== migrate database $DB"
db create "$DB"
DATABASE_URL="postgresql://postgres@127.0.0.1:5432/$DB" ARCHIVA_DATA_DIR="$WORK/migrate" manage migrate --noinput >/dev/null
"$VENV/bin/python" -c 'import os, redis; redis.Redis.from_url(os.environ["CELERY_BROKER_URL"]).flushdb()'  # tasks of earlier runs
wait_servers

# The Procfile as `make run` runs it, with this venv's programs.
sed "s#\.venv/bin/#$VENV/bin/#g" Procfile >"$WORK/Procfile"

# new_deployment NAME: a copy of the migrated database, a data folder and a
# tenant, in the configuration exported now; sets tenant and address.
new_deployment() {
    tenant="" address=""
    db create "${DB}_$1" "$DB"
    DATABASE_URL="postgresql://postgres@127.0.0.1:5432/${DB}_$1" ARCHIVA_DATA_DIR="$WORK/$1"
    "$VENV/bin/python" scripts/prepare_data_dir.py
    read -r tenant address < <(manage shell -c '
from regions.current import current_region
from tenants.access import current_token
from tenants.actions import create_tenant
from tenants.models import User
tenant = create_tenant("Runtime check", User.objects.create_user("owner@contoso.com", None))
print("CHECK", tenant.id, f"journal-{current_token(tenant).token}@{current_region().journal_domain}")
' | sed -n 's/^CHECK //p') || true
    [ -n "${address:-}" ] || fail "$1: could not create a tenant"
}

# run_with NAME BROKER_URL
run_with() {
    local name=$1 log="$WORK/$1.log"
    CELERY_BROKER_URL=$2
    new_deployment "$name"
    ARCHIVA_SMTP_PORT=$(free_port) ARCHIVA_HTTP_PORT=$(free_port)
    echo "== $name: web, smtpd, worker and beat (SMTP $ARCHIVA_SMTP_PORT, HTTP $ARCHIVA_HTTP_PORT)"
    "$VENV/bin/python" scripts/supervise.py "$WORK/Procfile" >"$log" 2>&1 &
    supervisor=$!
    "$VENV/bin/python" scripts/runtime_check_report.py "$tenant" "$address" "runtime check over $name" || {
        tail -n 60 "$log"
        fail "$name: the report was not archived and found"
    }
    kill -TERM "$supervisor"
    wait "$supervisor" || true
    supervisor=""
    if grep -E '\| exited with|ModuleNotFoundError|Unrecoverable error' "$log"; then
        tail -n 60 "$log"
        fail "$name: a process exited (see above)"
    fi
}

run_with redis "$REDIS_URL"

# The scale settings for the second pass.
export ARCHIVA_S3_ENDPOINT="http://127.0.0.1:$s3_port" AWS_ACCESS_KEY_ID=runtime-check AWS_SECRET_ACCESS_KEY=runtime-check
export ARCHIVA_SEARCH_URL="http://127.0.0.1:$es_port" ARCHIVA_CACHE_URL="$CACHE_URL"
if command -v rabbitmqctl >/dev/null && [ "$(id -u)" = 0 ]; then
    rabbitmqctl -q delete_vhost "$RABBIT_VHOST" >/dev/null 2>&1 || true  # with tasks of earlier runs
    rabbitmqctl -q add_vhost "$RABBIT_VHOST" >/dev/null
    rabbitmqctl -q set_permissions -p "$RABBIT_VHOST" guest '.*' '.*' '.*' >/dev/null
    run_with rabbitmq "amqp://guest:guest@127.0.0.1:5672/$RABBIT_VHOST"
else
    run_with rabbitmq "amqp://guest:guest@127.0.0.1:5672//"
fi
echo "OK: requirements.txt alone runs web, smtpd, worker and beat on Redis (embedded store and search)" \
    "and on RabbitMQ with S3 and Elasticsearch; reports archived, stored and found"
