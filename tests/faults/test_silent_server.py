"""A server that stops answering (SIGSTOP: a wedged or paused process) fails the
calls to it within the client's liveness timeout, instead of hanging them. Before
`liveness`, a call waited for HTTP/2 pings 30 s apart and 20 s to answer (about
50 s); a health check, which the JVM makes before reusing a node's server, did
too. The server comes back when continued."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import stoker


@pytest.fixture
def server():
    with stoker.serve(device="cpu") as s:
        yield s
        # Whatever the test did, the server must be able to run its exit.
        s.process.send_signal(signal.SIGCONT)


def test_a_stopped_server_fails_calls_within_the_liveness_timeout(server):
    client = stoker.Client(server.address, token=server.token, liveness_s=3)
    assert client.health()["status"] == "serving"
    server.process.send_signal(signal.SIGSTOP)
    started = time.monotonic()
    with pytest.raises(stoker.ServerUnavailableError):
        client.health()
    waited = time.monotonic() - started
    # Detection takes up to one ping interval plus its answer (3 s here); the
    # bound is loose for a loaded machine, and far below the 50 s it was.
    assert waited < 30, waited
    server.process.send_signal(signal.SIGCONT)
    again = stoker.Client(server.address, token=server.token, liveness_s=3)
    assert again.health()["status"] == "serving"


def test_liveness_must_be_positive(server):
    with pytest.raises(stoker.InvalidInputError, match="liveness_s"):
        stoker.Client(server.address, token=server.token, liveness_s=0)


def test_python_local_server_replaces_a_silent_node_server(stoker_bin, tmp_path, monkeypatch):
    """stoker's Python side (predict_udf's workers) finds the node's server silent,
    kills it and starts another, as the JVM's LocalServer does."""
    from stoker import server as local

    monkeypatch.setenv("STOKER_RUN_DIR", str(tmp_path))
    monkeypatch.setenv("STOKER_BIN", stoker_bin)
    monkeypatch.setenv("STOKER_DEVICE", "cpu")
    monkeypatch.setattr(local, "_local", None)
    monkeypatch.setattr(local, "_started", None)

    def recorded_pid() -> int:
        return int(local._read_properties(tmp_path / "server.properties")["pid"])

    first = local.local_server()
    silent = recorded_pid()
    os.kill(silent, signal.SIGSTOP)
    try:
        second = local.local_server()
        replacement = recorded_pid()
        assert second != first and replacement != silent
        assert stoker.Client(*second).health()["status"] == "serving"
        wait_gone(silent)
    finally:
        for pid in (silent, recorded_pid()):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if state == "Z":
            return
        time.sleep(0.1)
    raise AssertionError(f"the silent server {pid} is still running")
