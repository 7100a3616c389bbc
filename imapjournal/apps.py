from django.apps import AppConfig


class ImapjournalConfig(AppConfig):
    name = "imapjournal"
    verbose_name = "IMAP journaling with OAuth2"
