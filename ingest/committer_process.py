"""`python -m ingest.committer_process FD`: the committer of one ingest process (ingest/commitd.py).

Django is set up before anything imports a model; the socket to the ingest
is file descriptor FD, inherited from it.
"""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "archiva.settings")
    import django

    django.setup()
    from ingest.commitd import serve_fd

    serve_fd(int(sys.argv[1]))


if __name__ == "__main__":
    main()
