"""ApiToken and AuditEvent move here from the archive app, in state only.

Their tables keep the names the archive app gave them (`db_table`), so no
row is copied; `archive.0005` then forgets them.
"""

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('tenants', '0003_tenant_m365_organization'),
        ('archive', '0004_reindex_for_hidden_recipients'),  # the tables exist
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='ApiToken',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('name', models.CharField(max_length=100)),
                        ('token_hash', models.CharField(max_length=64, unique=True)),
                        ('prefix', models.CharField(max_length=12)),
                        ('created_at', models.DateTimeField(default=django.utils.timezone.now)),
                        ('last_used_at', models.DateTimeField(blank=True, null=True)),
                        ('revoked_at', models.DateTimeField(blank=True, null=True)),
                        ('created_by', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='api_tokens', to=settings.AUTH_USER_MODEL)),
                        ('tenant', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='api_tokens', to='tenants.tenant')),
                    ],
                    options={
                        'db_table': 'archive_apitoken',
                    },
                ),
                migrations.CreateModel(
                    name='AuditEvent',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('actor_email', models.CharField(blank=True, max_length=320)),
                        ('action', models.CharField(choices=[('search', 'search'), ('view', 'view'), ('download', 'download'), ('export', 'export'), ('token-created', 'API token created'), ('token-revoked', 'API token revoked'), ('invitation-sent', 'invitation sent'), ('invitation-revoked', 'invitation revoked'), ('invitation-accepted', 'invitation accepted'), ('role-changed', 'role changed'), ('member-removed', 'member removed'), ('alias-added', 'alias added'), ('alias-removed', 'alias removed'), ('domain-added', 'domain added'), ('domain-verified', 'domain verified'), ('domain-removed', 'domain removed'), ('journal-token-rotated', 'journal address rotated'), ('setting-changed', 'organization setting changed')], max_length=32)),
                        ('target', models.CharField(blank=True, max_length=400)),
                        ('detail', models.JSONField(default=dict)),
                        ('ip', models.GenericIPAddressField(blank=True, null=True)),
                        ('created_at', models.DateTimeField(default=django.utils.timezone.now)),
                        ('tenant', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='audit_events', to='tenants.tenant')),
                        ('token', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='tenants.apitoken')),
                        ('user', models.ForeignKey(null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                    ],
                    options={
                        'db_table': 'archive_auditevent',
                        'indexes': [models.Index(fields=['tenant', '-created_at'], name='audit_tenant_recent')],
                    },
                ),
            ],
            database_operations=[],
        ),
    ]
