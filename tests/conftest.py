"""Shared fixtures: the `stoker` binary built by `make` and small data sets."""

from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def stoker_bin() -> str:
    path = os.environ.get("STOKER_BIN", str(ROOT / "target" / "release" / "stoker"))
    if not Path(path).exists():
        pytest.fail(f"stoker binary not found at {path}; run `make build` first")
    return path


class Cli:
    def __init__(self, binary: str, cwd: Path):
        self.binary = binary
        self.cwd = cwd

    def run(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [self.binary, *map(str, args)],
            check=False,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if ok and proc.returncode != 0:
            raise AssertionError(f"stoker {' '.join(map(str, args))} failed:\n{proc.stderr}")
        return proc

    def train(
        self, data, model, features, epochs, *extra, label="y", ok: bool = True
    ) -> subprocess.CompletedProcess:
        """`stoker train` with the flags every training run names, then `extra`."""
        return self.run(
            "train",
            "--data",
            data,
            "--model",
            model,
            "--features",
            features,
            "--label",
            label,
            "--epochs",
            epochs,
            *extra,
            ok=ok,
        )

    def predict(
        self, data, model, state, out, *extra, ok: bool = True
    ) -> subprocess.CompletedProcess:
        """`stoker predict` of `data` with `model` and `state` into `out`, then `extra`."""
        return self.run(
            "predict",
            "--data",
            data,
            "--model",
            model,
            "--state",
            state,
            "--out",
            out,
            *extra,
            ok=ok,
        )


@pytest.fixture
def cli(stoker_bin: str, tmp_path: Path) -> Cli:
    return Cli(stoker_bin, tmp_path)


def read_state(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Reads a safetensors file with numpy only: (metadata, tensors)."""
    return parse_state(path.read_bytes())


def parse_state(data: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """Parses safetensors bytes with numpy only: (metadata, tensors)."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    dtypes = {"F32": np.float32, "F64": np.float64, "I64": np.int64}
    tensors = {}
    base = 8 + n
    for name, info in header.items():
        start, end = info["data_offsets"]
        arr = np.frombuffer(data[base + start : base + end], dtype=dtypes[info["dtype"]])
        tensors[name] = arr.reshape(info["shape"])
    return meta, tensors


def rings(n: int, seed: int) -> dict[str, np.ndarray]:
    """Two noisy concentric rings (a non-linear task) plus a noise column."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    radius = np.where(y == 1, 2.0, 1.0) + 0.15 * rng.normal(size=n)
    angle = rng.uniform(0, 2 * np.pi, n)
    return {
        "a": (radius * np.cos(angle)).astype(np.float64),
        "b": (radius * np.sin(angle)).astype(np.float32),
        "noise": rng.normal(size=n).astype(np.float32),
        "y": y.astype(np.int64),
    }
