"""Benchmark 8: time and rounds to a held-out target accuracy.

Plain averaging and the outer Nesterov optimizer (`outerOptimizer="nesterov"`,
DiLoCo's lr 0.7 and momentum 0.9), both `StokerEstimator.fit` over 2 partitions
with the held-out rows as its validation set (scored on the servers every round),
against TorchDistributor (2 DDP processes, gloo) evaluating the same held-out rows
on rank 0 after every epoch. One round (each partition one local epoch over its
half) sees the data once, as one DDP epoch does, so rounds and epochs compare.

Two tasks: the quickstart's churn table (examples/quickstart.py: group-bys and a
join, 8 standardized features, MLP 64-64, binary) and a harder one, 5 classes from
a random two-layer teacher on 16 features, learned by a wider MLP 256-256.

Time to target: for stoker the sum of the rounds' wall times (each includes its
validation stage) up to the first round whose validation accuracy reaches the
target; for TorchDistributor the Parquet write of the data, the processes' start
and the epochs up to the first that reaches it. A variant that never reaches it
within the round budget is reported at its whole run's time, marked.
"""

from __future__ import annotations

import math
import shutil
import time

from bench.common import Context, Result, spark_session

BENCH = "8 Time to a target accuracy"


def churn_table(spark, customers: int):
    """The quickstart's training table, its features standardized (train stats)."""
    from pyspark.sql import functions as F

    from examples import quickstart

    quickstart.CUSTOMERS = customers
    table = quickstart.training_table(*quickstart.build_tables(spark)[:2])
    stats = table.select(
        *[F.mean(c).alias(f"m_{c}") for c in quickstart.FEATURES],
        *[F.stddev(c).alias(f"s_{c}") for c in quickstart.FEATURES],
    ).first()
    cols = [
        ((F.col(c) - stats[f"m_{c}"]) / stats[f"s_{c}"]).cast("float").alias(f"f{i}")
        for i, c in enumerate(quickstart.FEATURES)
    ]
    return table.select(*cols, "label"), len(quickstart.FEATURES)


def teacher_table(spark, rows: int, features: int = 16, classes: int = 5):
    """Labels from a fixed random teacher: argmax of W·tanh(A·x)."""
    import numpy as np
    from pyspark.sql import functions as F

    rng = np.random.default_rng(8)
    a = rng.normal(size=(12, features)) * 1.2
    w = rng.normal(size=(classes, 12))
    df = spark.range(rows).select(
        *[(F.rand(100 + i) * 2 - 1).cast("float").alias(f"f{i}") for i in range(features)]
    )
    hidden = [
        F.tanh(sum(F.col(f"f{i}") * float(a[j, i]) for i in range(features))) for j in range(12)
    ]
    scores = [sum(h * float(w[k, j]) for j, h in enumerate(hidden)) for k in range(classes)]
    df = df.select("*", *[s.alias(f"s{k}") for k, s in enumerate(scores)])
    best = F.greatest(*[F.col(f"s{k}") for k in range(classes)])
    label = F.lit(0)
    for k in range(classes - 1, 0, -1):
        label = F.when(F.col(f"s{k}") == best, k).otherwise(label)
    return df.select(*[f"f{i}" for i in range(features)], label.alias("label")), features


def ddp_to_target(
    train: str,
    test: str,
    features: int,
    hidden: list,
    classes: int,
    epochs: int,
    lr: float,
    target: float,
    t0: float,
) -> list:
    """Runs in each TorchDistributor process: trains epoch by epoch; rank 0 scores the
    held-out rows after each and all ranks stop once it reaches `target`. Returns
    (epoch, seconds since t0, accuracy) per epoch from rank 0."""
    import glob
    import os
    import time

    import pyarrow.parquet as pq
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from bench.common import mlp

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    def load(path, part):
        files = sorted(glob.glob(os.path.join(path, "*.parquet")))
        files = files[rank::world] if part else files
        t = pq.ParquetDataset(files).read()
        x = torch.from_numpy(
            t.select([f"f{i}" for i in range(features)]).to_pandas().to_numpy("float32")
        )
        return x, torch.from_numpy(t.column("label").to_numpy().astype("int64"))

    x, y = load(train, True)
    xt, yt = load(test, False) if rank == 0 else (None, None)
    torch.manual_seed(1)
    model = mlp(features, hidden, classes)
    ddp = DistributedDataParallel(model)
    opt = torch.optim.Adam(ddp.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    counts = torch.tensor([x.shape[0] // 256])
    dist.all_reduce(counts, op=dist.ReduceOp.MIN)
    out = []
    for epoch in range(epochs):
        order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(epoch + rank))
        for s in range(int(counts.item())):
            idx = order[s * 256 : (s + 1) * 256]
            opt.zero_grad()
            loss_fn(ddp(x[idx]), y[idx]).backward()
            opt.step()
        done = torch.tensor([0])
        if rank == 0:
            with torch.no_grad():
                acc = float((model(xt).argmax(1) == yt).float().mean())
            out.append((epoch + 1, time.time() - t0, acc))
            done[0] = int(acc >= target)
        dist.broadcast(done, 0)
        if done.item():
            break
    # Every rank returns rank 0's record: which rank's return value TorchDistributor
    # hands back is not fixed (the last to finish, in local mode).
    shared = [out]
    dist.broadcast_object_list(shared, src=0)
    dist.destroy_process_group()
    return shared[0]


def first_reaching(points: list, target: float) -> tuple[float, int | None, float]:
    """(seconds, round or epoch, best accuracy) at the first point at the target; the
    last point's seconds and None when none reaches it."""
    best = max((p[2] for p in points), default=float("nan"))
    for n, seconds, acc in points:
        if acc >= target:
            return seconds, n, best
    return (points[-1][1] if points else math.nan), None, best


def run(ctx: Context) -> list[Result]:
    spark = spark_session()
    tasks = [
        # name, (table, features), hidden, classes, lr, rounds, target accuracy
        (
            "quickstart churn (binary, MLP 64-64)",
            churn_table(spark, ctx.size(40_000, 300_000)),
            [64, 64],
            2,
            0.003,
            12,
            0.95,
        ),
        (
            "5-class teacher (16 features, MLP 256-256)",
            teacher_table(spark, ctx.size(60_000, 400_000)),
            [256, 256],
            5,
            0.002,
            15,
            0.90,
        ),
    ]
    results: list[Result] = []
    for name, (table, features), hidden, classes, lr, rounds, target in tasks:
        results += run_task(ctx, name, table, features, hidden, classes, lr, rounds, target)
    return results


def run_task(
    ctx: Context,
    name: str,
    table,
    features: int,
    hidden: list[int],
    classes: int,
    lr: float,
    rounds: int,
    target: float,
) -> list[Result]:
    import statistics

    from pyspark.ml.torch.distributor import TorchDistributor
    from pyspark.sql import functions as F
    from stoker.spark import StokerEstimator

    data = table.withColumn("is_val", F.rand(77) < 0.2).repartition(2).cache()
    rows = data.count()
    train = data.filter("not is_val").drop("is_val")
    test = data.filter("is_val").drop("is_val")

    def stoker(outer: str) -> tuple[float, int | None, float]:
        est = StokerEstimator(
            featureCols=[f"f{i}" for i in range(features)],
            labelCol="label",
            model={"type": "mlp", "hidden": hidden, "num_classes": classes},
            learningRate=lr,
            batchSize=256,
            localEpochs=1,
            rounds=rounds,
            seed=1,
            validationIndicatorCol="is_val",
            evalMetric="accuracy",
            outerOptimizer=outer,
        )
        points, elapsed = [], 0.0
        for h in est.fit(data).history:
            elapsed += h["seconds"]
            points.append((h["round"] + 1, elapsed, h["validation"]["accuracy"]))
        return first_reaching(points, target)

    def distributor() -> tuple[float, int | None, float]:
        paths = {k: str(ctx.work / f"b8-{k}.parquet") for k in ("train", "test")}
        t0 = time.time()
        for k, df in (("train", train), ("test", test)):
            shutil.rmtree(paths[k], ignore_errors=True)
            df.write.parquet(paths[k])
        points = TorchDistributor(num_processes=2, local_mode=True, use_gpu=False).run(
            ddp_to_target,
            paths["train"],
            paths["test"],
            features,
            hidden,
            classes,
            rounds,
            lr,
            target,
            t0,
        )
        if not points:
            raise RuntimeError(f"TorchDistributor returned no epochs for {name}: {points!r}")
        return first_reaching(points, target)

    variants = {
        "stoker, plain averaging": lambda: stoker("none"),
        "stoker, outer Nesterov": lambda: stoker("nesterov"),
        "TorchDistributor (DDP, gloo)": distributor,
    }
    stoker("none")  # warm-up: starts the node servers, compiles the plans
    samples: dict[str, list[tuple[float, int | None, float]]] = {v: [] for v in variants}
    for _ in range(ctx.repeats):
        for variant, fn in variants.items():
            samples[variant].append(fn())
    results = []
    for variant, got in samples.items():
        seconds = [g[0] for g in got]
        reached = [g[1] for g in got if g[1] is not None]
        results.append(
            Result(
                bench=BENCH,
                case=f"{name}: {rows:,} rows, target {target:.0%} held-out accuracy",
                variant=variant,
                unit="seconds to target",
                value=statistics.median(seconds),
                spread=(min(seconds), max(seconds)),
                samples=seconds,
                lower_is_better=True,
                role="peer" if variant.startswith("Torch") else "stoker",
                extra={
                    "rounds_to_target": statistics.median(reached) if reached else None,
                    "reached_target": f"{len(reached)}/{len(got)}",
                    "best_accuracy": round(statistics.median(g[2] for g in got), 4),
                    "round_budget": rounds,
                },
            )
        )
    data.unpersist()
    return results
