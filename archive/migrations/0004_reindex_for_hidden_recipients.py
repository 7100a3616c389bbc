"""Search schema v3 keeps Bcc and envelope-only recipients in fields of their own
(issue 16, point 7): its index starts empty, so every indexed message is marked
pending and the workers index it again by themselves (the sweep schedules
`index_pending`, which goes on in batches until none is left).  No operator
step, and search fills up again while mail keeps flowing."""

from django.db import migrations


def mark_for_reindex(apps, schema_editor):
    Message = apps.get_model("archive", "Message")
    Message.objects.filter(index_status="indexed").update(index_status="pending")


class Migration(migrations.Migration):
    dependencies = [
        ("archive", "0003_message_attachment_list"),
    ]

    operations = [
        migrations.RunPython(mark_for_reindex, migrations.RunPython.noop),
    ]
