"""A pytest killed with SIGKILL (no finaliser runs) leaves nothing behind: the slots of its
watches go with its connections, and a throwaway cluster it started is stopped and removed by
the plugin's watchdog."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import walwatch
from walwatch.pytest_plugin import drop_database

INNER = '''
import os, pathlib, time
import walwatch

def test_hangs_until_killed(wal, walwatch_database):
    row = walwatch.execute(walwatch_database, "SELECT current_setting('data_directory')")
    out = pathlib.Path(os.environ["INNER_OUT"])
    (out / "slot").write_text(wal.slot)
    (out / "data_dir").write_text(row[0][0])
    (out / "database").write_text(walwatch.execute(walwatch_database, "SELECT current_database()")[0][0])
    (out / "ready").write_text("")
    time.sleep(300)
'''


def wait_for(what: str, condition: Callable[[], bool], deadline_s: float = 30.0) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {deadline_s}s for {what}")
        time.sleep(0.1)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def start_inner(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    (tmp_path / "test_inner.py").write_text(INNER)
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, INNER_OUT=str(out))
    env.pop("WALWATCH_DSN", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, "test_inner.py"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for("the inner test to start watching", lambda: (out / "ready").exists(), 120)
    except BaseException:
        proc.kill()
        raise
    return proc, out


def test_a_killed_pytest_leaves_no_slot_on_the_server(tmp_path: Path, walwatch_dsn: str) -> None:
    proc, out = start_inner(
        tmp_path, f"--walwatch-dsn={walwatch_dsn}", "-o", f"walwatch_database_prefix=killed_{os.getpid()}"
    )
    slot = (out / "slot").read_text()
    slots = f"SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'"
    assert walwatch.execute(walwatch_dsn, slots) == [["1"]], "the watch's slot while it runs"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    wait_for(f"slot {slot} to go", lambda: walwatch.execute(walwatch_dsn, slots) == [["0"]])
    # The killed session's database is its own (a session token in its name); remove it.
    drop_database(walwatch_dsn, (out / "database").read_text())


def test_a_killed_pytest_leaves_no_throwaway_cluster(tmp_path: Path) -> None:
    proc, out = start_inner(tmp_path)
    data_dir = Path((out / "data_dir").read_text())
    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    assert alive(postmaster)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    wait_for("the watchdog to stop the cluster", lambda: not alive(postmaster))
    wait_for("the watchdog to remove its directory", lambda: not data_dir.exists())
