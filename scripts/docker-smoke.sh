#!/usr/bin/env bash
# Smoke test of the Docker image: build it, run web + smtpd + worker on one
# data volume (the embedded default), send a journal report from the corpus
# over SMTP, and wait until it is archived and found by search.
#
#   scripts/docker-smoke.sh [IMAGE]      (default archiva:smoke; built from this checkout)
#
# Needs a running Docker engine and ports 18000 and 12525 free on 127.0.0.1.
# Everything it starts (containers, the volume) is removed at the end.
set -euo pipefail

cd "$(dirname "$0")/.."
image="${1:-archiva:smoke}"
name="archiva-smoke-$$"
volume="$name-data"
report="${ARCHIVA_SMOKE_REPORT:-../shared/corpus/02-bcc-expanded-forwarded.eml}"

fail() { echo "FAIL: $*" >&2; exit 1; }
cleanup() {
    docker rm -f "$name-web" "$name-smtpd" "$name-worker" >/dev/null 2>&1 || true
    docker volume rm -f "$volume" >/dev/null 2>&1 || true
}
trap cleanup EXIT

[ -f "$report" ] || fail "no journal report at $report (set ARCHIVA_SMOKE_REPORT)"
command -v docker >/dev/null || fail "docker is not installed"
docker info >/dev/null 2>&1 || fail "the Docker engine is not running"

echo "== build $image"
docker build --quiet -t "$image" . >/dev/null

echo "== migrate, then start web, smtpd and worker"
docker volume create "$volume" >/dev/null
docker run --rm -v "$volume:/data" "$image" migrate >/dev/null
docker run -d --name "$name-web" -v "$volume:/data" -p 127.0.0.1:18000:8000 "$image" web >/dev/null
docker run -d --name "$name-smtpd" -v "$volume:/data" -p 127.0.0.1:12525:2525 \
    -e ARCHIVA_SMTP_REQUIRE_TLS=0 "$image" smtpd >/dev/null
docker run -d --name "$name-worker" -v "$volume:/data" "$image" worker >/dev/null

manage() { docker exec "$name-web" python manage.py shell -c "$1" 2>/dev/null | sed -n 's/^SMOKE //p'; }

address=$(manage '
from regions.current import current_region
from tenants.access import current_token
from tenants.actions import create_tenant
from tenants.models import User
tenant = create_tenant("Smoke test", User.objects.create_user("owner@contoso.com", None))
print("SMOKE", f"journal-{current_token(tenant).token}@{current_region().journal_domain}")
')
[ -n "$address" ] || fail "could not create a tenant"

echo "== wait for the SMTP banner and /healthz"
for _ in $(seq 60); do
    if docker exec "$name-smtpd" /app/scripts/docker-entrypoint.sh healthcheck smtpd 2>/dev/null \
        && docker exec "$name-web" /app/scripts/docker-entrypoint.sh healthcheck web 2>/dev/null; then
        break
    fi
    sleep 1
done

echo "== send $(basename "$report") to the journal address"
python3 - "$address" "$report" <<'PY'
import smtplib, sys
address, report = sys.argv[1], sys.argv[2]
with open(report, "rb") as fh, smtplib.SMTP("127.0.0.1", 12525, timeout=30) as smtp:
    refused = smtp.sendmail("ndr@contoso.com", [address], fh.read())
    assert not refused, refused
print("accepted")
PY

echo "== wait until it is archived and searchable"
found=""
for _ in $(seq 60); do
    found=$(manage '
from ingest.models import Delivery
from search import get_backend
from search.backends.base import Scope
delivery = Delivery.objects.first()
hits = get_backend().search(Scope(delivery.tenant_id), "*") if delivery and delivery.status == "archived" else None
print("SMOKE", f"{delivery.status if delivery else None} {hits.count if hits else 0}")
')
    [ "$found" = "archived 1" ] && break
    sleep 1
done
[ "$found" = "archived 1" ] || fail "expected the report archived and one search hit, got: ${found:-nothing}"

echo "== stop (SIGTERM through tini): every container must exit 0"
docker stop "$name-smtpd" "$name-worker" "$name-web" >/dev/null
for role in web smtpd worker; do
    code=$(docker inspect --format '{{.State.ExitCode}}' "$name-$role")
    [ "$code" = 0 ] || fail "$role exited with $code: $(docker logs --tail 5 "$name-$role" 2>&1)"
done
echo "OK: $image ingested, archived and found a journal report; web, smtpd and worker stopped cleanly"
