"""stoker.spark on a real two-executor cluster: fit/transform, predict_udf,
pipelines, persistence, history and plots, bad inputs."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import stoker
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import VectorAssembler
from pyspark.sql import functions as F
from stoker.spark import StokerEstimator, StokerModel

from sparkml.tables import customers

MLP = {"type": "mlp", "hidden": [32, 32], "num_classes": 2}


@pytest.fixture(scope="module")
def data(spark):
    table = customers(spark, 5000, 7)
    train, test = table.randomSplit([0.8, 0.2], seed=11)
    train = train.repartition(4, "id").sortWithinPartitions("id").cache()
    test = test.orderBy("id").cache()
    return train, test


def estimator(**kw) -> StokerEstimator:
    params = {
        "featureCols": ["x", "y"],
        "labelCol": "label",
        "model": MLP,
        "learningRate": 0.01,
        "batchSize": 64,
        "localEpochs": 3,
        "rounds": 6,
        "seed": 3,
    }
    params.update(kw)
    return StokerEstimator(**params)


def accuracy(df) -> float:
    return df.filter(F.col("prediction") == F.col("label")).count() / df.count()


@pytest.fixture(scope="module")
def model(data) -> StokerModel:
    return estimator().fit(data[0])


def test_fit_transform_reaches_the_accuracy_bar(model, data):
    assert accuracy(model.transform(data[1])) >= 0.9
    assert model.task == "multiclass:2"
    history = model.history
    assert [h["round"] for h in history] == list(range(6))
    assert history[-1]["loss"] < history[0]["loss"]
    assert all(h["partitions"] == 4 and h["samples"] == data[0].count() for h in history)


def test_transform_udf_and_engine_agree(model, data, spark, stoker_bin, tmp_path):
    test = data[1]
    via_transform = model.transform(test).select("id", "prediction", "probability")
    rows = {r.id: r for r in via_transform.collect()}

    predict = stoker.predict_udf(model)
    via_udf = test.withColumn("p", predict("x", "y")).select("id", "p").collect()
    assert len(via_udf) == len(rows)
    for r in via_udf:
        assert r.p == rows[r.id].prediction

    probs = stoker.predict_udf(model, probability=True)
    first = test.limit(5).withColumn("q", probs("x", "y")).collect()
    for r in first:
        assert np.allclose(r.q, rows[r.id].probability.toArray(), atol=1e-6)

    # The engine directly: `stoker predict` on the saved state, in one process.
    state = tmp_path / "model.safetensors"
    state.write_bytes(model.state)
    pdf = test.select("id", "x", "y").toPandas()
    inp = tmp_path / "test.parquet"
    pq.write_table(pa.Table.from_pandas(pdf, preserve_index=False), inp)
    out = tmp_path / "out.parquet"
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(MLP))
    subprocess.run(
        [
            stoker_bin,
            "predict",
            "--data",
            str(inp),
            "--model",
            str(spec),
            "--state",
            str(state),
            "--out",
            str(out),
            "--keep",
            "id",
        ],
        check=True,
        capture_output=True,
    )
    engine = pq.read_table(out).to_pydict()
    for i, p in zip(engine["id"], engine["prediction"], strict=True):
        assert p == rows[i].prediction


def test_sql_can_call_the_udf(model, data, spark):
    spark.udf.register("churn_py", stoker.predict_udf(model))
    data[1].createOrReplaceTempView("people")
    got = spark.sql("SELECT id, churn_py(x, y) AS p FROM people").collect()
    assert len(got) == data[1].count()
    assert {r.p for r in got} <= {0.0, 1.0}


def test_pipeline_with_vector_assembler_saves_and_loads(data, tmp_path):
    train, test = data
    pipeline = Pipeline(
        stages=[
            VectorAssembler(inputCols=["x", "y"], outputCol="features"),
            estimator(featureCols=[], featuresCol="features"),
        ]
    )
    fitted = pipeline.fit(train)
    assert accuracy(fitted.transform(test)) >= 0.9
    path = str(tmp_path / "pipeline")
    fitted.write().overwrite().save(path)
    loaded = PipelineModel.load(path)
    assert isinstance(loaded.stages[1], StokerModel)
    a = fitted.transform(test).select("prediction").collect()
    b = loaded.transform(test).select("prediction").collect()
    assert a == b


def test_model_save_load_history_and_plot(model, data, tmp_path):
    path = str(tmp_path / "model")
    model.write().overwrite().save(path)
    loaded = StokerModel.load(path)
    assert loaded.history == model.history
    assert loaded.state == model.state
    assert loaded.getFeatureCols() == ["x", "y"]
    png = loaded.plot_history(tmp_path / "loss.png")
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_bad_inputs_raise_stoker_errors(data, spark):
    train = data[0]
    with pytest.raises(stoker.InvalidInputError, match="feature column 'x' has type string"):
        estimator(rounds=1).fit(train.withColumn("x", F.col("x").cast("string")))
    with pytest.raises(stoker.InvalidInputError, match="'y'.*null|null.*'y'"):
        estimator(rounds=1).fit(
            train.withColumn("y", F.when(F.col("id") % 50 == 0, None).otherwise(F.col("y")))
        )
    with pytest.raises(stoker.NotFoundError, match="no model named 'no-such-model'"):
        stoker.predict_udf("no-such-model")
    with pytest.raises(stoker.ServerUnavailableError):
        estimator(rounds=1, serverAddress="grpc://127.0.0.1:1").fit(train)


def test_stoker_predict_sql_function_from_pyspark(model, data, spark):
    version = model.register("rings_py")
    assert version >= 1
    data[1].createOrReplaceTempView("people_sql")
    expected = {r.id: r.prediction for r in model.transform(data[1]).collect()}
    got = spark.sql("SELECT id, stoker_predict('rings_py', x, y) AS p FROM people_sql").collect()
    assert {r.id: r.p for r in got} == expected
    via_expr = data[1].select("id", F.expr("stoker_predict('rings_py', x, y)").alias("p"))
    assert {r.id: r.p for r in via_expr.collect()} == expected
    plan = spark.sql("SELECT stoker_predict('rings_py', x, y) FROM people_sql")
    assert "StokerEval" in plan._jdf.queryExecution().executedPlan().toString()


def test_predict_udf_on_a_vector_column(data):
    train, test = data
    assembled = VectorAssembler(inputCols=["x", "y"], outputCol="features")
    vec_model = estimator(featureCols=[], featuresCol="features", rounds=3).fit(
        assembled.transform(train)
    )
    scored = vec_model.transform(assembled.transform(test)).select("id", "prediction")
    expected = {r.id: r.prediction for r in scored.collect()}
    predict = stoker.predict_udf(vec_model)
    got = assembled.transform(test).select("id", predict("features").alias("p")).collect()
    assert {r.id: r.p for r in got} == expected


def test_unload_drops_the_model_and_transform_registers_it_again(model, data):
    assert model.unload() >= 1
    assert accuracy(model.transform(data[1])) >= 0.9


def test_an_unknown_param_names_the_closest_one(spark):
    with pytest.raises(TypeError, match=r"'epochs' \(did you mean 'localEpochs'\?\)"):
        StokerEstimator(epochs=3)
    with pytest.raises(TypeError, match=r"'learning_rate' \(did you mean 'learningRate'\?\)"):
        StokerEstimator().setParams(learning_rate=0.1)
    with pytest.raises(TypeError, match=r"'zzz'; the params are: averageOptimizerState, "):
        StokerEstimator(zzz=1)
