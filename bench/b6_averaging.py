"""Benchmark 6: time per round spent outside training.

Models of about 1M, 10M (and, at full scale, 50M) parameters train over 2, 4 and 8
partitions for a few rounds of one optimizer step each, so a round is almost all
averaging machinery: broadcasting the state, tasks loading it into the server's model
and returning the trained state (with Adam's moments: 3x the parameters), the native
weighted sums in treeAggregate, the division on the driver, and bookkeeping. The
overhead of a round is its wall time minus the slowest partition's training time
(RoundStats.overheadSeconds); round 0, which also streams the data, is left out.
The bound is the time to copy the bytes a round moves (one state to and one from
each partition) once in memory with numpy, measured in the same run. For reference,
the run also times a Spark job of as many tasks that do nothing: the floor any round
through Spark's scheduler pays, whatever it moves.
"""

from __future__ import annotations

import time

from bench.common import Context, Result, spark_session, summarize, timed

FEATURES = 32
BENCH = "6 Averaging round overhead"


def copy_seconds(nbytes: int, repeats: int = 3) -> float:
    import numpy as np

    src = np.ones(nbytes // 8 + 1, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - started)
    return best


def spark_floor(spark, partitions: int, repeats: int) -> list[float]:
    """Seconds of a Spark job with `partitions` tasks that do nothing."""

    def job() -> None:
        spark.range(0, partitions, 1, partitions).write.format("noop").mode("overwrite").save()

    job()
    return [timed(job) for _ in range(repeats)]


def run(ctx: Context) -> list[Result]:
    from pyspark.sql import functions as F
    from stoker.spark import StokerEstimator

    spark = spark_session()
    models = {"1M": [1000, 1000], "10M": [3150, 3150]}
    if not ctx.quick:
        models["50M"] = [7070, 7070]
    results: list[Result] = []
    for size, hidden in models.items():
        for partitions in (2, 4, 8):
            rows = partitions * 256
            table = (
                spark.range(rows)
                .select(
                    *[(F.rand(i) * 2 - 1).cast("float").alias(f"f{i}") for i in range(FEATURES)],
                    (F.rand(99) > 0.5).cast("int").alias("label"),
                )
                .repartition(partitions)
                .cache()
            )
            table.count()
            rounds = 1 + ctx.repeats
            model = StokerEstimator(
                featureCols=[f"f{i}" for i in range(FEATURES)],
                labelCol="label",
                model={"type": "mlp", "hidden": hidden, "num_classes": 2},
                batchSize=256,
                localEpochs=1,
                rounds=rounds,
                seed=1,
            ).fit(table)
            history = model.history[1:]
            overhead = [h["seconds"] - h["train_seconds"] for h in history]
            state_bytes = len(model.state)
            moved = state_bytes * partitions * 2
            bound = copy_seconds(moved)
            case = f"{size} parameters, {partitions} partitions"
            info = {"state_mb": round(state_bytes / 2**20, 1), "moved_mb": round(moved / 2**20)}
            floor = spark_floor(spark, partitions, ctx.repeats)
            measured = {
                "stoker round overhead": overhead,
                "memory copy of the same bytes (bound)": [bound],
                "Spark job of as many no-op tasks (floor)": floor,
            }
            roles = dict(zip(measured, ("stoker", "bound", "reference")))
            extra = {name: info for name in measured}
            results += summarize(BENCH, case, measured, "seconds", roles, True, extra)
            table.unpersist()
    return results
