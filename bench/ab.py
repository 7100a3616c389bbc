"""Interleaved A/B of the SMTP ingest between two git revisions (how issue 4's changes were measured).

    .venv/bin/python bench/ab.py                  # HEAD~1 against HEAD: 3 rounds of 40,000 × 20 KB, 20 sessions
    .venv/bin/python bench/ab.py main my-branch --rounds 5 --messages 20000

Each revision is checked out in a temporary git worktree that shares this
checkout's `.venv` (so both must run on the same requirements).  Rounds
alternate A and B: on a shared, noisy machine one pair of runs says little,
but a change that wins every round does.  Each run is a fresh embedded-
default ingest (`manage.py smtpd`, p=1, TLS off) driven by smtp-source,
measured by the revision's own bench/smtp.py exactly as the ratio's run
(`measure_plain`: msgs/s, the CPU per message of the ingest's processes,
and the check that every accepted message is archived).  Needs what
bench/smtp.py needs (`apt-get install -y postfix swaks`).

Run folders are kept until the end: deleting thousands of files just
before a run slows ext4's inode allocation for the next one (see
bench/smtp.py, Archiva.fresh_data_dir).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARK = "AB-JSON "


def one_run(tree: Path, workdir: Path, messages: int, sessions: int) -> dict:
    """In a child process (--one): the revision's own bench/smtp.py measures one
    fresh ingest with smtp-source (`measure_plain`, the ratio's run), archive check included."""
    sys.path.insert(0, str(tree / "bench"))
    os.chdir(tree)
    import smtp  # the revision's own bench module

    archiva = smtp.Archiva(workdir, smtp.make_tls(workdir / "tls"))
    archiva.prepare()
    result = smtp.measure_plain(archiva, smtp.Shape("ab", messages, 20 * 1024, sessions, True), 1)
    if result.error or result.lost or not result.check.startswith("ok"):
        raise SystemExit(f"the run failed: {result.error or result.check}")
    return {"rate": result.rate, "cpu_ms": result.cpu_ms}


def run_in(tree: Path, workdir: Path, messages: int, sessions: int) -> dict:
    cmd = [sys.executable, __file__, "--one", str(tree), str(workdir), str(messages), str(sessions)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"a run in {tree} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return json.loads(lines[-1][len(MARK) :])


def worktree(rev: str, folder: Path) -> Path:
    added = subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder), rev], capture_output=True, text=True
    )
    if added.returncode != 0:
        raise SystemExit(f"cannot check out revision {rev!r}: {added.stderr.strip()}")
    (folder / ".venv").symlink_to(ROOT / ".venv")
    return folder


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--one"]:
        tree, workdir, messages, sessions = Path(argv[1]), Path(argv[2]), int(argv[3]), int(argv[4])
        print(MARK + json.dumps(one_run(tree, workdir, messages, sessions)), flush=True)
        return 0
    parser = argparse.ArgumentParser(description="Interleaved A/B of the SMTP ingest between two git revisions.")
    parser.add_argument("a", nargs="?", default="HEAD~1", help="revision A, the baseline (default HEAD~1)")
    parser.add_argument("b", nargs="?", default="HEAD", help="revision B (default HEAD)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=40_000)
    parser.add_argument("--sessions", type=int, default=20)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "bench"))
    from smtp import check_prerequisites

    check_prerequisites()
    base = Path(tempfile.mkdtemp(prefix="archiva-ab-"))
    trees = {}
    try:
        trees = {"A": worktree(args.a, base / "a"), "B": worktree(args.b, base / "b")}
        results: dict[str, list[dict]] = {"A": [], "B": []}
        for number in range(1, args.rounds + 1):
            for name, tree in trees.items():
                workdir = base / f"run-{name}-{number}"
                workdir.mkdir()
                result = run_in(tree, workdir, args.messages, args.sessions)
                results[name].append(result)
                print(
                    f"round {number} {name}: {result['rate']:7.0f} msgs/s  {result['cpu_ms']:.3f} ms CPU/msg",
                    flush=True,
                )
        rate = {name: statistics.median(r["rate"] for r in runs) for name, runs in results.items()}
        cpu = {name: statistics.median(r["cpu_ms"] for r in runs) for name, runs in results.items()}
        wins = sum(b["rate"] > a["rate"] for a, b in zip(results["A"], results["B"], strict=True))
        print(f"A = {args.a}: median {rate['A']:.0f} msgs/s, {cpu['A']:.3f} ms CPU/msg")
        print(f"B = {args.b}: median {rate['B']:.0f} msgs/s, {cpu['B']:.3f} ms CPU/msg")
        print(
            f"B / A: {rate['B'] / rate['A']:.3f} (msgs/s), {cpu['B'] / cpu['A']:.3f} (CPU);"
            f" B faster in {wins} of {args.rounds} rounds"
        )
    finally:
        for tree in trees.values():
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
