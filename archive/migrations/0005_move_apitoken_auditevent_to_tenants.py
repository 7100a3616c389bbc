"""ApiToken and AuditEvent now belong to the tenants app (`tenants.0004`):
forget them here, in state only; their tables stay where they are.
"""

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('archive', '0004_reindex_for_hidden_recipients'),
        ('tenants', '0004_move_apitoken_auditevent_here'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveField(model_name='auditevent', name='token'),
                migrations.RemoveField(model_name='auditevent', name='tenant'),
                migrations.RemoveField(model_name='auditevent', name='user'),
                migrations.DeleteModel(name='ApiToken'),
                migrations.DeleteModel(name='AuditEvent'),
            ],
            database_operations=[],
        ),
    ]
