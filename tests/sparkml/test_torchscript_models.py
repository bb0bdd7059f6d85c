"""TorchScript models with buffers on a real two-executor cluster: BatchNorm's
running statistics are averaged across partitions, checkpointed, resumed, used by
transform, and leave in the exported archive that plain PyTorch loads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import parse_state
from stoker.spark import StokerEstimator
from torch_nets import NormNet

from sparkml.tables import customers


@pytest.fixture(scope="module")
def setup(spark, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bn")
    torch.manual_seed(0)
    initial = NormNet(2)
    torch.jit.save(torch.jit.script(initial), tmp / "bn.pt")
    table = customers(spark, 4000, 21)
    train = table.repartition(4, "id").sortWithinPartitions("id").cache()
    return tmp, initial, train


def estimator(tmp, rounds: int) -> StokerEstimator:
    return StokerEstimator(
        featureCols=["x", "y"],
        labelCol="label",
        model=str(tmp / "bn.pt"),
        learningRate=0.01,
        batchSize=64,
        localEpochs=1,
        rounds=rounds,
        seed=5,
        checkpointDir=str(tmp / "checkpoints"),
    )


def state_of(model) -> dict[str, np.ndarray]:
    return parse_state(model.state)[1]


def test_batchnorm_statistics_train_average_export_and_resume(setup):
    tmp, initial, train = setup
    model = estimator(tmp, 2).fit(train)
    tensors = state_of(model)
    mean, var = tensors["body.1.running_mean"], tensors["body.1.running_var"]
    counted = int(tensors["body.1.num_batches_tracked"])
    init = initial.state_dict()
    assert not np.allclose(mean, init["body.1.running_mean"].numpy(), atol=1e-3)
    assert not np.allclose(var, init["body.1.running_var"].numpy(), atol=1e-3)
    # Each partition counts about 1000 / 64 batches a round; the average of the
    # four counters (sample-weighted, rounded) carries on from round to round.
    assert 20 <= counted <= 40, counted

    # The exported archive, in plain PyTorch, predicts what transform predicts.
    rows = model.transform(train).select("x", "y", "probability").toPandas()
    x = torch.tensor(rows[["x", "y"]].to_numpy(), dtype=torch.float32)
    archive = tmp / "trained.pt"
    model.export_torchscript(str(archive))
    exported = torch.jit.load(archive)
    assert not exported.training
    with torch.no_grad():
        torch_probs = torch.softmax(exported(x), dim=1).numpy()
    spark_probs = np.stack(rows["probability"].map(lambda v: v.toArray()).to_numpy())
    np.testing.assert_allclose(torch_probs, spark_probs, atol=1e-5)
    np.testing.assert_allclose(exported.state_dict()["body.1.running_mean"].numpy(), mean, atol=0)
    assert model.to_torchscript() == archive.read_bytes()
    # The archive training started from still has the initial statistics.
    with torch.no_grad():
        initial.eval()
        assert np.abs(torch.softmax(initial(x), 1).numpy() - spark_probs).max() > 1e-3

    # Resumed from the round-2 checkpoint, round 3 starts from the averaged
    # statistics: the counter goes on from where round 2 left it.
    resumed = estimator(tmp, 3).fit(train)
    assert len(resumed.history) == 3
    after = state_of(resumed)
    per_round = counted / 2
    assert abs(int(after["body.1.num_batches_tracked"]) - (counted + per_round)) <= 2
    assert not np.allclose(after["body.1.running_mean"], mean, atol=1e-6)
