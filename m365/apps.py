from django.apps import AppConfig


class M365Config(AppConfig):
    name = "m365"
    verbose_name = "Microsoft 365 connection"
