"""A server that stops answering (SIGSTOP: a wedged or paused process) fails the
calls to it within the client's liveness timeout, instead of hanging them. Before
`liveness`, a call waited for HTTP/2 pings 30 s apart and 20 s to answer (about
50 s); a health check, which the JVM makes before reusing a node's server, did
too. The server comes back when continued."""

from __future__ import annotations

import signal
import time

import pytest
import stoker


@pytest.fixture
def server():
    with stoker.serve(device="cpu") as s:
        yield s
        # Whatever the test did, the server must be able to run its exit.
        s.process.send_signal(signal.SIGCONT)


def test_a_stopped_server_fails_calls_within_the_liveness_timeout(server):
    client = stoker.Client(server.address, token=server.token, liveness_s=2)
    assert client.health()["status"] == "serving"
    server.process.send_signal(signal.SIGSTOP)
    started = time.monotonic()
    with pytest.raises(stoker.ServerUnavailableError):
        client.health()
    waited = time.monotonic() - started
    # Detection takes up to one ping interval plus its answer (2 s here); the
    # bound is loose for a loaded machine, and far below the 50 s it was.
    assert waited < 15, waited
    server.process.send_signal(signal.SIGCONT)
    again = stoker.Client(server.address, token=server.token, liveness_s=2)
    assert again.health()["status"] == "serving"


def test_liveness_must_be_positive(server):
    with pytest.raises(stoker.InvalidInputError, match="liveness_s"):
        stoker.Client(server.address, token=server.token, liveness_s=0)
