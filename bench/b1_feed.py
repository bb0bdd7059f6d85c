"""Benchmark 1: feeding training data from a Spark DataFrame into the trainer.

The same cached DataFrame (built by a join: 32 float32 features and a label) goes
 - through stoker's JVM/JNI path (`StokerEstimator.feed`: Spark's Arrow writer in
   the executor JVM, one Arrow IPC buffer per partition through JNI, DoPut to the
   node's server, which converts it to training tensors and caches it),
 - through stoker's PySpark path (`mapInArrow` handing each partition's batches to
   `stoker.Client.put_partition`, which reads them through the Arrow C stream
   interface and sends them to the same server),
 - to the peer: `mapInArrow` handing batches to PyTorch with `torch.from_numpy`
   in the Python worker (what a PySpark + PyTorch user writes),
 - to the bound: the same scan feeding a consumer that does nothing (the `noop`
   data source).
Every variant ends in the `noop` sink so Spark runs it fully; rows/s and MB/s of
feature and label payload (33 x 4 bytes per row).
"""

from __future__ import annotations

import uuid

import pyarrow as pa

from bench.common import Context, Result, scaled_float_table, side_by_side, summarize, timed

FEATURES = 32
BENCH = "1 Feeding training data"


def run(ctx: Context) -> list[Result]:
    import numpy as np
    import torch
    from stoker.server import local_server
    from stoker.spark import StokerEstimator

    partitions = 4
    rows, table = scaled_float_table(ctx, 1_000_000, 4_000_000, FEATURES, partitions)
    names = [f"f{i}" for i in range(FEATURES)]
    estimator = StokerEstimator(
        featureCols=names, labelCol="label", model={"type": "mlp", "hidden": [64], "num_classes": 2}
    )
    address, token = local_server()

    def stoker_jvm() -> float:
        return timed(lambda: estimator.feed(table))

    def stoker_python() -> float:
        from stoker.client import Client

        job = f"bench-feed-{uuid.uuid4().hex[:8]}"
        Client(address, token=token).create_job(
            job,
            features=names,
            label="label",
            spec={"type": "mlp", "hidden": [64], "num_classes": 2},
        )

        def put(batches):
            from pyspark import TaskContext
            from stoker.client import Client as WorkerClient

            part = TaskContext.get().partitionId()
            collected = list(batches)
            if collected:
                WorkerClient(address, token=token).put_partition(
                    job, part, pa.Table.from_batches(collected)
                )
            yield pa.RecordBatch.from_pydict({"n": [sum(b.num_rows for b in collected)]})

        return timed(
            lambda: table.mapInArrow(put, "n long").write.format("noop").mode("overwrite").save()
        )

    def peer() -> float:
        def to_torch(batches):
            n = 0
            for b in batches:
                x = torch.from_numpy(
                    np.column_stack([b.column(i).to_numpy() for i in range(FEATURES)])
                )
                y = torch.from_numpy(b.column(FEATURES).to_numpy())
                assert x.shape[0] == y.shape[0]
                n += x.shape[0]
            yield pa.RecordBatch.from_pydict({"n": [n]})

        return timed(
            lambda: (
                table.mapInArrow(to_torch, "n long").write.format("noop").mode("overwrite").save()
            )
        )

    def bound() -> float:
        return timed(lambda: table.write.format("noop").mode("overwrite").save())

    names_ = {
        "stoker JVM/JNI (feed)": stoker_jvm,
        "stoker PySpark Client (mapInArrow)": stoker_python,
        "mapInArrow + torch.from_numpy": peer,
        "Spark scan, no-op consumer (bound)": bound,
    }
    seconds = side_by_side(names_, ctx.repeats)
    per_row = (FEATURES + 1) * 4
    rates = {k: [rows / s for s in v] for k, v in seconds.items()}
    mbs = {
        k: {"MB/s": round(rows * per_row / (sorted(v)[len(v) // 2]) / 1e6, 1)}
        for k, v in seconds.items()
    }
    roles = {
        "stoker JVM/JNI (feed)": "stoker",
        "stoker PySpark Client (mapInArrow)": "stoker",
        "mapInArrow + torch.from_numpy": "peer",
        "Spark scan, no-op consumer (bound)": "bound",
    }
    case = f"{rows:,} rows x {FEATURES} float32 + label, {partitions} partitions, local[2]"
    table.unpersist()
    return summarize(BENCH, case, rates, "rows/s", roles, extra=mbs)
