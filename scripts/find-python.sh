#!/usr/bin/env bash
# Print the first Python >= 3.11 on PATH (or $PYTHON), for creating .venv.
set -euo pipefail
for candidate in ${PYTHON:-} python3.13 python3.12 python3.11 python3; do
    command -v "$candidate" >/dev/null 2>&1 || continue
    if "$candidate" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        command -v "$candidate"
        exit 0
    fi
done
echo "Archiva needs Python 3.11 or newer with the venv module (Debian: apt-get install python3 python3-venv)," \
     "or point PYTHON at one: make PYTHON=/path/to/python3.12 ..." >&2
exit 1
