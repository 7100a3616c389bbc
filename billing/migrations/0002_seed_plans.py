"""The plans on offer at launch, as data: a mailbox per month or per year, 30 days free,
in the region's currency (USD on archiva.com, EUR on mailarchiva.eu).  Operators change
prices by adding a plan row and retiring the old one (`active`), never in code."""

from django.db import migrations

PLANS = [
    # code (also the Stripe plan id), name, region, currency, interval, cents per mailbox
    ("archiva-us-mailbox-month", "Archiva, per mailbox, monthly", "us", "usd", "month", 300),
    ("archiva-us-mailbox-year", "Archiva, per mailbox, yearly", "us", "usd", "year", 3000),
    ("archiva-eu-mailbox-month", "Archiva, per mailbox, monthly", "eu", "eur", "month", 300),
    ("archiva-eu-mailbox-year", "Archiva, per mailbox, yearly", "eu", "eur", "year", 3000),
]


def seed(apps, schema_editor):
    Plan = apps.get_model("billing", "Plan")
    for code, name, region, currency, interval, cents in PLANS:
        Plan.objects.update_or_create(
            code=code,
            defaults={
                "name": name,
                "region": region,
                "currency": currency,
                "interval": interval,
                "unit_amount": cents,
                "trial_days": 30,
                "active": True,
            },
        )


def unseed(apps, schema_editor):
    apps.get_model("billing", "Plan").objects.filter(code__in=[p[0] for p in PLANS]).delete()


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]

    operations = [migrations.RunPython(seed, unseed)]
