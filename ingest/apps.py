from django.apps import AppConfig


class IngestConfig(AppConfig):
    name = "ingest"

    def ready(self) -> None:
        from ingest import held
        from tenants.signals import domain_verified

        # tenants sits below ingest: it announces a verified domain rather than calling us.
        domain_verified.connect(held.on_domain_verified, dispatch_uid="ingest.held.on_domain_verified")
