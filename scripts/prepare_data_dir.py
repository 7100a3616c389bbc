"""Create the folders the configured settings expect before the processes start.

The embedded default keeps everything under ARCHIVA_DATA_DIR; kombu's
filesystem broker refuses to start (and publishing fails) when its folders
are missing.  Paths come from the settings themselves, so this stays right
when they change.  Harmless at scale: it only creates what the settings name.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "archiva.settings")


def main() -> None:
    from django.conf import settings

    folders = [settings.DATA_DIR, settings.ARCHIVA_SPOOL_DIR]
    if settings.CELERY_BROKER_URL.startswith("filesystem://"):
        options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
        names = ("data_folder_in", "data_folder_out", "processed_folder", "control_folder")
        folders += [options[name] for name in names if name in options]
    for folder in folders:
        Path(folder).mkdir(parents=True, exist_ok=True)


if __name__ == "__main__":
    main()
