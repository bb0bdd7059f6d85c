"""Training tables built the way users build theirs: group-bys and joins."""

from __future__ import annotations


def customers(spark, n: int, seed: int):
    """Per-customer aggregates of an events table (group-by) joined to customers;
    the label says whether the customer's point, which only the events carry, lies
    outside a circle (not linearly separable; the majority class is about 72%)."""
    from pyspark.sql import functions as F

    points = (
        spark.range(n)
        .withColumn("px", F.rand(seed) * 4 - 2)
        .withColumn("py", F.rand(seed + 1) * 4 - 2)
    )
    people = points.select(
        "id",
        F.when(F.col("px") ** 2 + F.col("py") ** 2 > 1.44, 1).otherwise(0).alias("label"),
    )
    events = points.crossJoin(spark.range(4).withColumnRenamed("id", "k")).select(
        F.col("id").alias("customer"),
        F.when(F.col("k") < 2, F.lit("x")).otherwise(F.lit("y")).alias("kind"),
        (F.when(F.col("k") < 2, F.col("px")).otherwise(F.col("py")) / 2).alias("amount"),
    )
    per_customer = events.groupBy("customer").agg(
        F.sum(F.when(F.col("kind") == "x", F.col("amount"))).alias("x"),
        F.sum(F.when(F.col("kind") == "y", F.col("amount"))).alias("y"),
    )
    return people.join(per_customer, people.id == per_customer.customer).select(
        "id", "x", "y", "label"
    )
