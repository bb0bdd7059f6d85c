"""stoker.Client (the native Flight client for Python) against a stoker.serve()
server: training and inference round trips with pyarrow and polars inputs, and
the matching stoker errors."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
import stoker
from conftest import rings

SPEC = {"type": "mlp", "hidden": [16, 16], "num_classes": 2}


@pytest.fixture(scope="module")
def server():
    with stoker.serve(device="cpu", token="s3cret") as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return stoker.Client(server.address, token=server.token)


def ring_table(n: int, seed: int) -> pa.Table:
    r = rings(n, seed)
    return pa.table({"a": r["a"], "b": r["b"], "y": r["y"]})


def test_train_register_and_predict_with_pyarrow_and_polars(client):
    assert client.health()["status"] == "serving"
    client.create_job(
        "py",
        features=["a", "b"],
        label="y",
        spec=SPEC,
        optimizer={"name": "adam", "lr": 0.02},
        seed=1,
        batch_size=64,
    )
    train = ring_table(4000, 1)
    # One partition from pyarrow, one from polars (both through __arrow_c_stream__).
    assert client.put_partition("py", 0, train.slice(0, 2000))["rows"] == 2000
    assert client.put_partition("py", 1, pl.from_arrow(train.slice(2000)))["rows"] == 2000
    state = None
    for r in range(8):
        states, weights = [], []
        for p in (0, 1):
            # From round 1 the state goes once per round: partition 1 names it.
            sent = state if p == 0 else None
            named = f"r{r}" if state is not None else None
            result, s = client.train_round("py", p, r, sent, epochs=2, state_id=named)
            assert not result.get("needs_state"), result
            states.append(s)
            weights.append(result["samples"])
        state = stoker.average_states(states, weights)
    # An id the server does not hold: nothing trained, the state is asked for.
    result, s = client.train_round("py", 1, 8, None, state_id="unknown")
    assert result["needs_state"] is True and result["samples"] == 0 and s == b""
    client.register_model("rings-py", state, spec=SPEC, features=["a", "b"])

    test = ring_table(1000, 9)
    features = test.select(["a", "b"])
    from_arrow = client.predict("rings-py", features)
    from_polars = client.predict("rings-py", pl.from_arrow(features))
    from_pandas = client.predict("rings-py", features.to_pandas())
    assert from_arrow.num_rows == 1000
    assert from_arrow.equals(from_polars) and from_arrow.equals(from_pandas)
    accuracy = np.mean(from_arrow["prediction"].to_numpy() == test["y"].to_numpy())
    assert accuracy > 0.95
    # Pass-through columns come first, in order.
    kept = client.predict("rings-py", test.append_column("id", pa.array(range(1000))), keep=["id"])
    assert kept.column_names[:2] == ["id", "prediction"]
    assert kept["id"].to_pylist() == list(range(1000))
    assert client.download_state("models/rings-py") == state


def test_errors_have_their_stoker_classes(server, client):
    with pytest.raises(stoker.NotFoundError, match="no model named 'ghost'"):
        client.predict("ghost", ring_table(10, 1).select(["a", "b"]))
    client.create_job("bad", features=["a", "b"], label="y", spec=SPEC)
    strings = pa.table({"a": ["x"] * 4, "b": [1.0] * 4, "y": [0] * 4})
    with pytest.raises(stoker.InvalidInputError, match="'a' has type Utf8"):
        client.put_partition("bad", 0, strings)
    with pytest.raises(stoker.UnauthenticatedError):
        stoker.Client(server.address, token="wrong").health()
    with pytest.raises(stoker.ServerUnavailableError, match="127.0.0.1:1"):
        stoker.Client("grpc://127.0.0.1:1")
    with pytest.raises(TypeError, match="Arrow data"):
        client.predict("rings-py", [1, 2, 3])
    # The server still serves.
    assert client.health()["status"] == "serving"


def _gone(pid: int, seconds: float = 20) -> bool:
    """Whether process `pid` ends (or is a zombie) within `seconds`."""
    import time
    from pathlib import Path

    def running() -> bool:
        status = Path(f"/proc/{pid}/status")
        if not status.exists():
            return False
        return "\nState:\tZ" not in status.read_text()

    deadline = time.monotonic() + seconds
    while running() and time.monotonic() < deadline:
        time.sleep(0.2)
    return not running()


def test_serve_stops_with_the_script_that_forgot_to_stop_it(stoker_bin):
    import os
    import signal
    import subprocess
    import sys

    script = (
        "import stoker\n"
        "s = stoker.serve(device='cpu', binary={bin!r}, detach={detach})\n"
        "print(s.process.pid, flush=True)\n"
    )
    pids = {}
    for detach in (False, True):
        out = subprocess.run(
            [sys.executable, "-c", script.format(bin=stoker_bin, detach=detach)],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        pids[detach] = int(out.stdout.split()[-1])
    assert _gone(pids[False]), "a server started by serve() outlived its script"
    try:
        assert not _gone(pids[True], seconds=2), "serve(detach=True) keeps running"
    finally:
        os.kill(pids[True], signal.SIGTERM)
    assert _gone(pids[True])


def test_a_server_started_with_exit_with_parent_stops_with_its_parent(stoker_bin):
    """What Python UDF workers rely on: they end with os._exit, so atexit never runs."""
    import subprocess
    import sys

    starter = (
        "import os, subprocess, sys\n"
        f"p = subprocess.Popen([{stoker_bin!r}, 'serve', '--exit-with-parent', '--device', "
        "'cpu'], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)\n"
        "print(p.pid); print(p.stdout.readline().decode().strip()); sys.stdout.flush()\n"
        "os._exit(0)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", starter], check=True, capture_output=True, text=True, timeout=60
    ).stdout.split()
    pid, address = int(out[0]), out[1]
    assert address.startswith("grpc://")

    assert _gone(pid), "the server outlived the process that started it"
