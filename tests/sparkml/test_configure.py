"""stoker.spark.configure: what it adds to a SparkSession builder."""

from __future__ import annotations

from pyspark.sql import SparkSession
from stoker import spark as stoker_spark


def test_configure_sends_states_with_task_status_unless_the_user_chose(spark):
    # The session from conftest went through configure without setting it.
    assert spark.conf.get("spark.task.maxDirectResultSize") == "128m"
    mine = SparkSession.Builder().config("spark.task.maxDirectResultSize", "4m")
    options = stoker_spark.configure(mine, server_bin="/bin/true")._options
    assert options["spark.task.maxDirectResultSize"] == "4m"
    assert options["spark.stoker.server.bin"] == "/bin/true"
    assert options["spark.sql.extensions"].endswith(".sql.StokerExtensions")
