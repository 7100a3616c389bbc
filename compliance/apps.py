from django.apps import AppConfig


class ComplianceConfig(AppConfig):
    name = "compliance"
    verbose_name = "Retention, legal hold, export and import"

    def ready(self) -> None:
        from compliance import metrics

        metrics.register()  # the ingest's /metrics serves the default registry
