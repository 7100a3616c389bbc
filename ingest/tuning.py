"""The ingest's tuning constants, each with its unit and the reason for its value.

One place to read and change them; the modules import them by name.  How
they were measured, and the figures, are in bench/README.md ("Why the
ingest is built this way").  Limits an operator sets (message size,
sessions, timeouts) are settings, not these.
"""

from __future__ import annotations

from datetime import timedelta

# --- SMTP sessions (ingest/smtp.py) ---------------------------------------------

# Bytes of a command line: RFC 5321 4.5.3.1.4 sets 512 as the least a server must take;
# SMTPUTF8 addresses and parameters make real ones longer.
LINE_LIMIT = 4096
# Bytes of pipelined input held while a step waits; beyond it the socket is paused.
PAUSE_BUFFER = 256 * 1024
# Unrecognized or malformed commands before the session is closed.
MAX_BAD_COMMANDS = 20
# Commands that lead to no message, allowed between two messages (Postfix's smtpd_junk_command_limit).
MAX_JUNK_COMMANDS = 100
# Bytes per second a DATA must keep up beyond the timeout: a 150 MB report gets 300 s + 5 h
# (a 64 kbit/s line), a sender trickling a byte a second is closed after the timeout.
DATA_MIN_RATE = 8 * 1024
# Database lookups of unknown tokens per second and peer, after a burst of LOOKUP_BURST.
LOOKUP_RATE = 0.2
LOOKUP_BURST = 20
# Messages per second and peer for the holding area (postmaster, unclaimed validation mail),
# after a burst of HOLD_BURST: neither is ever more than a trickle.
HOLD_RATE = 0.1
HOLD_BURST = 50
# Seconds a connection from the load balancer's networks has to send its PROXY header: the
# balancer sends it with the connection (HAProxy waits as long by default, timeout client aside).
PROXY_HEADER_TIMEOUT = 10.0
# Seconds an accepted message's log line may wait, so the lines are written in bursts.
ACCEPTED_LOG_DELAY = 0.2

# --- DATA reading (ingest/dataread.py) ------------------------------------------

# find_mark: DOT_PROBES dots within FAR_DOT bytes of each other make a region "thick with
# dots", whose first THICK_WINDOW bytes (doubled each time in a row) go to bytes.find.
DOT_PROBES = 6
FAR_DOT = 1024
THICK_WINDOW = 8 * 1024
# Buffers shorter than this go to bytes.find at once: there it costs about what the probes would.
SMALL = 4096
# Bytes of a message kept in memory; a larger one is spooled (a journal report is tens of KB).
MEMORY_LIMIT = 256 * 1024

# --- The committer (ingest/commitd.py) -----------------------------------------

# Seconds before a committer that went away is started again.
RESTART_DELAY = 1.0
# Bytes of the committer's one receive buffer (reused: a fresh one per read would be mapped each time).
RECEIVE_SIZE = 1 << 20
# Seconds an ingest process waits for the committer to accept its reconnection.
RECONNECT_TIMEOUT = 5.0
# Seconds between the committer's checks that it should stop listening.
LISTEN_POLL = 1.0
# Bytes of requests received from one connection before what is there is committed.
MAX_BATCH_BYTES = 16 << 20

# --- The committer's recording (ingest/record.py) -------------------------------

# The most recorded deliveries one processing task carries, and the seconds recorded ids gather
# before they are published (light load: 250 -> searchable waits no longer).
PUBLISH_CHUNK = 500
PUBLISH_DELAY = 0.2
# Under load (PUBLISH_LOADED ids gathered within PUBLISH_DELAY: 500 msgs/s or more) they gather
# for up to PUBLISH_LOADED_DELAY or until PUBLISH_CHUNK wait: a worker's task has costs per task
# (its transaction, a pack, an index commit), and bench/worker.py archives and indexes tasks of 500
# 15% faster than tasks of 200 (30% than 80).
PUBLISH_LOADED = 100
PUBLISH_LOADED_DELAY = 0.5
# Seconds between the committer's SQLite WAL checkpoints.
CHECKPOINT_INTERVAL = 1.0
# Bytes of WAL file kept when the WAL starts over (PRAGMA journal_size_limit).
WAL_SIZE_LIMIT = 64 << 20
# Seconds between checks of the database connection: once per batch it was a tenth of a batch's work.
CONNECTION_CHECK_INTERVAL = 1.0

# --- The token directory (ingest/directory.py) ----------------------------------

# Seconds between full reloads of the token directory (incremental ones run in between).
FULL_RELOAD_EVERY = 60.0
# Rows committed slightly out of order with their updated_at stamps are still caught by
# overlapping the incremental window by this much.
WATERMARK_OVERLAP = timedelta(seconds=30)
# Seconds a token the database did not have is answered 550 without asking again.
NEGATIVE_TTL = 5.0
# Tokens remembered as missing; beyond that the memory starts over.
NEGATIVE_MAX = 10_000

# --- The server (ingest/server.py) ----------------------------------------------

# Seconds after which a spool file left by a crashed ingest is removed (clean_spool).
STALE_SPOOL_AGE = 3600.0
