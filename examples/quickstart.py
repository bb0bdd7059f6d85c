"""stoker quickstart on Spark (what `make demo` runs).

A churn model the way a data team builds one: Spark generates (fixed seed) a
customers table and an events table of a few million rows, aggregates events per
customer with group-bys, joins them to the customers, and trains a stoker MLP with
parameter averaging over several partitions and rounds (with a progress bar). It
compares held-out accuracy and AUC with a Spark ML logistic regression baseline,
runs batch inference, writes predictions to Parquet, saves a loss plot, and prints
the timings and rows/s of every stage. A tenth of the training rows is the validation
set, scored on the servers every round: the plot shows the training and validation
loss and the validation AUC.

    make demo                                  # or, after `make build`:
    python examples/quickstart.py              # DEMO_CUSTOMERS=100000 for a quicker run
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from pyspark.ml import Pipeline
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.ml.feature import StandardScaler, VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from stoker import spark as stoker_spark
from stoker.spark import StokerEstimator

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "examples" / "out"
CUSTOMERS = int(os.environ.get("DEMO_CUSTOMERS", "300000"))
EVENTS_PER_CUSTOMER = 10
FEATURES = [
    "tenure_months",
    "plan",
    "events",
    "support_calls",
    "late_payments",
    "spend",
    "avg_purchase",
    "days_since_last_event",
]


class Stages:
    """Wall time and rows/s per stage, for the summary."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float, int]] = []

    def run(self, name: str, rows: int, fn):
        started = time.perf_counter()
        result = fn()
        self.rows.append((name, time.perf_counter() - started, rows))
        return result

    def print(self) -> None:
        print(f"\n{'stage':34s} {'seconds':>8s} {'rows':>11s} {'rows/s':>11s}")
        for name, seconds, rows in self.rows:
            rate = f"{rows / seconds:,.0f}" if rows else ""
            print(f"{name:34s} {seconds:8.1f} {rows:11,d} {rate:>11s}")


def build_tables(spark: SparkSession):
    """Customers, and events whose kinds and amounts depend on a hidden trait."""
    customers = spark.range(CUSTOMERS).select(
        F.col("id").alias("customer_id"),
        (F.rand(1) * 72).alias("tenure_months"),
        F.floor(F.rand(2) * 3).cast("int").alias("plan"),
        F.rand(3).alias("frustration"),  # hidden: never a feature
    )
    n_events = CUSTOMERS * EVENTS_PER_CUSTOMER
    events = (
        spark.range(n_events)
        .select(
            F.floor(F.rand(4) * CUSTOMERS).cast("long").alias("customer_id"),
            F.rand(5).alias("u"),
            F.rand(6).alias("v"),
            F.randn(7).alias("z"),
        )
        .join(customers.select("customer_id", "frustration", "plan"), "customer_id")
        .select(
            "customer_id",
            F.when(F.col("u") < 0.03 + 0.25 * F.col("frustration"), "support")
            .when(F.col("u") < 0.06 + 0.35 * F.col("frustration"), "late_payment")
            .otherwise("purchase")
            .alias("kind"),
            F.exp(F.col("z") * 0.5 + 3 + 0.3 * F.col("plan")).alias("amount"),
            (365 * F.pow(F.col("v"), 1 - 0.8 * F.col("frustration"))).alias("day"),
        )
    )
    return customers, events, n_events


def training_table(customers, events):
    """Group-bys over events, joined to customers, with the churn label."""
    per_customer = events.groupBy("customer_id").agg(
        F.count(F.lit(1)).alias("events"),
        F.sum(F.when(F.col("kind") == "support", 1).otherwise(0)).alias("support_calls"),
        F.sum(F.when(F.col("kind") == "late_payment", 1).otherwise(0)).alias("late_payments"),
        F.sum(F.when(F.col("kind") == "purchase", F.col("amount")).otherwise(0)).alias("spend"),
        F.avg(F.when(F.col("kind") == "purchase", F.col("amount"))).alias("avg_purchase"),
        (365 - F.max("day")).alias("days_since_last_event"),
    )
    table = customers.join(per_customer, "customer_id").na.fill(0.0, ["avg_purchase"])
    # Churn follows rules no linear model captures (thresholds and interactions),
    # with 3% of labels flipped as noise.
    churn = (
        ((F.col("support_calls") >= 3) & (F.col("tenure_months") < 24))
        | ((F.col("days_since_last_event") > 45) & (F.col("plan") == 0))
        | ((F.col("late_payments") >= 2) & (F.col("avg_purchase") < 25))
    )
    flip = F.rand(8) < 0.03
    label = F.when(churn != flip, 1).otherwise(0)
    return table.withColumn("label", label).drop("frustration")


# Spark ML's BLAS (dev.ludovic.netlib) first looks for the system's native BLAS
# (libblas.so.3); without one, its native loader prints "netlib-blas: dlopen(libblas.so.3)
# failed" to stderr, where no log level reaches, and it falls back to its Java BLAS. The
# demo asks for the Java implementations straight away.
JAVA_BLAS = " ".join(
    f"-Ddev.ludovic.netlib.{lib}.allowNative=false" for lib in ("blas", "lapack", "arpack")
)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    spark = stoker_spark.configure(
        SparkSession.builder.master(os.environ.get("MASTER", "local[2]"))
        .appName("stoker-quickstart")
        .config("spark.sql.shuffle.partitions", "8")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", "4g")
        .config("spark.driver.extraJavaOptions", JAVA_BLAS)
        .config("spark.executor.extraJavaOptions", JAVA_BLAS)
    ).getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    stages = Stages()

    customers, events, n_events = build_tables(spark)
    table = training_table(customers, events)
    train, test = table.randomSplit([0.8, 0.2], seed=42)
    train = train.repartition(4).cache()
    test = test.cache()
    n_train = stages.run("generate + group-by + join (ETL)", n_events + CUSTOMERS, train.count)
    n_test = test.count()
    churn_rate = train.filter("label = 1").count() / n_train
    print(
        f"{n_events:,} events -> {n_train:,} training and {n_test:,} held-out customers "
        f"({churn_rate:.1%} churn)"
    )

    features = [
        VectorAssembler(inputCols=FEATURES, outputCol="raw"),
        StandardScaler(inputCol="raw", outputCol="features", withMean=True),
    ]
    stoker_pipeline = Pipeline(
        stages=[
            *features,
            StokerEstimator(
                featuresCol="features",
                labelCol="label",
                model={"type": "mlp", "hidden": [64, 64], "num_classes": 2},
                optimizer="adam",
                learningRate=0.003,
                batchSize=256,
                localEpochs=2,
                rounds=8,
                seed=1,
                # A tenth of the training rows held out and scored on the servers
                # every round: the validation curve in the plot, the metrics in
                # `history`, and early stopping were it set (earlyStoppingRounds).
                validationFraction=0.1,
                evalMetric="auc",
            ),
        ]
    )
    baseline_pipeline = Pipeline(
        stages=[*features, LogisticRegression(featuresCol="features", labelCol="label", maxIter=50)]
    )

    print("training stoker (4 partitions, 8 rounds of 2 local epochs, weights averaged)")
    stoker_model = stages.run(
        "stoker fit (4 partitions x 8 rounds)", n_train * 2 * 8, lambda: stoker_pipeline.fit(train)
    )
    baseline = stages.run(
        "baseline fit (Spark ML logistic)", n_train, lambda: baseline_pipeline.fit(train)
    )

    auc = BinaryClassificationEvaluator(labelCol="label", rawPredictionCol="probability")

    def evaluate(model) -> tuple[float, float]:
        scored = model.transform(test).select("label", "prediction", "probability").cache()
        accuracy = scored.filter("prediction = label").count() / n_test
        result = (accuracy, auc.evaluate(scored))
        scored.unpersist()
        return result

    # Each model is evaluated twice. A first call pays for what happens once per JVM and
    # plan: the JIT compiling the evaluator and transform code, Spark generating code
    # for the query; whichever model goes first pays most of the evaluator's share.
    # (Registering the model on each node's server is not in it: fit did that.) The
    # second calls are the steady state, the figures to compare.
    stages.run("stoker evaluate (first call)", n_test, lambda: evaluate(stoker_model))
    stages.run("baseline evaluate (first call)", n_test, lambda: evaluate(baseline))
    stoker_acc, stoker_auc = stages.run(
        "stoker evaluate (transform + AUC)", n_test, lambda: evaluate(stoker_model)
    )
    base_acc, base_auc = stages.run(
        "baseline evaluate (transform + AUC)", n_test, lambda: evaluate(baseline)
    )

    predictions = OUT / "quickstart_predictions.parquet"
    stages.run(
        "batch inference -> Parquet",
        n_test,
        lambda: (
            stoker_model.transform(test)
            .select(
                "customer_id",
                "label",
                "prediction",
                vector_to_array("probability")[1].alias("churn_probability"),
            )
            .write.mode("overwrite")
            .parquet(str(predictions))
        ),
    )
    trained = stoker_model.stages[-1]
    plot = trained.plot_history(OUT / "quickstart_loss.png")

    print(f"\n{'model':28s} {'accuracy':>9s} {'AUC':>7s}")
    print(f"{'stoker MLP 64-64':28s} {stoker_acc:9.3f} {stoker_auc:7.3f}")
    print(f"{'logistic regression':28s} {base_acc:9.3f} {base_auc:7.3f}")
    stages.print()
    last = trained.history[-1]
    best = trained.summary
    print(
        f"\nfinal training loss {last['loss']:.4f}, validation loss "
        f"{last['validation']['loss']:.4f}; best validation AUC {best['best_value']:.4f} "
        f"in round {best['best_round'] + 1}; plot {plot}; predictions {predictions}"
    )
    spark.stop()
    if stoker_auc <= base_auc:
        sys.exit("stoker did not beat the baseline")


if __name__ == "__main__":
    main()
