"""The `stoker` command line on real files: train, predict, average."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from conftest import read_state, rings
from pyarrow import feather


def write_rings(path, n, seed, vector=False):
    cols = rings(n, seed)
    if vector:
        feats = np.stack([cols["a"], cols["b"], cols["noise"]], axis=1).astype(np.float32)
        table = pa.table(
            {
                "features": pa.FixedSizeListArray.from_arrays(pa.array(feats.ravel()), 3),
                "y": cols["y"],
            }
        )
    else:
        table = pa.table(cols)
    if str(path).endswith(".parquet"):
        pq.write_table(table, path)
    else:
        feather.write_feather(table, path)
    return table


MLP = {"type": "mlp", "hidden": [32, 32], "num_classes": 2}


def test_mlp_train_then_predict_reaches_accuracy(cli, tmp_path):
    write_rings(tmp_path / "train.parquet", 6000, 1)
    test = write_rings(tmp_path / "test.parquet", 2000, 2)
    (tmp_path / "mlp.json").write_text(json.dumps(MLP))
    train = cli.train(
        "train.parquet",
        "mlp.json",
        "a,b,noise",
        15,
        "--lr",
        "0.01",
        "--out",
        "state.safetensors",
        "--history",
        "history.json",
    )
    assert "epoch 15/15" in train.stderr and "rows/s" in train.stderr
    history = json.loads((tmp_path / "history.json").read_text())
    assert len(history) == 15 and history[-1]["loss"] < history[0]["loss"]

    cli.predict("test.parquet", "mlp.json", "state.safetensors", "pred.parquet")
    pred = pq.read_table(tmp_path / "pred.parquet")
    assert pred.num_rows == test.num_rows
    assert pred.column_names == ["a", "b", "noise", "y", "prediction", "probability"]
    accuracy = np.mean(pred["prediction"].to_numpy() == test["y"].to_numpy())
    assert accuracy >= 0.95, accuracy
    probs = np.stack(pred["probability"].to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_vector_column_and_arrow_ipc(cli, tmp_path):
    write_rings(tmp_path / "train.arrow", 3000, 3, vector=True)
    (tmp_path / "mlp.json").write_text(json.dumps(MLP))
    cli.train("train.arrow", "mlp.json", "features", 3, "--out", "s.safetensors", "--quiet")
    cli.predict(
        "train.arrow",
        "mlp.json",
        "s.safetensors",
        "p.parquet",
        "--keep",
        "y",
        "--probability-col",
        "",
    )
    assert pq.read_table(tmp_path / "p.parquet").column_names == ["y", "prediction"]


def test_defaults_pick_the_loss_from_the_label_type(cli, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=2000).astype(np.float32)
    pq.write_table(
        pa.table({"x": x, "yf": 2 * x + 1, "yi": (x > 0).astype(np.int32)}), tmp_path / "d.parquet"
    )
    (tmp_path / "mlp.json").write_text(json.dumps({"type": "mlp", "hidden": [8]}))
    out = cli.train("d.parquet", "mlp.json", "x", 1, "--out", "reg.safetensors", label="yf")
    assert "loss mse" in out.stderr and "task regression" in out.stderr
    out = cli.train("d.parquet", "mlp.json", "x", 1, "--out", "cls.safetensors", label="yi")
    assert "loss cross_entropy" in out.stderr and "using 2" in out.stderr
    meta, _ = read_state(tmp_path / "cls.safetensors")
    assert meta["task"] == "multiclass:2" and meta["features"] == "x" and meta["label"] == "yi"
    # Adam with lr 1e-3 and batch 256 are the defaults.
    assert json.loads(meta["optimizer"])["name"] == "adam"
    assert json.loads(meta["optimizer"])["lr"] == 0.001


def test_same_seed_same_state_bytes(cli, tmp_path):
    write_rings(tmp_path / "d.parquet", 1000, 4)
    spec = dict(MLP, dropout=0.3)
    (tmp_path / "mlp.json").write_text(json.dumps(spec))
    common = ("d.parquet", "mlp.json", "a,b", 2, "--quiet")
    cli.train(*common, "--seed", "5", "--out", "one.safetensors")
    cli.train(*common, "--seed", "5", "--out", "two.safetensors")
    cli.train(*common, "--seed", "6", "--out", "three.safetensors")
    one = (tmp_path / "one.safetensors").read_bytes()
    assert one == (tmp_path / "two.safetensors").read_bytes()
    assert one != (tmp_path / "three.safetensors").read_bytes()


def test_average_of_two_states_matches_numpy(cli, tmp_path):
    write_rings(tmp_path / "p0.parquet", 1500, 5)
    write_rings(tmp_path / "p1.parquet", 500, 6)
    (tmp_path / "mlp.json").write_text(json.dumps(MLP))
    for p in ("p0", "p1"):
        cli.train(
            f"{p}.parquet", "mlp.json", "a,b,noise", 2, "--quiet", "--out", f"{p}.safetensors"
        )
    cli.run("average", "p0.safetensors", "p1.safetensors", "--out", "avg.safetensors")
    _, s0 = read_state(tmp_path / "p0.safetensors")
    _, s1 = read_state(tmp_path / "p1.safetensors")
    meta, avg = read_state(tmp_path / "avg.safetensors")
    assert meta["samples"] == "2000"
    assert set(avg) == set(s0)
    for name, value in avg.items():
        expected = (1500 * s0[name].astype(np.float64) + 500 * s1[name]) / 2000
        if value.dtype == np.int64:
            np.testing.assert_array_equal(value, np.round(expected))
        else:
            np.testing.assert_allclose(value, expected, rtol=0, atol=1e-6, err_msg=name)

    cli.run("average", "p0.safetensors:1", "p0.safetensors:3", "--out", "same.safetensors")
    _, same = read_state(tmp_path / "same.safetensors")
    for name in s0:
        np.testing.assert_array_equal(same[name], s0[name], err_msg=name)


def test_resume_from_a_state_continues_rounds(cli, tmp_path):
    write_rings(tmp_path / "d.parquet", 1000, 7)
    (tmp_path / "mlp.json").write_text(json.dumps(MLP))
    base = ("d.parquet", "mlp.json", "a,b", 1, "--quiet")
    cli.train(*base, "--out", "r0.safetensors")
    cli.train(*base, "--init-state", "r0.safetensors", "--out", "r1.safetensors")
    m0, s0 = read_state(tmp_path / "r0.safetensors")
    m1, s1 = read_state(tmp_path / "r1.safetensors")
    assert (m0["round"], m1["round"]) == ("0", "1")
    assert s1["optimizer/step"] == 2 * s0["optimizer/step"]
