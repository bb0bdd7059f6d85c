"""Benchmark 9: hyperparameter search, time to the best held-out accuracy.

One space (4 learning rates x 2 networks, 8 configurations, 6 rounds or epochs at
most, Adam, batch 256) on one table (b8's 5-class teacher, 16 features), searched
three ways, each two trials at a time on this machine's two cores:

- Spark's TrainValidationSplit over StokerEstimator (parallelism 2): every
  configuration fitted to all 6 rounds, each fit sending the data to the servers
  again, scored by MulticlassClassificationEvaluator on its 20% split.
- Hyperopt's SparkTrials (parallelism 2) with PyTorch trials: each trial a Spark
  task reading the table from Parquet (written once, timed), training a torch MLP
  for 6 epochs and scoring the held-out rows; TPE over the same 8 choices.
- StokerTuner (ASHA, eta 3: rungs at 1, 3 and 6 rounds; parallelism 2): the data
  put once per server for the whole search, the trials sharing it.

Reported: each search's wall time and the best held-out accuracy it reached (its
own validation rows: the indicator column for StokerTuner and Hyperopt,
TrainValidationSplit's seeded 20%).
"""

from __future__ import annotations

import statistics
import time

from bench.b8_target import teacher_table
from bench.common import Context, Result, mlp, spark_session

BENCH = "9 Hyperparameter search"

RATES = [1e-4, 1e-3, 1e-2, 3e-2]
HIDDEN = [[32], [128, 128]]
ROUNDS = 6
CLASSES = 5


def run(ctx: Context) -> list[Result]:
    from pyspark.sql import functions as F

    spark = spark_session()
    table, features = teacher_table(spark, ctx.size(20_000, 200_000))
    data = table.withColumn("is_val", F.rand(91) < 0.2).repartition(2).cache()
    rows = data.count()
    columns = [f"f{i}" for i in range(features)]
    parquet = ctx.work / "b9_table.parquet"

    def tuner() -> tuple[float, float]:
        from stoker.spark import StokerEstimator, StokerTuner

        est = StokerEstimator(
            featureCols=columns,
            labelCol="label",
            model={"type": "mlp", "hidden": [32], "num_classes": CLASSES},
            batchSize=256,
            seed=1,
            validationIndicatorCol="is_val",
        )
        started = time.perf_counter()
        tuned = StokerTuner(
            estimator=est,
            space={"learningRate": {"grid": RATES}, "model.hidden": {"grid": HIDDEN}},
            maxRounds=ROUNDS,
            minRounds=1,
            reductionFactor=3,
            parallelism=2,
            tunerMetric="accuracy",
        ).fit(data)
        return time.perf_counter() - started, tuned.best_model.summary["best_value"]

    def validation_split() -> tuple[float, float]:
        import json

        from pyspark.ml.evaluation import MulticlassClassificationEvaluator
        from pyspark.ml.tuning import ParamGridBuilder, TrainValidationSplit
        from stoker.spark import StokerEstimator

        est = StokerEstimator(
            featureCols=columns,
            labelCol="label",
            model={"type": "mlp", "hidden": [32], "num_classes": CLASSES},
            batchSize=256,
            seed=1,
            rounds=ROUNDS,
        )
        grid = (
            ParamGridBuilder()
            .addGrid(est.learningRate, RATES)
            .addGrid(
                est.model,
                [json.dumps({"type": "mlp", "hidden": h, "num_classes": CLASSES}) for h in HIDDEN],
            )
            .build()
        )
        started = time.perf_counter()
        fitted = TrainValidationSplit(
            estimator=est,
            estimatorParamMaps=grid,
            evaluator=MulticlassClassificationEvaluator(metricName="accuracy"),
            trainRatio=0.8,
            parallelism=2,
            seed=5,
        ).fit(data.drop("is_val"))
        return time.perf_counter() - started, max(fitted.validationMetrics)

    def hyperopt() -> tuple[float, float]:
        from hyperopt import STATUS_OK, SparkTrials, fmin, hp, tpe

        started = time.perf_counter()
        data.write.mode("overwrite").parquet(str(parquet))
        path = str(parquet)

        def trial(config: dict) -> dict:
            import pandas as pd
            import torch

            torch.set_num_threads(1)
            frame = pd.read_parquet(path)
            val = frame["is_val"].to_numpy()
            x = torch.tensor(frame[columns].to_numpy(dtype="float32"))
            y = torch.tensor(frame["label"].to_numpy(dtype="int64"))
            xt, yt, xv, yv = x[~val], y[~val], x[val], y[val]
            torch.manual_seed(1)
            net = mlp(len(columns), config["hidden"], CLASSES)
            opt = torch.optim.Adam(net.parameters(), lr=config["lr"])
            loss_fn = torch.nn.CrossEntropyLoss()
            best = 0.0
            for _ in range(ROUNDS):
                net.train()
                for idx in torch.randperm(len(xt)).split(256):
                    opt.zero_grad()
                    loss_fn(net(xt[idx]), yt[idx]).backward()
                    opt.step()
                net.eval()
                with torch.no_grad():
                    best = max(best, (net(xv).argmax(1) == yv).float().mean().item())
            return {"loss": -best, "status": STATUS_OK}

        space = {"lr": hp.choice("lr", RATES), "hidden": hp.choice("hidden", HIDDEN)}
        trials = SparkTrials(parallelism=2, spark_session=spark)
        fmin(
            trial,
            space,
            algo=tpe.suggest,
            max_evals=len(RATES) * len(HIDDEN),
            trials=trials,
            rstate=__import__("numpy").random.default_rng(3),
            show_progressbar=False,
        )
        return time.perf_counter() - started, -min(trials.losses())

    variants = {
        "StokerTuner (ASHA)": tuner,
        "TrainValidationSplit over StokerEstimator": validation_split,
        "Hyperopt SparkTrials (PyTorch trials)": hyperopt,
    }
    for fn in variants.values():  # warm-up: servers started, JIT, Python workers
        fn()
    samples: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    for _ in range(max(1, min(ctx.repeats, 3))):
        for name, fn in variants.items():
            samples[name].append(fn())
    results = []
    for name, got in samples.items():
        seconds = [g[0] for g in got]
        results.append(
            Result(
                bench=BENCH,
                case=f"8 configurations, {ROUNDS} rounds at most, {rows:,} rows (5 classes)",
                variant=name,
                unit="seconds to the best held-out accuracy",
                value=statistics.median(seconds),
                spread=(min(seconds), max(seconds)),
                samples=seconds,
                lower_is_better=True,
                role="stoker" if name.startswith("Stoker") else "peer",
                extra={"best_accuracy": round(statistics.median(g[1] for g in got), 4)},
            )
        )
    data.unpersist()
    return results
