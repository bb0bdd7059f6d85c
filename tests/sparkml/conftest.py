"""A real Spark cluster for the PySpark suites: local-cluster[2,1,1024] (two
executor JVMs and their Python workers), set up with stoker.spark.configure,
servers auto-started per node in a private run directory."""

from __future__ import annotations

import os
import sys
import tempfile

import pytest
from stoker import spark as stoker_spark


@pytest.fixture(scope="session")
def spark():
    from pyspark.sql import SparkSession

    run_dir = tempfile.mkdtemp(prefix="stoker-pytest-run-")
    # Python workers (predict_udf) and executor JVMs share the node's server.
    os.environ["STOKER_RUN_DIR"] = run_dir
    os.environ["PYSPARK_PYTHON"] = sys.executable
    builder = (
        SparkSession.builder.master("local-cluster[2,1,1024]")
        .appName("stoker-pytest")
        .config("spark.stoker.server.runDir", run_dir)
        .config("spark.stoker.server.device", "cpu")
        # A stopped server fails its tasks within 10 s (test_faults.py).
        .config("spark.stoker.server.timeoutSeconds", "10")
        .config("spark.executorEnv.STOKER_RUN_DIR", run_dir)
        .config("spark.executorEnv.STOKER_DEVICE", "cpu")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.ui.enabled", "false")
    )
    session = stoker_spark.configure(builder).getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    yield session
    session.stop()
