"""A Spark application for the driver-death test (test_cluster.py): fits the
customers table with a checkpoint directory and writes the trained state.

    python driver_app.py CHECKPOINT_DIR OUT_STATE

A killed run leaves its checkpoints; the next run with the same directory
resumes after the last one."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyspark.sql import SparkSession
from sparkml.tables import customers
from stoker import spark as stoker_spark
from stoker.spark import StokerEstimator

ROUNDS = 10


def main(checkpoints: str, out: str) -> None:
    spark = stoker_spark.configure(
        SparkSession.builder.master(os.environ.get("MASTER", "local[2]"))
        .appName("stoker-fault-driver")
        .config("spark.stoker.server.device", "cpu")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "4")
    ).getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    train = customers(spark, 4000, 23).repartition(4, "id").sortWithinPartitions("id")
    model = StokerEstimator(
        featureCols=["x", "y"],
        labelCol="label",
        model={"type": "mlp", "hidden": [32, 32], "num_classes": 2},
        learningRate=0.01,
        batchSize=64,
        localEpochs=3,
        rounds=ROUNDS,
        seed=9,
        checkpointDir=checkpoints,
    ).fit(train)
    Path(out).write_bytes(model.state)
    print(f"rounds {len(model.history)}")
    spark.stop()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
