"""stoker.linalg from PySpark on the two-executor cluster, against numpy on the
collected data: the Gramian, covariance, SVD and least squares in float64 (1e-5
relative) and float32 (1e-3), PCA's components and projection, a constant column,
more columns than rows, nulls refused by name, and persistence (the JVM suite
LinalgIT checks the same against Spark ML's own PCA, RowMatrix and
LinearRegression)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import VectorAssembler
from pyspark.sql import functions as F
from stoker import linalg
from stoker.linalg import StokerLinearRegression, StokerPCA, StokerPCAModel

COLUMNS = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def table(spark):
    df = (
        spark.range(3000)
        .withColumn("z1", F.randn(11))
        .withColumn("z2", F.randn(12))
        .withColumn("z3", F.randn(13))
        .withColumn("z4", F.randn(15))
        .withColumn("a", F.col("z1") * 2 + 50)
        .withColumn("b", F.col("z1") - F.col("z2") * 3 + F.col("z4") * 0.5)
        .withColumn("c", F.col("z3") * 0.5 + F.col("z2") * 0.2)
        .withColumn("d", F.col("z2") * 0.1 - 7)
        .withColumn("k", F.lit(2.5))
        .withColumn("y", F.col("a") * 1.5 - F.col("c") * 4 + F.col("d") + 2 + F.randn(14) * 0.05)
    )
    df = VectorAssembler(inputCols=COLUMNS, outputCol="features").transform(df)
    return df.repartition(3, "id").cache()


@pytest.fixture(scope="module")
def local(table):
    rows = table.select("id", *COLUMNS, "k", "y").orderBy("id").collect()
    return np.array([[r[c] for c in [*COLUMNS, "k", "y"]] for r in rows], dtype=np.float64)


def close(expected, actual, rel):
    expected, actual = np.asarray(expected), np.asarray(actual)
    scale = np.maximum(np.abs(expected), 1.0)
    assert expected.shape == actual.shape
    assert np.all(np.abs(expected - actual) <= rel * scale), np.max(
        np.abs(expected - actual) / scale
    )


def same_columns(expected, actual, rel):
    signs = np.sign(np.sum(expected * actual, axis=0))
    close(expected, actual * signs, rel)


def test_gramian_covariance_and_svd_equal_numpy(table, local):
    x = local[:, :4]
    close(x.T @ x, linalg.gramian(table, COLUMNS), 1e-5)
    close(x.T @ x, linalg.gramian(table, "features", precision="float32"), 1e-3)
    close(np.cov(x, rowvar=False), linalg.covariance(table, COLUMNS), 1e-5)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    values, vectors = linalg.svd(table, "features", 3)
    close(s[:3], values, 1e-5)
    same_columns(vt[:3].T, vectors, 1e-5)


def test_pca_components_and_projection_equal_numpy(table, local):
    x = local[:, :4]
    w, v = np.linalg.eigh(np.cov(x, rowvar=False))
    order = np.argsort(w)[::-1][:2]
    model = StokerPCA(inputCols=COLUMNS, k=2, outputCol="p", centerOutput=True).fit(table)
    same_columns(v[:, order], model.pc, 1e-5)
    close(w[order] / w.sum(), model.explained_variance, 1e-5)
    close(x.mean(axis=0), model.mean, 1e-9)
    projected = np.array(
        [r["p"].toArray() for r in model.transform(table).orderBy("id").select("p").collect()]
    )
    signs = np.sign(np.sum(v[:, order] * model.pc, axis=0))
    close((x - x.mean(axis=0)) @ v[:, order], projected * signs, 1e-5)
    single = StokerPCA(inputCol="features", k=2, precision="float32").fit(table)
    same_columns(v[:, order], single.pc, 1e-3)


def test_least_squares_equals_numpy_and_a_constant_column_is_least_norm(table, local):
    x, y = local[:, :4], local[:, 5]
    design = np.column_stack([x, np.ones(len(x))])
    beta, *_ = np.linalg.lstsq(design, y, rcond=None)
    fit = linalg.lstsq(table, COLUMNS, "y")
    close(beta[:4], fit["coefficients"], 1e-5)
    close(beta[4], fit["intercept"], 1e-5)
    residual = y - design @ beta
    sigma2 = residual @ residual / (len(y) - 5)
    se = np.sqrt(np.diag(sigma2 * np.linalg.inv(design.T @ design)))
    close(se, fit["coefficient_standard_errors"], 1e-5)
    assert fit["rank"] == 4
    # With the constant column too: rank 4 of 5, its coefficient 0 (minimum norm).
    deficient = linalg.lstsq(table, [*COLUMNS, "k"], "y")
    assert deficient["rank"] == 4
    assert abs(deficient["coefficients"][4]) < 1e-9
    assert len(deficient["coefficient_standard_errors"]) == 0
    close(beta[:4], deficient["coefficients"][:4], 1e-5)


def test_more_columns_than_rows(spark):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(8, 20))
    df = spark.createDataFrame([[float(v) for v in row] for row in x], [f"w{j}" for j in range(20)])
    names = [f"w{j}" for j in range(20)]
    close(np.cov(x, rowvar=False), linalg.covariance(df.repartition(2), names), 1e-5)
    _, v = np.linalg.eigh(np.cov(x, rowvar=False))
    model = StokerPCA(inputCols=names, k=3).fit(df.repartition(2))
    same_columns(v[:, ::-1][:, :3], model.pc, 1e-5)
    fit = linalg.lstsq(df, names[:19], "w19")
    assert fit["rank"] == 7
    assert fit["rss"] < 1e-8


def test_nulls_and_bad_input_are_refused_by_name(table):
    with_null = table.withColumn("b", F.when(F.col("id") == 17, None).otherwise(F.col("b")))
    with pytest.raises(Exception, match="'b'.*null"):
        linalg.covariance(with_null, COLUMNS)
    with pytest.raises(Exception, match="at most 4"):
        StokerPCA(inputCols=COLUMNS, k=5).fit(table)
    with pytest.raises(Exception, match="not found"):
        linalg.gramian(table, ["a", "nope"])
    with pytest.raises(TypeError, match="did you mean 'k'"):
        StokerPCA(kk=2)


def test_models_persist_in_pipelines(table, tmp_path: Path):
    pipeline = Pipeline(
        stages=[
            StokerPCA(inputCol="features", outputCol="pcs", k=2),
            StokerLinearRegression(featuresCol="pcs", labelCol="y"),
        ]
    )
    fitted = pipeline.fit(table)
    fitted.write().overwrite().save(str(tmp_path / "m"))
    loaded = PipelineModel.load(str(tmp_path / "m"))
    assert isinstance(loaded.stages[0], StokerPCAModel)
    a = [r[0] for r in fitted.transform(table).orderBy("id").select("prediction").take(5)]
    b = [r[0] for r in loaded.transform(table).orderBy("id").select("prediction").take(5)]
    assert a == b
    estimator = StokerPCA(inputCols=COLUMNS, k=3, method="randomized")
    estimator.write().overwrite().save(str(tmp_path / "e"))
    again = StokerPCA.load(str(tmp_path / "e"))
    assert again.getK() == 3 and again.getMethod() == "randomized"
