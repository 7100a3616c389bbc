# API token scopes and expiry (issue 23, point 5). Existing tokens keep "admin", as they worked before.
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("tenants", "0010_billing_audit_actions")]

    operations = [
        migrations.AddField(
            model_name="apitoken",
            name="scope",
            field=models.CharField(
                choices=[
                    ("search:read", "search:read — search and download"),
                    ("admin", "admin — everything its creator's role allows"),
                ],
                default="admin",
                max_length=20,
            ),
        ),
        migrations.AddField(
            model_name="apitoken",
            name="expires_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
