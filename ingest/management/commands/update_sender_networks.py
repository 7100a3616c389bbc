"""`manage.py update_sender_networks FILE`: replace the sender allow-list."""

import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from infra.networks import parse_networks
from ingest.policy import EXCHANGE_ONLINE_NETWORKS, SenderNetwork


class Command(BaseCommand):
    help = (
        "Replace the networks allowed to deliver to the ingest (when ARCHIVA_SENDER_ALLOWLIST=1) "
        "with those in FILE (one CIDR per line, # comments), or with Exchange Online's defaults."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", nargs="?", help="file of networks; '-' for standard input")
        parser.add_argument("--defaults", action="store_true", help="use Exchange Online's published ranges")

    def handle(self, *args: Any, file: str | None, defaults: bool, **options: Any) -> None:
        if bool(file) == defaults:
            raise CommandError("give either a FILE or --defaults")
        if defaults:
            lines = list(EXCHANGE_ONLINE_NETWORKS)
            source = "Exchange Online defaults"
        else:
            assert file is not None  # given: checked above
            try:
                text = sys.stdin.read() if file == "-" else Path(file).read_text()
            except OSError as exc:
                raise CommandError(f"cannot read {file}: {exc}") from exc
            lines, source = text.splitlines(), file
        try:
            networks = parse_networks(lines)
        except ValueError as exc:
            raise CommandError(f"{file}: {exc}") from exc
        if not networks:
            raise CommandError(f"{file} lists no networks; refusing to empty the allow-list")
        with transaction.atomic():
            SenderNetwork.objects.all().delete()
            SenderNetwork.objects.bulk_create(SenderNetwork(cidr=str(n), note=source[:200]) for n in networks)
        self.stdout.write(f"{len(networks)} sender networks from {source}; ingest processes reload within a minute")
