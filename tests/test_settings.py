"""Settings come from the environment and fail loudly on bad values.

A typo in production must stop the process with a message naming the
variable, never fall back silently to a default.  Unset means the embedded
default (SQLite and folders in ARCHIVA_DATA_DIR, the filesystem broker); set
means scale (PostgreSQL, S3, Redis or RabbitMQ).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from infra.env import ConfigError, env, envbool, envchoice, envfloat, envint, envlist, envport

ROOT = Path(__file__).resolve().parent.parent
SETTINGS_FILE = ROOT / "archiva" / "settings.py"
ENV_CALL = re.compile(r"\benv(?:bool|int|float|choice|list|port)?\(\s*['\"]([A-Z][A-Z0-9_]*)['\"]")


def settings_variables() -> list[str]:
    """Every variable archiva/settings.py reads, in order of appearance."""
    return list(dict.fromkeys(ENV_CALL.findall(SETTINGS_FILE.read_text())))


# --- the helpers in infra/env.py ------------------------------------------


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", "yes", "on", " On "])
def test_envbool_reads_true(monkeypatch, raw):
    monkeypatch.setenv("X_FLAG", raw)
    assert envbool("X_FLAG", False) is True


@pytest.mark.parametrize("raw", ["0", "false", "no", "OFF"])
def test_envbool_reads_false(monkeypatch, raw):
    monkeypatch.setenv("X_FLAG", raw)
    assert envbool("X_FLAG", True) is False


def test_unset_or_empty_means_the_default(monkeypatch):
    monkeypatch.delenv("X_UNSET", raising=False)
    assert envbool("X_UNSET", True) is True
    assert envint("X_UNSET", 7) == 7
    assert envfloat("X_UNSET", 1.5) == 1.5
    assert envchoice("X_UNSET", "us", ("us", "eu")) == "us"
    assert envlist("X_UNSET", ["a"]) == ["a"]
    assert envport("X_UNSET", 2525) == 2525
    assert env("X_UNSET", "fallback") == "fallback"
    monkeypatch.setenv("X_EMPTY", "")
    assert envint("X_EMPTY", 7) == 7
    assert envbool("X_EMPTY", False) is False


def test_envbool_refuses_anything_else_naming_the_variable(monkeypatch):
    monkeypatch.setenv("X_FLAG", "maybe")
    with pytest.raises(ConfigError, match=r"X_FLAG='maybe' is not a boolean"):
        envbool("X_FLAG", False)


def test_envint_reads_whole_numbers_and_refuses_the_rest(monkeypatch):
    monkeypatch.setenv("X_NUM", " 42 ")
    assert envint("X_NUM", 0) == 42
    monkeypatch.setenv("X_NUM", "4.2")
    with pytest.raises(ConfigError, match=r"X_NUM='4.2' is not a whole number"):
        envint("X_NUM", 0)


def test_envint_enforces_its_bounds_naming_the_variable(monkeypatch):
    monkeypatch.setenv("X_NUM", "0")
    with pytest.raises(ConfigError, match=r"X_NUM=0 is below the minimum 1"):
        envint("X_NUM", 5, minimum=1)
    monkeypatch.setenv("X_NUM", "11")
    with pytest.raises(ConfigError, match=r"X_NUM=11 is above the maximum 10"):
        envint("X_NUM", 5, maximum=10)


def test_envfloat_refuses_non_numbers_and_small_values(monkeypatch):
    monkeypatch.setenv("X_SECONDS", "0.5")
    assert envfloat("X_SECONDS", 3.0) == 0.5
    monkeypatch.setenv("X_SECONDS", "soon")
    with pytest.raises(ConfigError, match=r"X_SECONDS='soon' is not a number"):
        envfloat("X_SECONDS", 3.0)
    monkeypatch.setenv("X_SECONDS", "0.01")
    with pytest.raises(ConfigError, match="X_SECONDS"):
        envfloat("X_SECONDS", 3.0, minimum=0.1)


def test_envchoice_is_case_insensitive_and_lists_the_choices(monkeypatch):
    monkeypatch.setenv("X_REGION", "EU")
    assert envchoice("X_REGION", "us", ("us", "eu")) == "eu"
    monkeypatch.setenv("X_REGION", "mars")
    with pytest.raises(ConfigError, match=r"X_REGION='mars' is not one of us, eu"):
        envchoice("X_REGION", "us", ("us", "eu"))


def test_envlist_splits_on_commas_and_drops_blanks(monkeypatch):
    monkeypatch.setenv("X_HOSTS", " a.example , ,b.example,")
    assert envlist("X_HOSTS") == ["a.example", "b.example"]
    default = ["x"]
    monkeypatch.delenv("X_HOSTS")
    result = envlist("X_HOSTS", default)
    result.append("y")
    assert default == ["x"], "the caller's default must not be shared"


@pytest.mark.parametrize("raw", ["abc", "-1", "65536", "25/tcp"])
def test_envport_refuses_what_is_not_a_port(monkeypatch, raw):
    monkeypatch.setenv("X_PORT", raw)
    with pytest.raises(ConfigError, match="X_PORT"):
        envport("X_PORT", 2525)


def test_envport_accepts_the_ends_of_the_range(monkeypatch):
    monkeypatch.setenv("X_PORT", "65535")
    assert envport("X_PORT", 2525) == 65535
    monkeypatch.setenv("X_PORT", "0")
    assert envport("X_PORT", 2525) == 0


def test_a_secret_can_come_from_a_file_named_by_NAME_FILE(monkeypatch, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cr3t-from-a-file\n")
    monkeypatch.setenv("X_SECRET", "from-the-environment")
    monkeypatch.setenv("X_SECRET_FILE", str(secret))
    assert env("X_SECRET") == "s3cr3t-from-a-file", "the file wins and its newline is stripped"


def test_typed_values_can_come_from_files_too(monkeypatch, tmp_path):
    value = tmp_path / "port"
    value.write_text("2526\n")
    monkeypatch.setenv("X_PORT_FILE", str(value))
    assert envport("X_PORT", 2525) == 2526


def test_an_unreadable_NAME_FILE_names_the_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("X_SECRET_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"X_SECRET_FILE=.*cannot be read"):
        env("X_SECRET")


# --- loading archiva.settings in a fresh process --------------------------

PROBE = """
import json
import django

django.setup()
from django.conf import settings
from archiva.celery import app
from infra.storage import get_store

store = get_store()
print(json.dumps({
    "engine": settings.DATABASES["default"]["ENGINE"],
    "db_name": str(settings.DATABASES["default"]["NAME"]),
    "storage": settings.ARCHIVA_STORAGE,
    "store": type(store).__name__,
    "store_root": str(getattr(store, "root", "")),
    "s3_region": settings.ARCHIVA_S3_REGION,
    "bucket_prefix": settings.ARCHIVA_S3_BUCKET_PREFIX,
    "broker": app.conf.broker_url,
    "broker_options": app.conf.broker_transport_options,
    "broker_transport": app.conf.broker_transport,
    "region": settings.ARCHIVA_REGION,
    "smtp_hostname": settings.ARCHIVA_SMTP_HOSTNAME,
    "smtp_port": settings.ARCHIVA_SMTP_PORT,
    "secret_key": settings.SECRET_KEY,
    "email_backend": settings.EMAIL_BACKEND,
    "data_dir": str(settings.DATA_DIR),
    "cache": settings.CACHES["default"]["BACKEND"],
}))
"""


def clean_environ(data_dir: Path, **overrides: str) -> dict[str, str]:
    """This process's environment without any Archiva setting (tests/env.py sets some)."""
    names = set(settings_variables()) | {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "DJANGO_SETTINGS_MODULE"}
    environ = {
        key: value
        for key, value in os.environ.items()
        if key not in names and key.removesuffix("_FILE") not in names and not key.startswith("CELERY_")
    }
    environ.update(DJANGO_SETTINGS_MODULE="archiva.settings", ARCHIVA_DATA_DIR=str(data_dir))
    environ.update(overrides)
    return environ


def run_settings(data_dir: Path, **overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env=clean_environ(data_dir, **overrides),
        capture_output=True,
        text=True,
        timeout=120,
    )


def load_settings(data_dir: Path, **overrides: str) -> dict:
    result = run_settings(data_dir, **overrides)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


BAD_VALUES = [
    ("ARCHIVA_REGION", {"ARCHIVA_REGION": "mars"}),
    ("ARCHIVA_SMTP_PORT", {"ARCHIVA_SMTP_PORT": "abc"}),
    ("ARCHIVA_SMTP_PORT", {"ARCHIVA_SMTP_PORT": "70000"}),
    ("ARCHIVA_HTTP_PORT", {"ARCHIVA_HTTP_PORT": "http"}),
    ("DATABASE_URL", {"DATABASE_URL": "mysql://x"}),
    ("CELERY_BROKER_URL", {"CELERY_BROKER_URL": "foo://"}),
    ("ARCHIVA_TLS_CERT", {"ARCHIVA_TLS_CERT": "/etc/archiva/cert.pem"}),
    ("ARCHIVA_TLS_KEY", {"ARCHIVA_TLS_KEY": "/etc/archiva/key.pem"}),
    ("ARCHIVA_SMTP_REQUIRE_TLS", {"ARCHIVA_SMTP_REQUIRE_TLS": "maybe"}),
    ("ARCHIVA_STORAGE", {"ARCHIVA_STORAGE": "ftp"}),
    ("ARCHIVA_SMTP_MAX_SIZE", {"ARCHIVA_SMTP_MAX_SIZE": "200MB"}),
    ("ARCHIVA_LOG_LEVEL", {"ARCHIVA_LOG_LEVEL": "verbose"}),
    ("SECRET_KEY_FILE", {"SECRET_KEY_FILE": "/nonexistent/archiva-secret"}),
    ("ARCHIVA_CACHE_URL", {"ARCHIVA_CACHE_URL": "memcached://127.0.0.1:11211"}),
    ("ARCHIVA_DNS_RESOLVER", {"ARCHIVA_DNS_RESOLVER": "[::1"}),
    ("SECURE_SSL_REDIRECT", {"SECURE_SSL_REDIRECT": "always"}),
    ("ARCHIVA_S3_OBJECT_LOCK", {"ARCHIVA_S3_OBJECT_LOCK": "always"}),
    ("ARCHIVA_RETENTION_DELAY", {"ARCHIVA_RETENTION_DELAY": "soon"}),
    # Billing: a key that is not Stripe's, a key without the secret that verifies its webhooks, a bad API base.
    ("STRIPE_SECRET_KEY", {"STRIPE_SECRET_KEY": "pk_live_oops", "STRIPE_WEBHOOK_SECRET": "whsec_x"}),
    ("STRIPE_WEBHOOK_SECRET", {"STRIPE_SECRET_KEY": "sk_test_x", "STRIPE_WEBHOOK_SECRET": ""}),
    ("ARCHIVA_STRIPE_API_BASE", {"ARCHIVA_STRIPE_API_BASE": "localhost:8420"}),
    # The PROXY protocol without the balancer's networks would believe anyone's header; a network that is none.
    ("ARCHIVA_SMTP_PROXY_PROTOCOL", {"ARCHIVA_SMTP_PROXY_PROTOCOL": "1"}),  # the message names _FROM too
    ("ARCHIVA_SMTP_PROXY_FROM", {"ARCHIVA_SMTP_PROXY_FROM": "10.0.0.0/8,lb.internal"}),
    # A deployment at scale keeps the 7 days a shortened retention waits after its approval.
    ("ARCHIVA_RETENTION_DELAY", {"ARCHIVA_RETENTION_DELAY": "60", "DATABASE_URL": "postgresql://a@127.0.0.1/b"}),
]


@pytest.fixture(scope="module")
def bad_value_runs(tmp_path_factory) -> list[tuple[int, str, str]]:
    """(returncode, stdout, stderr) of every BAD_VALUES case, run side by side: each
    needs a fresh interpreter, and one after another they take long."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", PROBE],
            cwd=ROOT,
            env=clean_environ(tmp_path_factory.mktemp("bad"), **overrides),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _variable, overrides in BAD_VALUES
    ]
    results = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=120)
        results.append((process.returncode, stdout, stderr))
    return results


@pytest.mark.parametrize("case", range(len(BAD_VALUES)), ids=[f"{name}={o[name]}" for name, o in BAD_VALUES])
def test_a_bad_value_stops_the_process_naming_the_variable(bad_value_runs, case):
    variable, _overrides = BAD_VALUES[case]
    returncode, stdout, stderr = bad_value_runs[case]
    assert returncode != 0, stdout
    assert "ConfigError" in stderr
    assert variable in stderr


def test_a_refused_database_url_does_not_print_its_password(tmp_path):
    result = run_settings(tmp_path, DATABASE_URL="mysql://archiva:hunter2-secret@db.internal/archiva")
    assert result.returncode != 0
    assert "DATABASE_URL" in result.stderr
    assert "hunter2-secret" not in result.stderr + result.stdout


def test_unset_means_the_embedded_default(tmp_path):
    loaded = load_settings(tmp_path)

    assert loaded["data_dir"] == str(tmp_path.resolve())
    assert loaded["engine"] == "django.db.backends.sqlite3"
    assert loaded["db_name"] == str(tmp_path.resolve() / "archiva.sqlite3")
    assert loaded["storage"] == "folder"
    assert loaded["store"] == "FolderStore"
    assert loaded["store_root"].startswith(str(tmp_path.resolve()))
    assert loaded["broker"] == "filesystem://"
    assert loaded["broker_transport"] == "archiva.broker:FilesystemTransport"  # atomic task files
    assert loaded["broker_options"]["data_folder_in"].startswith(str(tmp_path.resolve()))
    assert loaded["email_backend"] == "web.mail.OutboxBackend"
    assert loaded["cache"] == "django.core.cache.backends.locmem.LocMemCache"
    assert loaded["region"] == "us"
    assert loaded["smtp_port"] == 2525
    assert loaded["smtp_hostname"] == "archive.archiva.com"


def test_the_embedded_default_keeps_one_generated_secret_key(tmp_path):
    first = load_settings(tmp_path)["secret_key"]
    second = load_settings(tmp_path)["secret_key"]

    assert len(first) >= 50
    assert first == second, "sessions and verification links must survive a restart"
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0


def test_set_means_scale(tmp_path):
    loaded = load_settings(
        tmp_path,
        DATABASE_URL="postgresql://archiva:pw@db.internal:5432/archiva",
        ARCHIVA_S3_ENDPOINT="http://127.0.0.1:9",
        CELERY_BROKER_URL="redis://127.0.0.1:6379/0",
        ARCHIVA_CACHE_URL="redis://127.0.0.1:6379/1",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
    )

    assert loaded["engine"] == "django.db.backends.postgresql"
    assert loaded["db_name"] == "archiva"
    assert loaded["storage"] == "s3"
    assert loaded["store"] == "S3Store"
    assert loaded["broker"].startswith("redis://")
    assert loaded["cache"] == "django.core.cache.backends.redis.RedisCache"
    assert not (tmp_path / "archiva.sqlite3").exists()


def test_rabbitmq_is_a_scale_broker_too(tmp_path):
    loaded = load_settings(tmp_path, CELERY_BROKER_URL="amqp://guest:guest@127.0.0.1:5672//")
    assert loaded["broker"].startswith("amqp://")


def test_aws_s3_without_an_endpoint_is_chosen_by_ARCHIVA_STORAGE(tmp_path):
    loaded = load_settings(tmp_path, ARCHIVA_STORAGE="s3", AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x")
    assert loaded["store"] == "S3Store"


def test_the_eu_region_brings_its_own_domains_and_buckets(tmp_path):
    loaded = load_settings(tmp_path, ARCHIVA_REGION="eu")
    assert loaded["region"] == "eu"
    assert loaded["smtp_hostname"] == "archive.mailarchiva.eu"
    assert loaded["s3_region"] == "eu-central-1"
    assert loaded["bucket_prefix"] == "archiva-eu-"


def test_a_secret_key_file_is_read(tmp_path):
    key = tmp_path / "key"
    key.write_text("k" * 60 + "\n")
    assert load_settings(tmp_path, SECRET_KEY_FILE=str(key))["secret_key"] == "k" * 60


# --- documentation ----------------------------------------------------------


def test_env_example_lists_every_variable_the_settings_read():
    documented = set(re.findall(r"\b([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text()))
    missing = [name for name in settings_variables() if name not in documented]
    assert not missing, f".env.example does not list {', '.join(missing)}"


def test_the_variable_scan_finds_the_settings():
    """Guards the scan above: it must see the variables we know are read."""
    found = settings_variables()
    for name in ("ARCHIVA_DATA_DIR", "ARCHIVA_HTTP_PORT", "DATABASE_URL", "CELERY_BROKER_URL", "ARCHIVA_S3_ENDPOINT"):
        assert name in found
