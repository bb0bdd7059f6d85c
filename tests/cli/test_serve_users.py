"""`stoker serve --users DIR`: a node's shared server stops once no process that
uses it is alive, however they ended (SIGKILL included), and not before. Before
this, a server started by an executor JVM killed with SIGKILL kept running as an
orphan after the application ended."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path


def _serve(stoker_bin: str, users: Path) -> subprocess.Popen:
    server = subprocess.Popen(
        [stoker_bin, "serve", "--device", "cpu", "--port", "0", "--users", str(users)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert server.stdout.readline().startswith("grpc://")
    return server


def _user(users: Path) -> subprocess.Popen:
    """A process that uses the server: registered by its pid, as JVMs and
    Python processes register themselves."""
    process = subprocess.Popen(["sleep", "600"])
    (users / str(process.pid)).write_text("test\n")
    return process


def _exits_within(server: subprocess.Popen, seconds: float) -> bool:
    try:
        server.wait(timeout=seconds)
        return True
    except subprocess.TimeoutExpired:
        return False


def test_the_server_stops_when_its_last_user_is_killed(stoker_bin, tmp_path):
    users = tmp_path / "users"
    users.mkdir()
    first, second = _user(users), _user(users)
    server = _serve(stoker_bin, users)
    try:
        first.send_signal(signal.SIGKILL)
        first.wait()
        # One user is left: the server keeps serving.
        assert not _exits_within(server, 3), "the server stopped while a user was alive"
        assert not (users / str(first.pid)).exists(), "a dead user was not forgotten"
        second.send_signal(signal.SIGKILL)
        second.wait()
        assert _exits_within(server, 10), "the server outlived its last user"
        assert server.returncode == 0
        assert "no process that used this server is alive" in server.stderr.read()
    finally:
        for p in (first, second, server):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_a_user_that_exits_cleanly_counts_too(stoker_bin, tmp_path):
    users = tmp_path / "users"
    users.mkdir()
    user = _user(users)
    server = _serve(stoker_bin, users)
    try:
        time.sleep(1.5)
        assert server.poll() is None
        # A clean exit removes the user's file itself.
        (users / str(user.pid)).unlink()
        assert _exits_within(server, 10)
    finally:
        for p in (user, server):
            if p.poll() is None:
                p.kill()
                p.wait()
