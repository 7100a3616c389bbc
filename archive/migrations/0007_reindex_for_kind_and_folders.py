"""Search schema v4 indexes each item's kind and folders (mailbox items, issue 18):
its index starts empty, so every indexed message is marked pending and the
workers index it again by themselves, as for v3 (0004)."""

from django.db import migrations


def mark_for_reindex(apps, schema_editor):
    Message = apps.get_model("archive", "Message")
    Message.objects.filter(index_status="indexed").update(index_status="pending")


class Migration(migrations.Migration):
    dependencies = [
        ("archive", "0006_mailbox_items"),
    ]

    operations = [
        migrations.RunPython(mark_for_reindex, migrations.RunPython.noop),
    ]
