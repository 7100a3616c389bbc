"""`python -m ingest.committer_process FD PARENT`: the host's ingest committer (ingest/commitd.py).

Django is set up before anything imports a model.  FD, inherited, is the
socket every ingest process of the host connects to; PARENT is the pid of
`manage.py smtpd`, which started it and restarts it if it dies.
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
    fd, parent = (int(arg) for arg in sys.argv[1:3])
    serve_fd(fd, parent)


if __name__ == "__main__":
    main()
