"""A real `stoker serve` driven only by pyarrow.flight (Arrow C++'s client):
jobs, partitions, training rounds, model registration, inference, errors."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import read_state, rings
from pyarrow import flight

from flight.conftest import act

MLP = {"type": "mlp", "hidden": [32, 32], "num_classes": 2}


def put(client, job, partition, version, table):
    descriptor = flight.FlightDescriptor.for_path("partition", job, str(partition), version)
    writer, reader = client.do_put(descriptor, table.schema)
    writer.write_table(table, max_chunksize=1000)
    writer.done_writing()
    meta = reader.read()
    writer.close()
    return json.loads(meta.to_pybytes())


def exchange(client, name, table, keep=None, chunk=700):
    options = flight.FlightCallOptions(
        headers=[(b"x-stoker-keep", ",".join(keep).encode())] if keep else []
    )
    descriptor = flight.FlightDescriptor.for_path("models", name)
    writer, reader = client.do_exchange(descriptor, options)
    writer.begin(table.schema)
    out = []
    for batch in table.to_batches(max_chunksize=chunk):
        writer.write_batch(batch)
    writer.done_writing()
    for chunk_ in reader:
        out.append(chunk_.data)
    writer.close()
    return pa.Table.from_batches(out)


def test_train_rounds_register_and_predict(server, cli, tmp_path):
    client = flight.connect(server.uri)
    health, _ = act(client, "health")
    assert health["status"] == "serving"
    names = {a.type for a in client.list_actions()}
    assert {"create_job", "train_round", "drop_job", "register_model", "stats"} <= names

    act(
        client,
        "create_job",
        {
            "job": "rings",
            "spec": MLP,
            "features": ["a", "b", "noise"],
            "label": "y",
            "optimizer": {"name": "adam", "lr": 0.01},
            "seed": 3,
            "batch_size": 64,
        },
    )
    parts = [pa.table(rings(2000, seed)) for seed in (1, 2)]
    for p, table in enumerate(parts):
        meta = put(client, "rings", p, "v1", table)
        assert meta["rows"] == 2000 and not meta["replaced"]
    assert put(client, "rings", 1, "v1", parts[1])["replaced"]

    # Synchronous local SGD by hand: train each partition, average, repeat.
    from stoker import average_states

    state = None
    for rnd in range(4):
        outs = []
        for p in range(2):
            blobs = {"state": state} if state else {}
            result, out = act(
                client,
                "train_round",
                {"job": "rings", "partition": p, "version": "v1", "round": rnd, "epochs": 2},
                **blobs,
            )
            assert result["samples"] == 2000 and result["round"] == rnd
            outs.append(out["state"])
        state = average_states(outs, [2000.0, 2000.0])

    model_json = json.dumps(MLP).encode()
    info, _ = act(client, "register_model", {"name": "rings"}, model=model_json, state=state)
    assert info["version"] == 1 and info["features"] == ["a", "b", "noise"]

    test = pa.table(rings(3000, 9)).append_column("id", pa.array(np.arange(3000)))
    pred = exchange(client, "rings", test, keep=["id"])
    assert pred.num_rows == 3000
    assert pred.column_names == ["id", "prediction", "probability"]
    assert pred["id"].to_pylist() == list(range(3000))

    # A bad row in a later batch fails the stream after the good batches were
    # answered; the message names the column and the row in the whole stream.
    a = test["a"].to_numpy().copy()
    a[1500] = np.nan
    with expect(INVALID, "'a' has NaN at row 1500"):
        exchange(client, "rings", test.set_column(0, "a", pa.array(a)))
    assert exchange(client, "rings", test.slice(0, 10)).num_rows == 10
    accuracy = np.mean(pred["prediction"].to_numpy() == test["y"].to_numpy())
    assert accuracy > 0.95, accuracy

    # The engine run directly (stoker predict) gives the same predictions.
    (tmp_path / "mlp.json").write_text(json.dumps(MLP))
    (tmp_path / "state.safetensors").write_bytes(state)
    pq.write_table(test, tmp_path / "test.parquet")
    cli.predict("test.parquet", "mlp.json", "state.safetensors", "p.parquet", "--quiet")
    direct = pq.read_table(tmp_path / "p.parquet")
    np.testing.assert_array_equal(direct["prediction"].to_numpy(), pred["prediction"].to_numpy())
    np.testing.assert_allclose(
        np.stack(direct["probability"].to_numpy(False)),
        np.stack(pred["probability"].to_numpy(False)),
        atol=1e-6,
    )

    # Listing and download.
    listed = {tuple(f.descriptor.path) for f in client.list_flights()}
    assert (b"jobs", b"rings") in listed and (b"models", b"rings", b"1") in listed
    downloaded = client.do_get(flight.Ticket(b"models/rings")).read_all()
    assert downloaded.column(0)[0].as_py() == state
    stats, _ = act(client, "stats")
    # 3000, the two 700-row batches before the bad row, and the last 10.
    assert stats["train_rounds"] == 8 and stats["rows_predicted"] == 3000 + 1400 + 10
    meta, _ = read_state_bytes(state, tmp_path)
    assert meta["samples"] == "4000"


def read_state_bytes(state, tmp_path):
    path = tmp_path / "s.safetensors"
    path.write_bytes(state)
    return read_state(path)


INVALID = "invalid argument error"
NOT_FOUND = "not found error"
CACHE_MISS = "precondition failed error"
EXHAUSTED = "resource exhausted"


def expect(code: str, message: str):
    """The call fails with this gRPC code (as pyarrow words it) and message."""
    return pytest.raises(Exception, match=f"(?s){code}.*{message}")


def test_errors_have_their_codes_and_the_server_keeps_serving(server):
    client = flight.connect(server.uri)
    with expect(INVALID, "unknown action 'explode'"):
        act(client, "explode")
    with expect(INVALID, "malformed create_job body"):
        act(client, "create_job", {"job": 3})
    with expect(INVALID, "malformed action body"):
        list(client.do_action(flight.Action("create_job", b"{not json")))
    with expect(NOT_FOUND, "no job named 'ghost'"):
        act(client, "train_round", {"job": "ghost", "partition": 0, "version": "v", "round": 0})

    act(client, "create_job", {"job": "j", "spec": MLP, "features": ["a", "b"], "label": "y"})
    with expect(CACHE_MISS, "not cached"):
        act(client, "train_round", {"job": "j", "partition": 5, "version": "v", "round": 0})
    put(client, "j", 5, "v1", pa.table(rings(50, 2)))
    with expect(CACHE_MISS, "cached at version 'v1', not 'v2'"):
        act(client, "train_round", {"job": "j", "partition": 5, "version": "v2", "round": 0})

    bad = pa.table(rings(100, 1))
    a = bad["a"].to_numpy().copy()
    a[42] = np.nan
    bad = bad.set_column(0, "a", pa.array(a))
    with expect(INVALID, "'a' has NaN at row 42"):
        put(client, "j", 0, "v", bad)
    act(client, "create_job", {"job": "k", "spec": MLP, "features": ["nope"], "label": "y"})
    with expect(INVALID, "'nope' not found"):
        put(client, "k", 0, "v", pa.table(rings(10, 1)))
    with expect(NOT_FOUND, "no job named 'ghost'"):
        put(client, "ghost", 0, "v", pa.table(rings(10, 1)))
    with expect(NOT_FOUND, "no model named 'missing'"):
        exchange(client, "missing", pa.table(rings(10, 1)))
    with expect(INVALID, "TorchScript model could not be loaded"):
        act(
            client,
            "register_model",
            {"name": "broken", "features": ["a"], "input_width": 1},
            model=b"PK\x03\x04 garbage",
        )

    # Still serving, and the good partition is still there.
    health, _ = act(client, "health")
    assert health["status"] == "serving"
    stats, _ = act(client, "stats")
    assert stats["requests_failed"] >= 10
    assert [j["partitions"] for j in stats["jobs"] if j["name"] == "j"] == [1]


def test_cache_budget(stoker_bin, tmp_path):
    from flight.conftest import Server

    s = Server(stoker_bin, tmp_path, "--cache-mb", "1")
    try:
        client = flight.connect(s.uri)
        act(client, "create_job", {"job": "big", "spec": MLP, "features": ["a", "b"], "label": "y"})
        with expect(EXHAUSTED, "does not fit the cache budget"):
            put(client, "big", 0, "v", pa.table(rings(200_000, 1)))
        # Partitions that fit evict the least recently used ones.
        # Each partition holds 20,000 rows x (2 features x 4 bytes + 8 label bytes).
        for p in range(4):
            put(client, "big", p, "v", pa.table(rings(20_000, p)))
        stats, _ = act(client, "stats")
        assert stats["cache"]["bytes"] <= stats["cache"]["budget_bytes"]
        assert stats["cache"]["evictions"] >= 1
        with expect(CACHE_MISS, "not cached"):
            act(client, "train_round", {"job": "big", "partition": 0, "version": "v", "round": 0})
    finally:
        assert s.stop() == 0


def test_token_is_required_when_configured(stoker_bin, tmp_path):
    from flight.conftest import Server

    (tmp_path / "token").write_text("s3cret\n")
    s = Server(stoker_bin, tmp_path, "--token-file", str(tmp_path / "token"))
    try:
        client = flight.connect(s.uri)
        with pytest.raises(flight.FlightUnauthenticatedError):
            act(client, "health")
        good = flight.FlightCallOptions(headers=[(b"authorization", b"Bearer s3cret")])
        bad = flight.FlightCallOptions(headers=[(b"authorization", b"Bearer nope")])
        with pytest.raises(flight.FlightUnauthenticatedError):
            list(client.do_action(flight.Action("health", b"{}"), bad))
        assert list(client.do_action(flight.Action("health", b"{}"), good))
    finally:
        assert s.stop() == 0
    assert "s3cret" not in s.log()


def test_non_loopback_without_token_refuses_to_start(stoker_bin):
    import subprocess

    proc = subprocess.run(
        [stoker_bin, "serve", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "refusing to listen on 0.0.0.0 without a token" in proc.stderr
