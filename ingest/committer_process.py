"""`python -m ingest.committer_process [--listen] FD`: an ingest committer (ingest/commitd.py).

Django is set up before anything imports a model.  FD, inherited, is the
socket to the one ingest process this committer serves, or with --listen
the socket every ingest process of the host connects to.
"""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "archiva.settings")
    import django

    django.setup()
    from django.conf import settings

    from infra.runtime import settle_heap
    from ingest.commitd import serve_fd, yield_to_sessions

    yield_to_sessions(settings.ARCHIVA_COMMITTER_NICE)  # before its threads start: they inherit it
    settle_heap()
    listening = sys.argv[1:2] == ["--listen"]
    serve_fd(int(sys.argv[-1]), listening=listening)


if __name__ == "__main__":
    main()
