# syntax=docker/dockerfile:1
# One image, three roles chosen by the command (see scripts/docker-entrypoint.sh):
#   docker run IMAGE migrate     apply migrations (once per release, first)
#   docker run IMAGE web         gunicorn on :8000, static files by whitenoise
#   docker run IMAGE smtpd       SMTP ingest on :2525 (publish it as port 25)
#   docker run IMAGE worker      Celery worker with the beat scheduler
# Configuration comes from the environment: see .env.example.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=archiva.settings \
    ARCHIVA_DATA_DIR=/data \
    ARCHIVA_HTTP_PORT=8000 \
    ARCHIVA_SMTP_HOST=0.0.0.0 \
    ARCHIVA_SMTP_PORT=2525

# tini as PID 1 forwards signals and reaps children; the app runs unprivileged.
# pst-utils: readpst, which the worker runs to import Outlook .pst uploads.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini pst-utils \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 archiva \
    && useradd --system --uid 10001 --gid archiva --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin archiva \
    && mkdir -p /data \
    && chown archiva:archiva /data

WORKDIR /app

COPY requirements.txt ./
RUN pip install -r requirements.txt

# The code belongs to root and is read-only for the app user.
COPY . .
RUN chmod 0755 scripts/docker-entrypoint.sh \
    && python -m compileall -q /app

USER archiva

# Static files into $ARCHIVA_DATA_DIR/static at build time. The throwaway key
# keeps settings from generating (and baking in) a real one.
RUN SECRET_KEY=collectstatic-at-build-time-only python manage.py collectstatic --noinput --verbosity 0

EXPOSE 8000 2525

HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["/app/scripts/docker-entrypoint.sh", "healthcheck"]

ENTRYPOINT ["/usr/bin/tini", "--", "/app/scripts/docker-entrypoint.sh"]
CMD ["web"]
