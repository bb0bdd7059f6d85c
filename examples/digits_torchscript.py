"""A TorchScript CNN trained through Spark on scikit-learn's handwritten digits.

Defines a small convolutional network in PyTorch, scripts it, trains it with
stoker's StokerEstimator over four Spark partitions with weight averaging,
loads the trained weights back into the PyTorch module, and checks held-out
accuracy there (the bar is 95%). The digits ship with scikit-learn: no
download.

    python examples/digits_torchscript.py        # after `make build`
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import stoker
import torch
from pyspark.sql import SparkSession
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from stoker import spark as stoker_spark
from stoker.spark import StokerEstimator


class DigitsCNN(torch.nn.Module):
    """8x8 grey images, flattened to 64 features by Spark, reshaped here."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.head = torch.nn.Linear(32 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, 1, 8, 8)
        x = torch.relu(self.conv1(x))
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.head(x.flatten(1))


def main() -> float:
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, random_state=0, stratify=y
    )

    work = Path(tempfile.mkdtemp(prefix="stoker-digits-"))
    torch.manual_seed(0)
    scripted = torch.jit.script(DigitsCNN())
    scripted.save(str(work / "digits.pt"))

    spark = stoker_spark.configure(
        SparkSession.builder.master(os.environ.get("MASTER", "local[2]"))
        .appName("stoker-digits")
        .config("spark.ui.enabled", "false")
    ).getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    train = spark.createDataFrame(
        [(row.tolist(), int(label)) for row, label in zip(x_train, y_train, strict=True)],
        "pixels array<float>, digit long",
    ).repartition(4)

    started = time.perf_counter()
    model = StokerEstimator(
        featuresCol="pixels",
        labelCol="digit",
        model=str(work / "digits.pt"),
        optimizer="adam",
        learningRate=0.003,
        batchSize=32,
        localEpochs=3,
        rounds=10,
        seed=7,
    ).fit(train)
    seconds = time.perf_counter() - started
    for h in model.history:
        print(f"round {h['round'] + 1:2d}: loss {h['loss']:.4f}")

    # Back in PyTorch: the scripted module with the averaged weights.
    trained = torch.jit.load(str(work / "digits.pt"))
    missing = trained.load_state_dict(stoker.torch_state_dict(model.state), strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys, missing
    trained.eval()
    with torch.no_grad():
        logits = trained(torch.from_numpy(x_test))
    accuracy = float((logits.argmax(1).numpy() == y_test).mean())
    print(
        f"held-out accuracy in PyTorch: {accuracy:.3f} on {len(y_test)} digits "
        f"(trained through Spark in {seconds:.1f} s)"
    )
    spark.stop()
    return accuracy


if __name__ == "__main__":
    acc = main()
    sys.exit(0 if acc >= 0.95 else 1)
