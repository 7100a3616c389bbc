"""Archiva settings: one module, every value from the environment.

Unset means the embedded default (SQLite, a folder per tenant bucket,
Celery on a server-less filesystem broker), set means scale (PostgreSQL,
S3, Redis or RabbitMQ).  `.env.example` lists every variable.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import dj_database_url

from infra.dns import parse_resolver
from infra.env import (
    ConfigError,
    env,
    envbool,
    envchoice,
    envfloat,
    envint,
    envlist,
    envport,
)
from infra.networks import parse_networks
from infra.secrets import parse_secrets_keys
from regions.registry import REGIONS

BASE_DIR = Path(__file__).resolve().parent.parent

DATA_DIR = Path(env("ARCHIVA_DATA_DIR") or BASE_DIR / "var").resolve()

DEBUG = envbool("ARCHIVA_DEBUG", False)
TESTING = "pytest" in sys.modules

SECRET_KEY = env("SECRET_KEY")
if not SECRET_KEY:
    # The embedded default keeps a generated key in the data folder so that
    # sessions and verification links survive restarts.
    key_file = DATA_DIR / "secret_key"
    if key_file.exists():
        SECRET_KEY = key_file.read_text().strip()
    else:
        import secrets

        DATA_DIR.mkdir(parents=True, exist_ok=True)
        SECRET_KEY = secrets.token_urlsafe(50)
        key_file.write_text(SECRET_KEY)
        key_file.chmod(0o600)

# --- Region --------------------------------------------------------------
ARCHIVA_REGION = envchoice("ARCHIVA_REGION", "us", tuple(REGIONS))
ARCHIVA_SITE_DOMAIN = env("ARCHIVA_SITE_DOMAIN").strip().lower() or None
_site = ARCHIVA_SITE_DOMAIN or REGIONS[ARCHIVA_REGION].site

ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", _site, f".{_site}"])
SITE_ROOT = env("SITE_ROOT").rstrip("/") or f"http://localhost:{envport('ARCHIVA_HTTP_PORT', 8000)}"
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", [SITE_ROOT])

# --- Applications --------------------------------------------------------
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "allauth",
    "allauth.account",
    "allauth.mfa",
    "regions",
    "tenants",
    "ingest",
    "archive",
    "m365",
    "compliance",
    "signin",
    "imapjournal",
    "billing",
    "web",
]

MIDDLEWARE = [
    # First: the probes answer on any Host (a pod IP) and over plain HTTP.
    "web.health.ProbeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "web.csp.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    # After authentication: members of a tenant that requires MFA who signed
    # in with a password and have no second factor are sent to enrolment.
    "signin.mfa.RequireMFAMiddleware",
    "web.billing_gate.BillingGateMiddleware",
]

ROOT_URLCONF = "archiva.urls"
WSGI_APPLICATION = "archiva.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "web.context.site",
                "web.billing_gate.banner",
            ],
        },
    },
]

# --- Database ------------------------------------------------------------
DATABASE_URL = env("DATABASE_URL")
if DATABASE_URL:
    if not DATABASE_URL.startswith(("postgres://", "postgresql://", "sqlite://")):
        raise ConfigError("DATABASE_URL must be a postgresql:// or sqlite:// URL")
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)}
else:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(DATA_DIR / "archiva.sqlite3"),
            # WAL lets the web app, the ingest and the worker share the file;
            # IMMEDIATE transactions avoid "database is locked" on upgrade.
            "OPTIONS": {
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=30000;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
            },
            # Keep connections: the ingest's threads write many small rows.
            "CONN_MAX_AGE": None,
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "tenants.User"

# --- Storage -------------------------------------------------------------
ARCHIVA_S3_ENDPOINT = env("ARCHIVA_S3_ENDPOINT")
ARCHIVA_S3_BUCKET_PREFIX = env("ARCHIVA_S3_BUCKET_PREFIX", f"archiva-{ARCHIVA_REGION}-")
_default_s3_region = "eu-central-1" if ARCHIVA_REGION == "eu" else "us-east-1"
ARCHIVA_S3_REGION = env("AWS_DEFAULT_REGION") or env("AWS_REGION") or _default_s3_region
ARCHIVA_STORAGE = envchoice("ARCHIVA_STORAGE", "s3" if ARCHIVA_S3_ENDPOINT else "folder", ("folder", "s3"))
# S3 Object Lock (WORM) on new tenant buckets: GOVERNANCE or COMPLIANCE; "off"
# (the default, and always on the folder store, which has no such thing).
ARCHIVA_S3_OBJECT_LOCK = envchoice("ARCHIVA_S3_OBJECT_LOCK", "off", ("off", "governance", "compliance")).upper()
ARCHIVA_SPOOL_DIR = Path(env("ARCHIVA_SPOOL_DIR") or DATA_DIR / "spool").resolve()
# Uploads (imports of several GB) go to disk beyond FILE_UPLOAD_MAX_MEMORY_SIZE
# (2.5 MB), into the spool's uploads/ (made on first use), so that the import
# can link the file instead of copying it.
FILE_UPLOAD_HANDLERS = [
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "web.imports.SpoolUploadHandler",
]

# --- Celery --------------------------------------------------------------
CELERY_BROKER_URL = env("CELERY_BROKER_URL")
if not CELERY_BROKER_URL:
    # Server-less broker: kombu's filesystem transport.  A real worker
    # process consumes it; nothing else needs to be installed.
    _broker_dir = DATA_DIR / "broker"
    CELERY_BROKER_URL = "filesystem://"
    # kombu's filesystem transport, written and claimed by atomic renames
    # (archiva/broker.py says what and why).
    CELERY_BROKER_TRANSPORT = "archiva.broker:FilesystemTransport"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
        # How often a worker looks for new task files (kombu's default: 1 s,
        # which was most of the 250 -> searchable time of the embedded default).
        "polling_interval": envfloat("ARCHIVA_BROKER_POLL_INTERVAL", 0.1, minimum=0.01),
    }
else:
    if not CELERY_BROKER_URL.startswith(("redis://", "rediss://", "amqp://", "amqps://", "pyamqp://")):
        raise ConfigError("CELERY_BROKER_URL must be a redis:// or amqp:// URL")
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
    if CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
        # kombu's Redis transport with the fix that keeps a worker up when
        # Redis restarts under load (archiva/broker.py says what and why).
        CELERY_BROKER_TRANSPORT = "archiva.broker:Transport"
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 4
# Above the parser's 120 s extraction budget per message, so a hostile
# attachment is given up on by the parser, not by killing the worker.
CELERY_TASK_SOFT_TIME_LIMIT = 300
CELERY_TASK_TIME_LIMIT = 360
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Publishing must fail fast when the broker is down: the ingest records the
# message first and the sweep enqueues it later.
CELERY_BROKER_CONNECTION_TIMEOUT = envfloat("ARCHIVA_BROKER_TIMEOUT", 3.0, minimum=0.1)
# ...but a publish on a pooled connection that a broker restart closed is
# made again on a new one (the first publish after a restart would fail,
# and beat would go on failing on its dead connection): ARCHIVA_PUBLISH_RETRIES
# more attempts, at once and then 0.5 s apart, each within ARCHIVA_BROKER_TIMEOUT.
CELERY_TASK_PUBLISH_RETRY = True
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": envint("ARCHIVA_PUBLISH_RETRIES", 2, minimum=0, maximum=10),
    "interval_start": 0,
    "interval_step": 0.5,
    "interval_max": 0.5,
}
ARCHIVA_SWEEP_INTERVAL = envint("ARCHIVA_SWEEP_INTERVAL", 60, minimum=1)
# Beat counts a due task the broker refused and sends it again every
# ARCHIVA_SWEEP_INTERVAL (Celery's own scheduler would wait a whole interval:
# a day for the daily tasks).
CELERY_BEAT_SCHEDULER = "archiva.beat:Scheduler"
# The archiving task indexes the messages it creates itself; what it leaves
# (merges, mailbox copies, messages the index was down for) within this many
# seconds is indexed by `index_pending` in one batch (one commit) of at most
# ARCHIVA_INDEX_BATCH; a longer interval costs that much more delay.
ARCHIVA_INDEX_DELAY = envfloat("ARCHIVA_INDEX_DELAY", 0.2, minimum=0.01)
ARCHIVA_INDEX_BATCH = envint("ARCHIVA_INDEX_BATCH", 500, minimum=1, maximum=50000)
# The worker refreshes this file every ARCHIVA_WORKER_HEARTBEAT_INTERVAL seconds while
# it is connected to the broker; `manage.py worker_health` (the liveness
# probe) fails when it is older than three intervals.
ARCHIVA_WORKER_HEARTBEAT_INTERVAL = envfloat("ARCHIVA_WORKER_HEARTBEAT_INTERVAL", 10.0, minimum=0.1)
ARCHIVA_WORKER_HEARTBEAT_PATH = Path(env("ARCHIVA_WORKER_HEARTBEAT_PATH") or DATA_DIR / "worker.heartbeat")
ARCHIVA_SWEEP_GRACE = envint("ARCHIVA_SWEEP_GRACE", 30, minimum=0)
# A delivery published this long ago and still not processed is published
# again (its task may have been lost with a crashed worker or broker).
ARCHIVA_REQUEUE_AFTER = envint("ARCHIVA_REQUEUE_AFTER", 300, minimum=10)
# The storage scrub re-reads every object of every bucket once per this many
# days, a slice a day (compliance.scrub).
ARCHIVA_SCRUB_PERIOD = envint("ARCHIVA_SCRUB_PERIOD", 30, minimum=1, maximum=3650)

# --- Microsoft 365 historical import (m365/importer.py) -------------------
# Mailboxes of one tenant imported at once (each with up to 4 Graph requests, Exchange's limit).
ARCHIVA_M365_IMPORT_MAILBOXES = envint("ARCHIVA_M365_IMPORT_MAILBOXES", 4, minimum=1, maximum=64)
# Items handed to the archive in one durable batch; the link after it is saved once it is stored.
ARCHIVA_M365_IMPORT_BATCH = envint("ARCHIVA_M365_IMPORT_BATCH", 200, minimum=1, maximum=5000)
# An import whose worker has not shown life for this many seconds is taken over by another.
ARCHIVA_M365_IMPORT_STALE = envint("ARCHIVA_M365_IMPORT_STALE", 60, minimum=2)

# How often Microsoft 365 events and contacts that changed are read and
# archived (folder sync on; messages come by change notification instead).
ARCHIVA_M365_ITEMS_INTERVAL = envint("ARCHIVA_M365_ITEMS_INTERVAL", 900, minimum=60)

# --- SMTP ingest ---------------------------------------------------------
ARCHIVA_SMTP_HOST = env("ARCHIVA_SMTP_HOST", "127.0.0.1")
ARCHIVA_SMTP_PORT = envport("ARCHIVA_SMTP_PORT", 2525)
ARCHIVA_SMTP_REQUIRE_TLS = envbool("ARCHIVA_SMTP_REQUIRE_TLS", True)
ARCHIVA_SMTP_MAX_SIZE = envint("ARCHIVA_SMTP_MAX_SIZE", 200 * 1024 * 1024, minimum=1024)
ARCHIVA_SMTP_TIMEOUT = envint("ARCHIVA_SMTP_TIMEOUT", 300, minimum=1)
ARCHIVA_SMTP_HOSTNAME = env("ARCHIVA_SMTP_HOSTNAME") or f"archive.{_site}"
ARCHIVA_SMTP_MAX_RECIPIENTS = envint("ARCHIVA_SMTP_MAX_RECIPIENTS", 1000, minimum=1)
ARCHIVA_TLS_CERT = env("ARCHIVA_TLS_CERT")
ARCHIVA_TLS_KEY = env("ARCHIVA_TLS_KEY")
if bool(ARCHIVA_TLS_CERT) != bool(ARCHIVA_TLS_KEY):
    raise ConfigError("ARCHIVA_TLS_CERT and ARCHIVA_TLS_KEY must be set together")
# Seconds between looks at the certificate files: a renewed certificate is
# used by the next STARTTLS after it, without a restart (ingest.tls).
ARCHIVA_TLS_RELOAD_INTERVAL = envfloat("ARCHIVA_TLS_RELOAD_INTERVAL", 10.0, minimum=0.1)
ARCHIVA_SMTP_PROCESSES = envint("ARCHIVA_SMTP_PROCESSES", 1, minimum=1, maximum=64)
ARCHIVA_SMTP_MAX_SESSIONS = envint("ARCHIVA_SMTP_MAX_SESSIONS", 500, minimum=1)
# Of them, from one peer address (per process, like the cap above): one peer cannot take every slot.
ARCHIVA_SMTP_MAX_SESSIONS_PER_PEER = envint("ARCHIVA_SMTP_MAX_SESSIONS_PER_PEER", 50, minimum=1)
# Niceness added to the committer process (ingest/commitd.py): the sessions' replies go first.
ARCHIVA_COMMITTER_NICE = envint("ARCHIVA_COMMITTER_NICE", 5, minimum=0, maximum=19)
# Behind a load balancer that sends the PROXY protocol (v1 or v2; ingest.proxyproto):
# connections from ARCHIVA_SMTP_PROXY_FROM (its networks, comma-separated CIDRs)
# must start with the header, whose client address the session takes; others
# are served with their own address and no header is believed from them.
ARCHIVA_SMTP_PROXY_PROTOCOL = envbool("ARCHIVA_SMTP_PROXY_PROTOCOL", False)
ARCHIVA_SMTP_PROXY_FROM = envlist("ARCHIVA_SMTP_PROXY_FROM", [])
try:
    parse_networks(ARCHIVA_SMTP_PROXY_FROM, item="entry")
except ValueError as _exc:
    raise ConfigError(f"ARCHIVA_SMTP_PROXY_FROM: {_exc} (CIDRs, e.g. 10.0.0.0/8)") from None
if ARCHIVA_SMTP_PROXY_PROTOCOL and not ARCHIVA_SMTP_PROXY_FROM:
    raise ConfigError(
        "ARCHIVA_SMTP_PROXY_PROTOCOL=1 needs ARCHIVA_SMTP_PROXY_FROM: the load balancer's networks, "
        "the only ones whose PROXY header is believed"
    )
# Sender policy (DESIGN: defense in depth; the journal token is a bearer secret).
ARCHIVA_SENDER_ALLOWLIST = envbool("ARCHIVA_SENDER_ALLOWLIST", False)
ARCHIVA_SENDER_FCRDNS = envbool("ARCHIVA_SENDER_FCRDNS", False)
# Token buckets: messages per second (sustained) and burst; 0 turns a limit off.
ARCHIVA_TENANT_RATE = envfloat("ARCHIVA_TENANT_RATE", 200.0, minimum=0)
ARCHIVA_TENANT_BURST = envfloat("ARCHIVA_TENANT_BURST", 2000.0, minimum=1)
ARCHIVA_PEER_RATE = envfloat("ARCHIVA_PEER_RATE", 0.0, minimum=0)
ARCHIVA_PEER_BURST = envfloat("ARCHIVA_PEER_BURST", 1000.0, minimum=1)
# With ARCHIVA_CACHE_URL set, the tenant and peer limits are shared by every
# ingest process and machine (Redis keys under this prefix); unset, per process.
ARCHIVA_RATE_LIMIT_PREFIX = env("ARCHIVA_RATE_LIMIT_PREFIX", "archiva:ratelimit")
ARCHIVA_METRICS_HOST = env("ARCHIVA_METRICS_HOST", "127.0.0.1")
ARCHIVA_METRICS_PORT = envport("ARCHIVA_METRICS_PORT", 9325)
# Bearer token the web app's /metrics asks for; unset: /metrics answers loopback clients only.
ARCHIVA_METRICS_TOKEN = env("ARCHIVA_METRICS_TOKEN")
ARCHIVA_TOKEN_CACHE_REFRESH = envfloat("ARCHIVA_TOKEN_CACHE_REFRESH", 2.0, minimum=0.1)

# --- Search (issue: indexing) -------------------------------------------
ARCHIVA_SEARCH_URL = env("ARCHIVA_SEARCH_URL")
if ARCHIVA_SEARCH_URL and not ARCHIVA_SEARCH_URL.startswith(("http://", "https://")):
    raise ConfigError("ARCHIVA_SEARCH_URL must be an http:// or https:// URL of an Elasticsearch cluster")
# Unset: archiva-<region>-messages, derived where the backend is built.
ARCHIVA_SEARCH_INDEX = env("ARCHIVA_SEARCH_INDEX")
ARCHIVA_SEARCH_REFRESH = envchoice("ARCHIVA_SEARCH_REFRESH", "false", ("false", "wait_for", "true"))
ARCHIVA_SEARCH_SHARDS = envint("ARCHIVA_SEARCH_SHARDS", 1, minimum=1)
ARCHIVA_SEARCH_REPLICAS = envint("ARCHIVA_SEARCH_REPLICAS", 0, minimum=0)
ARCHIVA_SEARCH_TIMEOUT = envfloat("ARCHIVA_SEARCH_TIMEOUT", 10.0, minimum=0.1)
# The embedded index lives in DATA_DIR/index (see search.backends.get_backend).

# --- DNS (domain verification) ------------------------------------------
# One server as "ip", "ip:port" or "[ipv6]:port"; unset: the system resolver.
ARCHIVA_DNS_RESOLVER = parse_resolver(env("ARCHIVA_DNS_RESOLVER"))
ARCHIVA_DNS_TIMEOUT = envfloat("ARCHIVA_DNS_TIMEOUT", 5.0, minimum=0.1)

# --- Microsoft 365 (identity platform and Graph) -------------------------
# Microsoft's hosts are settings so that tests (and sovereign clouds) can
# point elsewhere; both must be https:// because msal refuses anything else.
ARCHIVA_MS_LOGIN_URL = env("ARCHIVA_MS_LOGIN_URL", "https://login.microsoftonline.com").strip().rstrip("/")
ARCHIVA_MS_GRAPH_URL = env("ARCHIVA_MS_GRAPH_URL", "https://graph.microsoft.com").strip().rstrip("/")
for _name, _url in (("ARCHIVA_MS_LOGIN_URL", ARCHIVA_MS_LOGIN_URL), ("ARCHIVA_MS_GRAPH_URL", ARCHIVA_MS_GRAPH_URL)):
    if not _url.startswith("https://") or len(_url) <= len("https://"):
        raise ConfigError(f"{_name}={_url!r} must be an https:// URL")
# Extra trust for Microsoft's hosts (a PEM bundle); never a way to turn verification off.
ARCHIVA_MS_CA_BUNDLE = env("ARCHIVA_MS_CA_BUNDLE").strip() or None
if ARCHIVA_MS_CA_BUNDLE and not Path(ARCHIVA_MS_CA_BUNDLE).is_file():
    raise ConfigError(f"ARCHIVA_MS_CA_BUNDLE={ARCHIVA_MS_CA_BUNDLE!r} is not a readable PEM file")
# Concurrent Graph requests per tenant (Exchange allows 4 per mailbox, enforced separately).
# Seconds between the second approval of a shortened retention and its taking effect: 7 days,
# which only the embedded default (and tests, through settings) may shorten.
ARCHIVA_RETENTION_DELAY = envint("ARCHIVA_RETENTION_DELAY", 7 * 24 * 3600, minimum=0)
if ARCHIVA_RETENTION_DELAY < 7 * 24 * 3600 and env("DATABASE_URL"):
    raise ConfigError("ARCHIVA_RETENTION_DELAY below 604800 (7 days) is for the embedded default only")
ARCHIVA_MS_TENANT_CONCURRENCY = envint("ARCHIVA_MS_TENANT_CONCURRENCY", 16, minimum=1, maximum=256)

# --- IMAP journaling (imapjournal; `manage.py imap_journal`) --------------
# Reports fetched, stored and recorded together (one commit, then one delete or move).
ARCHIVA_IMAP_BATCH = envint("ARCHIVA_IMAP_BATCH", 50, minimum=1, maximum=1000)
# Seconds between polls of a server without IDLE (and the longest an IDLE waits before a check).
ARCHIVA_IMAP_POLL_INTERVAL = envfloat("ARCHIVA_IMAP_POLL_INTERVAL", 60.0, minimum=0.1)
# The backoff after errors doubles from 30 s up to this many seconds.
ARCHIVA_IMAP_BACKOFF_MAX = envfloat("ARCHIVA_IMAP_BACKOFF_MAX", 3600.0, minimum=1.0)
# Seconds an IMAP connect or command may take before the server counts as unreachable.
ARCHIVA_IMAP_TIMEOUT = envfloat("ARCHIVA_IMAP_TIMEOUT", 60.0, minimum=1.0)

# Keys that encrypt secrets at rest (certificate private keys): Fernet keys,
# comma-separated, the first encrypts and every one decrypts (rotation).
ARCHIVA_SECRETS_KEY = env("ARCHIVA_SECRETS_KEY").strip()
if not ARCHIVA_SECRETS_KEY:
    # Like SECRET_KEY: the embedded default keeps a generated key in the data
    # folder, so encrypted secrets survive restarts on this one machine.
    _secrets_key_file = DATA_DIR / "secrets_key"
    if _secrets_key_file.exists():
        ARCHIVA_SECRETS_KEY = _secrets_key_file.read_text().strip()
    else:
        import base64
        import secrets

        DATA_DIR.mkdir(parents=True, exist_ok=True)
        ARCHIVA_SECRETS_KEY = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
        _secrets_key_file.write_text(ARCHIVA_SECRETS_KEY)
        _secrets_key_file.chmod(0o600)
ARCHIVA_SECRETS_KEYS = parse_secrets_keys("ARCHIVA_SECRETS_KEY", ARCHIVA_SECRETS_KEY)

# --- Billing (Stripe) ----------------------------------------------------
# Unset STRIPE_SECRET_KEY: billing is off and everything is free (the embedded
# default).  The webhook secret verifies /stripe/webhook; the publishable key
# lets /billing/ collect a card with Stripe.js (the card never reaches us).
STRIPE_SECRET_KEY = env("STRIPE_SECRET_KEY").strip()
STRIPE_PUBLISHABLE_KEY = env("STRIPE_PUBLISHABLE_KEY").strip()
STRIPE_WEBHOOK_SECRET = env("STRIPE_WEBHOOK_SECRET").strip()
# Another Stripe-compatible API (tests: localstripe); unset means Stripe's own.
ARCHIVA_STRIPE_API_BASE = env("ARCHIVA_STRIPE_API_BASE").strip().rstrip("/")
if STRIPE_SECRET_KEY and not STRIPE_SECRET_KEY.startswith(("sk_test_", "sk_live_", "rk_test_", "rk_live_")):
    raise ConfigError("STRIPE_SECRET_KEY must be a Stripe secret key (sk_live_… or sk_test_…)")
if STRIPE_SECRET_KEY and not STRIPE_WEBHOOK_SECRET:
    raise ConfigError("STRIPE_WEBHOOK_SECRET is required with STRIPE_SECRET_KEY: /stripe/webhook must verify events")
if ARCHIVA_STRIPE_API_BASE and not ARCHIVA_STRIPE_API_BASE.startswith(("http://", "https://")):
    raise ConfigError(f"ARCHIVA_STRIPE_API_BASE={ARCHIVA_STRIPE_API_BASE!r} must be an http(s):// URL")

# --- Cache (rate limits) ------------------------------------------------
# Unset: memory of each process, so limits count per web worker; set a
# redis:// URL to share them between workers and machines.
ARCHIVA_CACHE_URL = env("ARCHIVA_CACHE_URL")
if ARCHIVA_CACHE_URL and not ARCHIVA_CACHE_URL.startswith(("redis://", "rediss://")):
    raise ConfigError("ARCHIVA_CACHE_URL must be a redis:// URL")
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": ARCHIVA_CACHE_URL}
    if ARCHIVA_CACHE_URL
    else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
}

# --- Accounts (django-allauth) ------------------------------------------
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_EMAIL_VERIFICATION = "mandatory"
ACCOUNT_UNIQUE_EMAIL = True
# Password reset, sign-up and login answer alike for known and unknown
# addresses; the owner of a taken address gets a mail instead.
ACCOUNT_PREVENT_ENUMERATION = True
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_SIGNUP_FORM_CLASS = "web.forms.SignupForm"
ACCOUNT_ADAPTER = "web.adapter.AccountAdapter"
# The login form routes addresses of tenants with "Sign in with Microsoft" on to Microsoft (issue 20).
ACCOUNT_FORMS = {"login": "web.signin.LoginForm"}
ACCOUNT_CONFIRM_EMAIL_ON_GET = False
ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION = True
ACCOUNT_DEFAULT_HTTP_PROTOCOL = "https" if SITE_ROOT.startswith("https") else "http"
ACCOUNT_EMAIL_SUBJECT_PREFIX = "[Archiva] "
# False, not {}: an empty dict keeps allauth's default limits (e.g. one
# verification mail per address per 3 minutes), which leak between tests.
# login_failed: per IP, and per IP *and* account (the adapter's key), so that
# failing on purpose from one address cannot lock the account out elsewhere.
ACCOUNT_RATE_LIMITS = False if TESTING else {"login_failed": "10/m/ip,5/5m/key", "signup": "20/m/ip"}
# Two-factor authentication (allauth.mfa) for password accounts: TOTP apps,
# security keys and passkeys (WebAuthn, as a second factor; passkey-only login
# stays off: the login page asks for the email first, signin owns it)
# and recovery codes; the TOTP secret and the recovery codes' seed are
# encrypted with ARCHIVA_SECRETS_KEY (signin.mfa_adapter).
MFA_ADAPTER = "signin.mfa_adapter.MFAAdapter"
MFA_SUPPORTED_TYPES = ["totp", "recovery_codes", "webauthn"]
MFA_TOTP_ISSUER = "Archiva"
MFA_RECOVERY_CODE_COUNT = 10
# One period either side: phones whose clocks drift by up to 30 s still work.
MFA_TOTP_TOLERANCE = 1
LOGIN_REDIRECT_URL = "/status/"
LOGIN_URL = "/accounts/login/"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# --- Outgoing mail -------------------------------------------------------
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL") or f"Archiva <noreply@{_site}>"
EMAIL_HOST = env("EMAIL_HOST")
if EMAIL_HOST:
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    EMAIL_PORT = envport("EMAIL_PORT", 587)
    EMAIL_HOST_USER = env("EMAIL_HOST_USER")
    EMAIL_HOST_PASSWORD = env("EMAIL_HOST_PASSWORD")
    EMAIL_USE_TLS = envbool("EMAIL_USE_TLS", True)
    EMAIL_USE_SSL = envbool("EMAIL_USE_SSL", False)
    EMAIL_TIMEOUT = 30
else:
    # Embedded default: every outgoing mail becomes an .eml file a person can open.
    EMAIL_BACKEND = "web.mail.OutboxBackend"
ARCHIVA_OUTBOX_DIR = DATA_DIR / "outbox"
# Mail to postmaster@ the journal domain goes to this address; unset: an .eml file in the outbox folder.
ARCHIVA_POSTMASTER = env("ARCHIVA_POSTMASTER")

# --- HTTP security -------------------------------------------------------
SECURE_HTTPS = SITE_ROOT.startswith("https://")
SESSION_COOKIE_SECURE = envbool("SESSION_COOKIE_SECURE", SECURE_HTTPS)
CSRF_COOKIE_SECURE = envbool("CSRF_COOKIE_SECURE", SECURE_HTTPS)
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 31536000 if SECURE_HTTPS else 0, minimum=0)
# Behind our proxy, X-Forwarded-Proto and the last X-Forwarded-For entry (the
# peer the proxy saw) are trusted: for HTTPS, the audit log's IPs and allauth's
# per-IP rate limits. Without it both headers are the client's say-so.
ARCHIVA_BEHIND_PROXY = envbool("ARCHIVA_BEHIND_PROXY", False)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if ARCHIVA_BEHIND_PROXY else None
ALLAUTH_TRUSTED_PROXY_COUNT = 1 if ARCHIVA_BEHIND_PROXY else 0
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", False)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", False)
# Content-Security-Policy of every response (web/csp.py), unless a view sets
# its own.  No inline scripts or styles: JavaScript lives in static files.
ARCHIVA_CSP = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'", "data:"],
    "font-src": ["'self'"],
    "connect-src": ["'self'"],
    "object-src": ["'none'"],
    "base-uri": ["'none'"],
    "form-action": ["'self'"],
    "frame-ancestors": ["'none'"],
}
# Sources added to directives, e.g. "img-src https://cdn.example; report-uri /csp-report".
ARCHIVA_CSP_EXTRA = env("ARCHIVA_CSP_EXTRA")

# --- Static files and i18n ----------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = DATA_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Logging -------------------------------------------------------------
LOG_FORMAT = envchoice("ARCHIVA_LOG_FORMAT", "plain", ("plain", "json"))
LOG_LEVEL = envchoice("ARCHIVA_LOG_LEVEL", "info", ("debug", "info", "warning", "error")).upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"redact": {"()": "infra.logs.RedactTokens"}},
    "formatters": {
        "plain": {"()": "infra.logs.PlainFormatter"},
        "json": {"()": "infra.logs.JSONFormatter"},
    },
    "handlers": {
        "console": {"class": "infra.logs.BufferedStreamHandler", "formatter": LOG_FORMAT, "filters": ["redact"]},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "mail.log": {"level": "WARNING"},
        "django.db.backends": {"level": "INFO"},
        "botocore": {"level": "WARNING"},
        "urllib3": {"level": "WARNING"},
    },
}

os.environ.setdefault("ARCHIVA_DATA_DIR", str(DATA_DIR))
