"""A model registration answers within a bounded time even when the model's
forward never returns. Before `stoker serve --model-load-timeout-s`, one
`register_model` with a TorchScript loop that never ends did not answer at all
(the probe forward ran forever and the client waited with it)."""

from __future__ import annotations

import io
import time

import pyarrow as pa
import pytest
import stoker
import torch


class Linear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = torch.nn.Linear(2, 2)

    def forward(self, x):
        return self.l(x)


class Endless(Linear):
    def forward(self, x):
        i = 0
        while i >= 0:
            i += 1
        return self.l(x)


def scripted(module: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def client():
    with stoker.serve(device="cpu", args=["--model-load-timeout-s", "2"]) as s:
        yield stoker.Client(s.address, token=s.token)


def test_a_model_whose_forward_never_returns_fails_its_registration_in_time(client):
    good = scripted(Linear())
    client.create_job("g", features=["a", "b"], label="y", torchscript=good, loss="cross_entropy")
    client.put_partition("g", 0, pa.table({"a": [0.1, 0.2], "b": [1.0, 0.0], "y": [0, 1]}))
    _, state = client.train_round("g", 0, 0)

    started = time.monotonic()
    with pytest.raises(stoker.InvalidInputError, match=r"model 'endless' did not load within 2 s"):
        client.register_model(
            "endless", state, torchscript=scripted(Endless()), features=["a", "b"]
        )
    assert time.monotonic() - started < 30

    # The server keeps serving: health, a good registration and its predictions.
    assert client.health()["status"] == "serving"
    assert client.stats()["model_loads_timed_out"] == 1
    client.register_model("good", state, torchscript=good, features=["a", "b"])
    out = client.predict("good", pa.table({"a": [0.5], "b": [0.5]}))
    assert out.num_rows == 1
