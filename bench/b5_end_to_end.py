"""Benchmark 5: end-to-end training, stoker `fit` against TorchDistributor.

The same DataFrame (32 float features, a non-linear binary label), model (MLP
32-256-256-2), optimizer (Adam, lr 1e-3), batch size (256), number of workers (2)
and number of passes over the data. stoker: `StokerEstimator.fit` over 2 partitions,
rounds x local epochs = the epochs. Peer: `pyspark.ml.torch.distributor.
TorchDistributor(num_processes=2, local_mode=True, use_gpu=False)` running DDP with
gloo, each rank reading its shard of the training data, which the driver first writes
to Parquet (the documented way to hand a DataFrame to TorchDistributor; its time is
counted and also reported apart). Wall time from DataFrame to trained model, and the
held-out accuracy each reaches (the goal compares times at the same accuracy).
"""

from __future__ import annotations

import shutil

from bench.common import Context, Result, mlp, side_by_side, spark_session, summarize, timed

FEATURES = 32
BENCH = "5 End-to-end training"
HIDDEN = [256, 256]


def train_ddp(path: str, epochs: int, batch: int, features: int) -> dict:
    """Runs in each TorchDistributor process (rank from the environment)."""
    import glob
    import os

    import pyarrow.parquet as pq
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    files = sorted(glob.glob(os.path.join(path, "*.parquet")))[rank::world]
    table = pq.ParquetDataset(files).read() if files else None
    x = torch.from_numpy(
        table.select([f"f{i}" for i in range(features)]).to_pandas().to_numpy("float32")
    )
    y = torch.from_numpy(table.column("label").to_numpy().astype("int64"))
    torch.manual_seed(1)
    model = mlp(features, HIDDEN, 2)
    ddp = DistributedDataParallel(model)
    opt = torch.optim.Adam(ddp.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    steps = x.shape[0] // batch
    counts = torch.tensor([steps])
    dist.all_reduce(counts, op=dist.ReduceOp.MIN)  # ranks must take equal steps
    for epoch in range(epochs):
        g = torch.Generator().manual_seed(epoch * 100 + rank)
        order = torch.randperm(x.shape[0], generator=g)
        for s in range(int(counts.item())):
            idx = order[s * batch : (s + 1) * batch]
            opt.zero_grad()
            loss_fn(ddp(x[idx]), y[idx]).backward()
            opt.step()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    dist.destroy_process_group()
    return state


def run(ctx: Context) -> list[Result]:
    import numpy as np
    import torch
    from pyspark.ml.torch.distributor import TorchDistributor
    from pyspark.sql import functions as F
    from stoker.spark import StokerEstimator

    spark = spark_session()
    rows = ctx.size(200_000, 1_000_000)
    cols = [(F.rand(i) * 2 - 1).cast("float").alias(f"f{i}") for i in range(FEATURES)]
    data = spark.range(rows).select(*cols)
    data = data.withColumn(
        "label", ((F.col("f0") * F.col("f1") + F.col("f2") * F.col("f2") - 0.3) > 0).cast("int")
    )
    train, test = data.randomSplit([0.8, 0.2], seed=3)
    train = train.repartition(2).cache()
    test = test.cache()
    train.count()
    test_pdf = test.toPandas()
    x_test = torch.from_numpy(test_pdf[[f"f{i}" for i in range(FEATURES)]].to_numpy("float32"))
    y_test = test_pdf["label"].to_numpy()
    epochs = 6 if ctx.quick else 10
    accuracy: dict[str, list[float]] = {"stoker fit": [], "TorchDistributor (DDP, gloo)": []}
    parquet_seconds: list[float] = []

    def stoker_fit() -> float:
        est = StokerEstimator(
            featureCols=[f"f{i}" for i in range(FEATURES)],
            labelCol="label",
            model={"type": "mlp", "hidden": HIDDEN, "num_classes": 2},
            optimizer="adam",
            learningRate=1e-3,
            batchSize=256,
            localEpochs=2,
            rounds=epochs // 2,
            seed=1,
        )
        holder = {}
        seconds = timed(lambda: holder.setdefault("m", est.fit(train)))
        scored = holder["m"].transform(test)
        accuracy["stoker fit"].append(scored.filter("prediction = label").count() / len(y_test))
        return seconds

    def distributor() -> float:
        path = str(ctx.work / "b5-train.parquet")
        shutil.rmtree(path, ignore_errors=True)
        holder = {}

        def job() -> None:
            parquet_seconds.append(timed(lambda: train.write.parquet(path)))
            holder["state"] = TorchDistributor(num_processes=2, local_mode=True, use_gpu=False).run(
                train_ddp, path, epochs, 256, FEATURES
            )

        seconds = timed(job)
        model = mlp(FEATURES, HIDDEN, 2)
        model.load_state_dict(holder["state"])
        with torch.no_grad():
            pred = model(x_test).argmax(1).numpy()
        accuracy["TorchDistributor (DDP, gloo)"].append(float(np.mean(pred == y_test)))
        return seconds

    seconds = side_by_side(
        {"stoker fit": stoker_fit, "TorchDistributor (DDP, gloo)": distributor},
        ctx.repeats,
        warmup=False,
    )
    extra = {k: {"held_out_accuracy": round(float(np.median(v)), 4)} for k, v in accuracy.items()}
    extra["TorchDistributor (DDP, gloo)"]["parquet_write_seconds"] = round(
        float(np.median(parquet_seconds)), 2
    )
    train.unpersist()
    test.unpersist()
    return summarize(
        BENCH,
        f"{rows:,} rows, 2 workers, {epochs} epochs, MLP 32-256-256-2",
        seconds,
        "seconds",
        {"stoker fit": "stoker", "TorchDistributor (DDP, gloo)": "peer"},
        lower_is_better=True,
        extra=extra,
    )
