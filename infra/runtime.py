"""Process-wide tuning for the long-lived, allocation-heavy ingest processes."""

from __future__ import annotations

import ctypes
import gc
import os
import signal

# Generation-0 collections after this many new container objects (CPython's
# default is 700).  An SMTP session allocates a few hundred objects that
# reference counting frees at once; at thousands of messages a second the
# default ran a collection every few messages for nothing.
GC_THRESHOLDS = (20_000, 20, 20)


def settle_heap() -> None:
    """Once set up: move what exists now (Django, the settings, the models:
    hundreds of thousands of objects that live as long as the process) out of
    the collector's reach (gc.freeze), and collect young objects less often.

    A few per cent more messages a second for less CPU (bench/README.md).
    Cycles are still collected, just later; the benchmark's soak shows the
    memory flat.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(signum: int, parent: int) -> None:
    """Have the kernel send this process `signum` when its parent, `parent`, dies (Linux).

    A forked ingest process or committer must not outlive `manage.py smtpd`
    killed with -9: it would keep the port, or wait for connections forever.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # it died before prctl took effect
        signal.raise_signal(signum)
