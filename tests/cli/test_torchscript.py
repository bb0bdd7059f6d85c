"""TorchScript round trip: a module scripted in PyTorch, trained by stoker,
loaded back into PyTorch with the new weights, gives stoker's predictions."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from conftest import read_state, rings
from torch import nn


class Net(nn.Module):
    def __init__(self, inputs: int, outputs: int):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(inputs, 16), nn.Tanh(), nn.Dropout(0.1))
        self.head = nn.Linear(16, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).squeeze(-1)  # [rows], as many regression models return


def weights_only(tensors: dict) -> dict:
    return {
        k: torch.from_numpy(v.copy()) for k, v in tensors.items() if not k.startswith("optimizer/")
    }


def test_scripted_classifier_round_trip(cli, tmp_path):
    torch.manual_seed(0)
    original = Net(3, 2)
    torch.jit.save(torch.jit.script(original), tmp_path / "net.pt")
    cols = rings(3000, 11)
    pq.write_table(pa.table(cols), tmp_path / "d.parquet")

    cli.run(
        "train",
        "--data",
        "d.parquet",
        "--model",
        "net.pt",
        "--features",
        "a,b,noise",
        "--label",
        "y",
        "--epochs",
        "10",
        "--lr",
        "0.01",
        "--out",
        "s.safetensors",
        "--export-torchscript",
        "trained.pt",
        "--quiet",
    )
    cli.run(
        "predict",
        "--data",
        "d.parquet",
        "--model",
        "net.pt",
        "--state",
        "s.safetensors",
        "--out",
        "p.parquet",
        "--quiet",
    )
    stoker_probs = np.stack(pq.read_table(tmp_path / "p.parquet")["probability"].to_numpy(False))

    meta, tensors = read_state(tmp_path / "s.safetensors")
    assert meta["task"] == "multiclass:2" and meta["model"] == "torchscript"
    trained = Net(3, 2)
    trained.load_state_dict(weights_only(tensors))
    assert not torch.equal(trained.head.weight, original.head.weight), "weights did not change"
    trained.eval()
    x = torch.from_numpy(np.stack([cols["a"], cols["b"], cols["noise"]], 1).astype(np.float32))
    with torch.no_grad():
        torch_probs = torch.softmax(trained(x), dim=1).numpy()
        exported = torch.jit.load(tmp_path / "trained.pt").eval()
        exported_probs = torch.softmax(exported(x), dim=1).numpy()
    np.testing.assert_allclose(stoker_probs, torch_probs, atol=1e-5)
    np.testing.assert_allclose(exported_probs, torch_probs, atol=1e-5)
    assert np.mean(stoker_probs.argmax(1) == cols["y"]) > 0.9


def test_scripted_regressor_with_one_dimensional_output(cli, tmp_path):
    torch.jit.save(torch.jit.script(Regressor()), tmp_path / "reg.pt")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 2)).astype(np.float32)
    y = (x @ np.array([1.5, -2.0], dtype=np.float32) + 0.5).astype(np.float32)
    pq.write_table(pa.table({"x1": x[:, 0], "x2": x[:, 1], "y": y}), tmp_path / "r.parquet")
    cli.run(
        "train",
        "--data",
        "r.parquet",
        "--model",
        "reg.pt",
        "--features",
        "x1,x2",
        "--label",
        "y",
        "--epochs",
        "20",
        "--lr",
        "0.05",
        "--out",
        "s.safetensors",
        "--quiet",
    )
    _, tensors = read_state(tmp_path / "s.safetensors")
    np.testing.assert_allclose(tensors["fc.weight"].ravel(), [1.5, -2.0], atol=0.02)
    np.testing.assert_allclose(tensors["fc.bias"], [0.5], atol=0.02)
