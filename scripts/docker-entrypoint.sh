#!/usr/bin/env bash
# Entrypoint of the Archiva image: one image, one role per container.
#
#   web          gunicorn on 0.0.0.0:$ARCHIVA_HTTP_PORT (default 8000)
#   smtpd        the SMTP ingest on $ARCHIVA_SMTP_HOST:$ARCHIVA_SMTP_PORT (image default 0.0.0.0:2525)
#   imap         the IMAP journal poller (manage.py imap_journal); one is enough, a second is harmless
#   worker       the Celery worker, with the beat scheduler unless ARCHIVA_WORKER_BEAT=0
#   migrate      apply database migrations, then exit (run once per release, before the others)
#   manage ARGS  any manage.py command, e.g. `manage createsuperuser`
#   healthcheck [ROLE]  used by the image's HEALTHCHECK (ROLE defaults to the container's)
#   anything else is executed as given (e.g. `bash`)
#
# Extra arguments after web/smtpd/worker are passed on to the program.
set -euo pipefail

cd "$(dirname "$0")/.."
role="${1:-web}"
if [ $# -gt 0 ]; then shift; fi

data_dir="${ARCHIVA_DATA_DIR:-/data}"

# Folders the configured settings expect (embedded broker, spool, ...).
prepare() {
    python scripts/prepare_data_dir.py
}

# The role this container was started with, read from PID 1 (tini) so the
# HEALTHCHECK, which runs as a separate process, checks the right thing.
started_role() {
    tr '\0' '\n' </proc/1/cmdline 2>/dev/null | sed -n '/docker-entrypoint\.sh$/{n;p;q}'
}

healthcheck() {
    case "${1:-$(started_role)}" in
    web | "")
        python - <<'PY'
import os, sys, urllib.request
url = f"http://127.0.0.1:{os.environ.get('ARCHIVA_HTTP_PORT') or 8000}/healthz"
try:
    with urllib.request.urlopen(url, timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception as exc:
    print(f"{url}: {exc}", file=sys.stderr)
    sys.exit(1)
PY
        ;;
    smtpd)
        python - <<'PY'
import os, socket, sys
port = int(os.environ.get("ARCHIVA_SMTP_PORT") or 2525)
try:
    with socket.create_connection(("127.0.0.1", port), timeout=4) as conn:
        if os.environ.get("ARCHIVA_SMTP_PROXY_PROTOCOL", "").strip().lower() in ("1", "true", "yes", "on"):
            # Greeted also when loopback is among ARCHIVA_SMTP_PROXY_FROM (a header of our own
            # connection); otherwise the line comes after the greeting and gets a 500.
            conn.sendall(b"PROXY UNKNOWN\r\n")
        banner = conn.recv(512)
        conn.sendall(b"QUIT\r\n")
except OSError as exc:
    print(f"SMTP port {port}: {exc}", file=sys.stderr)
    sys.exit(1)
sys.exit(0 if banner.startswith(b"220") else 1)
PY
        ;;
    # The heartbeat the worker writes while connected to its broker.
    worker) exec python manage.py worker_health ;;
    *) exit 0 ;;
    esac
}

case "$role" in
web)
    prepare
    # The image carries static files collected at build time; this is a no-op
    # then, and fills a data volume that hides them.
    python manage.py collectstatic --noinput --verbosity 0
    # Threads (gthread): an upload of several GB to /import/ takes minutes; a
    # sync worker would be killed after --timeout (30 s) and block the others.
    exec gunicorn archiva.wsgi \
        --bind "0.0.0.0:${ARCHIVA_HTTP_PORT:-8000}" \
        --workers "${WEB_CONCURRENCY:-2}" \
        --worker-class gthread --threads "${WEB_THREADS:-4}" \
        --no-control-socket \
        --access-logfile - \
        "$@"
    ;;
smtpd)
    prepare
    exec python manage.py smtpd "$@"
    ;;
imap)
    prepare
    exec python manage.py imap_journal "$@"
    ;;
worker)
    prepare
    beat=()
    case "${ARCHIVA_WORKER_BEAT:-1}" in
    1 | true | yes | on) beat=(--beat --schedule "$data_dir/celerybeat-schedule") ;;
    0 | false | no | off) ;;
    *) echo "ARCHIVA_WORKER_BEAT='${ARCHIVA_WORKER_BEAT}' is not a boolean" >&2; exit 2 ;;
    esac
    exec celery -A archiva worker "${beat[@]}" \
        --loglevel=info \
        --concurrency "${ARCHIVA_WORKER_CONCURRENCY:-2}" \
        "$@"
    ;;
migrate)
    exec python manage.py migrate --noinput "$@"
    ;;
manage)
    exec python manage.py "$@"
    ;;
healthcheck)
    healthcheck "$@"
    ;;
*)
    exec "$role" "$@"
    ;;
esac
