"""Every bad input is a clear error naming the culprit and a non-zero exit."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

EXIT_INVALID, EXIT_NOT_FOUND = 2, 3


@pytest.fixture
def spec(tmp_path):
    (tmp_path / "mlp.json").write_text(json.dumps({"type": "mlp", "hidden": [4], "num_classes": 3}))
    return "mlp.json"


def train(cli, data, spec, features="x1,x2", label="y", *extra):
    return cli.train(
        data, spec, features, 1, "--out", "s.safetensors", *extra, label=label, ok=False
    )


def good_table(n=20):
    rng = np.random.default_rng(0)
    return {
        "x1": rng.normal(size=n),
        "x2": rng.normal(size=n).astype(np.float32),
        "y": rng.integers(0, 3, n),
    }


def write(tmp_path, cols, name="d.parquet"):
    pq.write_table(pa.table(cols), tmp_path / name)
    return name


def assert_error(proc, code, *needles):
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert proc.stderr.startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr
    assert "panicked" not in proc.stderr


def test_missing_column(cli, tmp_path, spec):
    name = write(tmp_path, good_table())
    assert_error(train(cli, name, spec, "x1,nope"), EXIT_INVALID, "'nope' not found", "x1, x2, y")
    assert_error(
        train(cli, name, spec, "x1", "label"), EXIT_INVALID, "label column 'label' not found"
    )


def test_wrong_type(cli, tmp_path, spec):
    cols = good_table()
    cols["x2"] = pa.array([f"v{i}" for i in range(20)])
    name = write(tmp_path, cols)
    assert_error(train(cli, name, spec), EXIT_INVALID, "'x2' has type", "Utf8")


def test_null_and_non_finite_features(cli, tmp_path, spec):
    cols = good_table()
    x1 = cols["x1"].tolist()
    x1[13] = None
    cols["x1"] = pa.array(x1)
    assert_error(train(cli, write(tmp_path, cols), spec), EXIT_INVALID, "'x1' has a null at row 13")
    cases = [
        ("x2", np.nan, "NaN"),
        ("x2", np.inf, "+Inf"),
        ("x1", -1e300, "-1e300, beyond float32 range,"),
    ]
    for column, value, word in cases:
        cols = good_table()
        cols[column][4] = value
        proc = train(cli, write(tmp_path, cols), spec)
        assert_error(proc, EXIT_INVALID, f"'{column}' has {word} at row 4")


def test_label_out_of_range(cli, tmp_path, spec):
    cols = good_table()
    cols["y"][9] = 3
    assert_error(
        train(cli, write(tmp_path, cols), spec),
        EXIT_INVALID,
        "'y' has 3 at row 9",
        "3-class classifier",
    )


def test_ragged_vectors(cli, tmp_path, spec):
    vectors = [[1.0, 2.0]] * 5 + [[1.0]] + [[1.0, 2.0]] * 4
    name = write(tmp_path, {"v": pa.array(vectors), "y": np.zeros(10, dtype=np.int64)})
    assert_error(
        train(cli, name, spec, "v"), EXIT_INVALID, "'v' has 1 elements at row 5, expected 2"
    )


def test_corrupt_torchscript(cli, tmp_path):
    name = write(tmp_path, good_table())
    (tmp_path / "broken.pt").write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    assert_error(
        train(cli, name, "broken.pt"), EXIT_INVALID, "TorchScript model could not be loaded"
    )


def test_corrupt_state(cli, tmp_path, spec):
    name = write(tmp_path, good_table())
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    proc = cli.run(
        "predict",
        "--data",
        name,
        "--model",
        spec,
        "--state",
        "bad.safetensors",
        "--features",
        "x1,x2",
        "--out",
        "p.parquet",
        ok=False,
    )
    assert_error(proc, EXIT_INVALID, "bad.safetensors", "not a valid stoker state")


def test_state_of_another_model(cli, tmp_path, spec):
    name = write(tmp_path, good_table())
    assert train(cli, name, spec).returncode == 0
    (tmp_path / "other.json").write_text(
        json.dumps({"type": "mlp", "hidden": [7], "num_classes": 3})
    )
    proc = cli.run(
        "predict",
        "--data",
        name,
        "--model",
        "other.json",
        "--state",
        "s.safetensors",
        "--out",
        "p.parquet",
        ok=False,
    )
    assert_error(proc, EXIT_INVALID, "state is for model 'mlp-")


def test_missing_files(cli, tmp_path, spec):
    assert_error(train(cli, "nowhere.parquet", spec), EXIT_NOT_FOUND, "nowhere.parquet")
    name = write(tmp_path, good_table())
    assert_error(train(cli, name, "nospec.json"), EXIT_NOT_FOUND, "nospec.json")


def test_bad_spec_and_flags(cli, tmp_path):
    name = write(tmp_path, good_table())
    (tmp_path / "bad.json").write_text('{"type": "mlp", "hiden": [3]}')
    assert_error(train(cli, name, "bad.json"), EXIT_INVALID, "unknown field `hiden`")
    (tmp_path / "ok.json").write_text('{"type": "mlp"}')
    assert_error(
        train(cli, name, "ok.json", "x1", "y", "--optimizer", "lbfgs"), EXIT_INVALID, "lbfgs"
    )
    assert_error(train(cli, name, "ok.json", "x1", "y", "--device", "tpu:0"), EXIT_INVALID, "tpu:0")
