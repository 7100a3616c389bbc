"""The archive: one Message per original per tenant.

Tenant-owned rows: reach them through `archive.access`; change them through
`archive.actions` (tests/test_access_layer.py enforces it).
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from tenants.models import Tenant


class Message(models.Model):
    """One archived original, merged from every journal report that carried it.

    `merge_key` is `mid:<Message-ID>`, or `sha:<SHA-256 of the original>` for
    an original without one.  Each report stays stored as evidence and points
    here through `ingest.Delivery.message`.  `version` bumps on every merge;
    the search backends never let an older version replace a newer one.
    """

    class IndexStatus(models.TextChoices):
        PENDING = "pending", "pending"  # changed since it was last indexed
        INDEXED = "indexed", "indexed"
        FAILED = "failed", "failed"  # its stored objects could not be read (see index_error)

    class Kind(models.TextChoices):
        MAIL = "mail", "mail"
        EVENT = "event", "calendar event"  # iCalendar from a mailbox's calendar
        CONTACT = "contact", "contact"  # vCard from a mailbox's contacts

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="messages")
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.MAIL)
    merge_key = models.CharField(max_length=300)
    message_id = models.TextField(blank=True)
    subject = models.TextField(blank=True)
    from_display = models.TextField(blank=True)
    from_addresses = models.JSONField(default=list)
    envelope_sender = models.CharField(max_length=512, blank=True)
    on_behalf_of = models.CharField(max_length=512, blank=True)
    to = models.JSONField(default=list)  # header To, lower-cased addresses
    cc = models.JSONField(default=list)
    bcc = models.JSONField(default=list)  # header Bcc (rare: Bcc is in the envelope)
    # Union over all reports: [{"address", "kind", "expanded", "forwarded"}].
    envelope_recipients = models.JSONField(default=list)
    # Primary addresses of the mailboxes holding a copy (archive.items): their
    # owners see the message (`documents.participants`), as its sources say.
    mailboxes = models.JSONField(default=list)
    # An event's or a contact's own fields (start, end, location, phones…), for its page.
    details = models.JSONField(default=dict, blank=True)
    # Lower-cased addresses that make the message visible to a plain user.
    participants = models.JSONField(default=list)
    date = models.DateTimeField(db_index=True)  # the Date header, or when we received it
    size = models.BigIntegerField()  # of the original
    has_attachments = models.BooleanField(default=False)
    attachments = models.JSONField(default=list)  # [{"name", "content_type", "size", "skipped"}]
    # The attachments as the message page lists and serves them (`archive.parser.mime`),
    # worked out when archived so a page with thousands opens without parsing:
    # [{"n": download number, "name", "content_type", "size"}].  None for a
    # message archived before this was kept: computed (and kept) on its first view.
    attachment_list = models.JSONField(null=True, blank=True, default=None)
    # Each object below is either a whole object of the bucket (`*_offset` and
    # `*_size` None: `raw/…`, `text/…`) or `*_size` bytes from `*_offset` of a
    # pack (`pack/…`, `ingest.pack`: the objects of one worker batch), read
    # and checked against its own SHA-256 either way (`documents.read_object`).
    original_sha256 = models.CharField(max_length=64)
    original_key = models.CharField(max_length=255)
    original_offset = models.BigIntegerField(null=True, blank=True)
    original_size = models.BigIntegerField(null=True, blank=True)
    decrypted_sha256 = models.CharField(max_length=64, blank=True)
    decrypted_key = models.CharField(max_length=255, blank=True)
    decrypted_offset = models.BigIntegerField(null=True, blank=True)
    decrypted_size = models.BigIntegerField(null=True, blank=True)
    # The extracted text (body, attachment names and text) as JSON in the bucket:
    # indexing reads it instead of parsing again; `reindex --reparse` rewrites it.
    text_sha256 = models.CharField(max_length=64, blank=True)
    text_key = models.CharField(max_length=255, blank=True)
    text_offset = models.BigIntegerField(null=True, blank=True)
    text_size = models.BigIntegerField(null=True, blank=True)
    problems = models.JSONField(default=list)  # what the parser could not read
    version = models.PositiveIntegerField(default=1)
    index_status = models.CharField(max_length=16, choices=IndexStatus.choices, default=IndexStatus.PENDING)
    indexed_at = models.DateTimeField(null=True, blank=True)
    index_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "merge_key"], name="one_message_per_original")]
        indexes = [
            models.Index(fields=["tenant", "-date"], name="message_tenant_recent"),
            models.Index(fields=["index_status", "tenant"], name="message_index_backlog"),
            # Retention deletes an object once no message refers to it (archive.actions.referenced_keys).
            models.Index(fields=["original_key"], name="message_original_key"),
            models.Index(fields=["text_key"], name="message_text_key"),
            models.Index(fields=["decrypted_key"], name="message_decrypted_key", condition=~models.Q(decrypted_key="")),
        ]

    def __str__(self) -> str:
        return f"message {self.pk} v{self.version} of tenant {self.tenant_id}"

    @property
    def has_decrypted(self) -> bool:
        return bool(self.decrypted_key)


class MessageSource(models.Model):
    """A mailbox copy of an archived item: which mailbox holds it, in which folder, under which Graph id.

    Made with the item's Delivery (`archive.items.store_items`, one
    transaction), linked to its Message when the worker archives it.  Journal
    sources are the journal reports' Delivery rows themselves (`source`
    journal), linked to the Message the same way.  A move changes `folder`
    and appends the old path to `folder_history`; a deletion in the mailbox
    sets `deleted_at` and never deletes anything from the archive.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="message_sources")
    delivery = models.OneToOneField(
        "ingest.Delivery", on_delete=models.PROTECT, related_name="mailbox_source", db_index=False
    )
    message = models.ForeignKey(
        Message, on_delete=models.PROTECT, null=True, blank=True, related_name="sources", db_index=False
    )
    kind = models.CharField(max_length=8, choices=Message.Kind.choices, default=Message.Kind.MAIL)
    mailbox = models.CharField(max_length=320)  # the mailbox's primary SMTP address, lower-case; "" for an upload
    # The uploaded file's name for a message imported from an upload (mbox,
    # ZIP), which no mailbox holds: "" for a mailbox copy.
    upload = models.CharField(max_length=255, blank=True, default="")
    folder = models.CharField(max_length=1000, blank=True)  # "Inbox/Projects"
    graph_id = models.CharField(max_length=512)
    sha256 = models.CharField(max_length=64)  # of the item's bytes: a changed item is a new version
    received = models.DateTimeField(null=True, blank=True)  # when the mailbox received it, per Graph
    created_at = models.DateTimeField(default=timezone.now)
    # [{"folder": old path, "until": ISO time}], oldest first.
    folder_history = models.JSONField(default=list, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "mailbox", "graph_id", "sha256"], name="one_source_per_mailbox_item_version"
            )
        ]
        indexes = [
            models.Index(fields=["message"], name="source_message"),
            models.Index(fields=["tenant", "mailbox", "folder"], name="source_mailbox_folder"),
        ]

    def __str__(self) -> str:
        return f"{self.mailbox}: {self.folder or self.kind} ({self.graph_id[:16]})"
