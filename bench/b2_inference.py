"""Benchmark 2: batch inference on a DataFrame, same TorchScript model, same weights.

Two models: a small MLP (32-64-1, where per-batch overhead dominates) and a wide one
(32-256-256-1, where compute dominates). The weights come from one stoker round on a
sample and are loaded into the PyTorch module the peer uses, so every variant computes
the same function. Variants, all writing to Spark's `noop` sink:
 - stoker `StokerModel.transform` (Arrow batches through JNI to the node's server),
 - stoker `predict_udf` (an Arrow UDF in the Python worker, same server),
 - stoker SQL `stoker_predict` (the session extension's batched operator),
 - the peer: `pyspark.ml.functions.predict_batch_udf` running the PyTorch module in
   the Python worker (batch size 4096, as its docs suggest tuning for throughput),
 - the bound: plain libtorch forward (PyTorch, no Spark) over the same rows, in
   batches of 65536, in one process with the same thread count.
Peak resident memory of the stoker server and Python workers is sampled per variant.
"""

from __future__ import annotations

from bench.common import (
    Context,
    Result,
    RssSampler,
    mlp,
    scaled_float_table,
    side_by_side,
    spark_session,
    summarize,
    timed,
)

FEATURES = 32
BENCH = "2 Batch inference"


def run(ctx: Context) -> list[Result]:
    from pyspark.sql import functions as F

    rows, table = scaled_float_table(ctx, 500_000, 2_000_000, FEATURES, partitions=4, seed=5)
    spark = spark_session()
    sample = table.limit(20_000).withColumn("target", F.col("f0") * F.col("f1")).cache()
    results: list[Result] = []
    for label, hidden in (("MLP 32-64-1", [64]), ("MLP 32-256-256-1", [256, 256])):
        results += one_model(ctx, spark, table, sample, rows, label, hidden)
    sample.unpersist()
    table.unpersist()
    return results


def one_model(ctx, spark, table, sample, rows, label, hidden) -> list[Result]:
    import stoker
    import torch
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import functions as F
    from pyspark.sql.types import DoubleType
    from stoker.spark import StokerEstimator

    names = [f"f{i}" for i in range(FEATURES)]
    torch.manual_seed(0)
    module = torch.jit.script(mlp(FEATURES, hidden, 1))
    path = ctx.work / f"b2-{'-'.join(map(str, hidden))}.pt"
    module.save(str(path))
    model = StokerEstimator(
        featureCols=names,
        labelCol="target",
        model=str(path),
        loss="mse",
        rounds=1,
        localEpochs=1,
        batchSize=1024,
        seed=1,
    ).fit(sample)
    state = model.state
    # The peer's module: the same TorchScript file with the same trained weights.
    peer_module = torch.jit.load(str(path))
    peer_module.load_state_dict(stoker.torch_state_dict(state))
    peer_module.eval()
    sql_name = f"b2_{len(hidden)}"
    model.register(sql_name)
    udf = stoker.predict_udf(model)
    table.createOrReplaceTempView("b2_rows")
    sql = spark.sql(f"SELECT stoker_predict('{sql_name}', {', '.join(names)}) AS p FROM b2_rows")
    saved = str(ctx.work / f"b2-peer-{len(hidden)}.pt")
    peer_module.save(saved)

    def make_predict_fn(saved=saved):
        import numpy as np
        import torch as t

        t.set_num_threads(1)
        m = t.jit.load(saved)
        m.eval()

        def predict(x: np.ndarray) -> np.ndarray:
            with t.no_grad():
                return m(t.from_numpy(x.astype(np.float32))).numpy()[:, 0].astype(np.float64)

        return predict

    peer_udf = predict_batch_udf(
        make_predict_fn,
        return_type=DoubleType(),
        batch_size=4096,
        input_tensor_shapes=[[FEATURES]],
    )
    features = F.array(*[F.col(n) for n in names])
    x_all = torch.from_numpy(table.select(*names).toPandas().to_numpy(dtype="float32"))

    def sink(df):
        return lambda: df.write.format("noop").mode("overwrite").save()

    def with_memory(fn, memory: dict, key: str):
        def measured() -> float:
            with RssSampler("stoker serve", "pyspark.daemon", "pyspark/daemon") as s:
                seconds = timed(fn)
            memory[key] = max(memory.get(key, 0), s.peak)
            return seconds

        return measured

    def bound() -> float:
        torch.set_num_threads(2)
        with torch.no_grad():
            return timed(lambda: [peer_module(x_all[i : i + 65536]) for i in range(0, rows, 65536)])

    memory: dict[str, int] = {}
    variants = {
        "stoker transform": with_memory(
            sink(model.transform(table).select("prediction")), memory, "stoker transform"
        ),
        "stoker predict_udf": with_memory(
            sink(table.select(udf(*names).alias("p"))), memory, "stoker predict_udf"
        ),
        "stoker SQL stoker_predict": with_memory(sink(sql), memory, "stoker SQL stoker_predict"),
        "predict_batch_udf + PyTorch": with_memory(
            sink(table.select(peer_udf(features).alias("p"))),
            memory,
            "predict_batch_udf + PyTorch",
        ),
        "libtorch forward, one process (bound)": bound,
    }
    seconds = side_by_side(variants, ctx.repeats)
    rates = {k: [rows / s for s in v] for k, v in seconds.items()}
    roles = {k: "stoker" for k in variants if k.startswith("stoker")}
    roles["predict_batch_udf + PyTorch"] = "peer"
    roles["libtorch forward, one process (bound)"] = "bound"
    extra = {k: {"peak_rss_mb": round(v / 2**20)} for k, v in memory.items()}
    return summarize(BENCH, f"{label}, {rows:,} rows", rates, "rows/s", roles, extra=extra)
