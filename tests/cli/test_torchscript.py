"""TorchScript round trip: a module scripted in PyTorch, trained by stoker,
loaded back into PyTorch with the new weights, gives stoker's predictions."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from conftest import read_state, rings
from torch import nn
from torch_nets import NormNet


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


def features(cols: dict) -> torch.Tensor:
    return torch.from_numpy(np.stack([cols["a"], cols["b"], cols["noise"]], 1).astype(np.float32))


def train_rings(cli, model: str, epochs: int, *extra) -> None:
    """Trains `model` on d.parquet's rings (a, b, noise -> y) into s.safetensors."""
    cli.train("d.parquet", model, "a,b,noise", epochs, *extra, "--out", "s.safetensors", "--quiet")


def predicted(cli, tmp_path, model: str, state: str) -> np.ndarray:
    cli.predict("d.parquet", model, state, "p.parquet", "--quiet")
    return np.stack(pq.read_table(tmp_path / "p.parquet")["probability"].to_numpy(False))


def exported_probabilities(path, x: torch.Tensor) -> np.ndarray:
    # No .eval(): the export is already in eval mode, as transform predicts.
    with torch.no_grad():
        return torch.softmax(torch.jit.load(path)(x), dim=1).numpy()


def test_scripted_classifier_round_trip(cli, tmp_path):
    torch.manual_seed(0)
    original = Net(3, 2)
    torch.jit.save(torch.jit.script(original), tmp_path / "net.pt")
    cols = rings(3000, 11)
    pq.write_table(pa.table(cols), tmp_path / "d.parquet")

    train_rings(cli, "net.pt", 10, "--lr", "0.01", "--export-torchscript", "trained.pt")
    stoker_probs = predicted(cli, tmp_path, "net.pt", "s.safetensors")

    meta, tensors = read_state(tmp_path / "s.safetensors")
    assert meta["task"] == "multiclass:2" and meta["model"] == "torchscript"
    trained = Net(3, 2)
    trained.load_state_dict(weights_only(tensors))
    assert not torch.equal(trained.head.weight, original.head.weight), "weights did not change"
    trained.eval()
    x = features(cols)
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
    cli.train(
        "r.parquet", "reg.pt", "x1,x2", 20, "--lr", "0.05", "--out", "s.safetensors", "--quiet"
    )
    _, tensors = read_state(tmp_path / "s.safetensors")
    np.testing.assert_allclose(tensors["fc.weight"].ravel(), [1.5, -2.0], atol=0.02)
    np.testing.assert_allclose(tensors["fc.bias"], [0.5], atol=0.02)


def test_batchnorm_statistics_are_trained_saved_and_exported(cli, tmp_path):
    torch.manual_seed(0)
    original = NormNet(3)
    torch.jit.save(torch.jit.script(original), tmp_path / "bn.pt")
    cols = rings(3000, 5)
    # Shifted and scaled, so the learned statistics are far from (0, 1).
    cols["noise"] = cols["noise"] * 4 + 3
    pq.write_table(pa.table(cols), tmp_path / "d.parquet")
    train_rings(cli, "bn.pt", 3, "--lr", "0.01", "--export-torchscript", "trained.pt")

    _, tensors = read_state(tmp_path / "s.safetensors")
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert f"body.1.{name}" in tensors, f"buffer {name} missing from {sorted(tensors)}"
    assert tensors["body.1.num_batches_tracked"].dtype == np.int64
    assert int(tensors["body.1.num_batches_tracked"]) > 0
    assert not np.allclose(tensors["body.1.running_mean"], 0, atol=1e-3)
    assert not np.allclose(tensors["body.1.running_var"], 1, atol=1e-3)

    stoker_probs = predicted(cli, tmp_path, "bn.pt", "s.safetensors")
    x = features(cols)
    # Plain PyTorch with the saved state predicts what stoker predicts...
    trained = NormNet(3)
    trained.load_state_dict(weights_only(tensors))
    trained.eval()
    with torch.no_grad():
        torch_probs = torch.softmax(trained(x), dim=1).numpy()
    np.testing.assert_allclose(stoker_probs, torch_probs, atol=1e-5)
    # ...and so do both exports, which carry the trained statistics.
    np.testing.assert_allclose(
        exported_probabilities(tmp_path / "trained.pt", x), stoker_probs, atol=1e-5
    )
    cli.run("export", "--model", "bn.pt", "--state", "s.safetensors", "--out", "e.pt")
    exported = torch.jit.load(tmp_path / "e.pt")
    np.testing.assert_allclose(
        exported.state_dict()["body.1.running_mean"].numpy(), tensors["body.1.running_mean"], atol=0
    )
    np.testing.assert_allclose(
        exported_probabilities(tmp_path / "e.pt", x), stoker_probs, atol=1e-5
    )
    # The untrained statistics would predict something else.
    original.eval()
    with torch.no_grad():
        untrained_probs = torch.softmax(original(x), dim=1).numpy()
    assert np.abs(untrained_probs - stoker_probs).max() > 1e-2


def test_builtin_model_exports_as_torchscript(cli, tmp_path):
    import json

    (tmp_path / "mlp.json").write_text(
        json.dumps({"type": "mlp", "hidden": [16, 8], "num_classes": 2, "dropout": 0.2})
    )
    cols = rings(2000, 9)
    pq.write_table(pa.table(cols), tmp_path / "d.parquet")
    train_rings(cli, "mlp.json", 3)
    stoker_probs = predicted(cli, tmp_path, "mlp.json", "s.safetensors")
    cli.run("export", "--model", "mlp.json", "--state", "s.safetensors", "--out", "mlp.pt")
    np.testing.assert_allclose(
        exported_probabilities(tmp_path / "mlp.pt", features(cols)), stoker_probs, atol=1e-5
    )
    wrong = cli.run(
        "export", "--model", "mlp.json", "--state", "missing.safetensors", "--out", "x.pt", ok=False
    )
    assert wrong.returncode != 0 and "missing.safetensors" in wrong.stderr
