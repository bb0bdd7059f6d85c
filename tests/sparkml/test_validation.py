"""Validation, early stopping and the objective on a real two-executor cluster:
validation partitions cached and scored on the servers every round, metrics that
match Spark's own evaluators on the same predictions, the best round's state
returned, and clear errors for what cannot work."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import stoker
from pyspark.ml.evaluation import (
    BinaryClassificationEvaluator,
    MulticlassClassificationEvaluator,
    RegressionEvaluator,
)
from pyspark.sql import functions as F
from stoker.spark import StokerEstimator

from sparkml.tables import customers

MLP = {"type": "mlp", "hidden": [32, 32], "num_classes": 2}
CLASSIFIER_METRICS = {"loss", "logloss", "accuracy", "auc"}
REGRESSION_METRICS = {"loss", "rmse", "mse", "mae", "r2"}


@pytest.fixture(scope="module")
def labelled(spark):
    """The customers table with a validation indicator (about 30% true) and label
    noise on a small training part, so a large network overfits within rounds."""
    table = customers(spark, 1600, 21)
    noisy = F.when(F.rand(5) < 0.15, 1 - F.col("label")).otherwise(F.col("label"))
    return (
        table.withColumn("is_val", F.rand(9) < 0.3)
        .withColumn("label", F.when(F.col("is_val"), F.col("label")).otherwise(noisy))
        .withColumn("visits", (F.abs(F.col("x")) * 6 + F.abs(F.col("y")) * 3).cast("int"))
        .withColumn("spend", F.col("x") * 2.0 + F.col("y") * F.col("y"))
        .repartition(3, "id")
        .cache()
    )


def overfitting(**kw) -> StokerEstimator:
    params = {
        "featureCols": ["x", "y"],
        "labelCol": "label",
        "model": {"type": "mlp", "hidden": [128, 128], "num_classes": 2},
        "learningRate": 0.01,
        "batchSize": 32,
        "localEpochs": 5,
        "rounds": 25,
        "seed": 4,
        "validationIndicatorCol": "is_val",
    }
    params.update(kw)
    return StokerEstimator(**params)


def test_early_stopping_returns_the_best_rounds_state(labelled, tmp_path: Path):
    checkpoints = tmp_path / "ckpt"
    model = overfitting(earlyStoppingRounds=3, checkpointDir=str(checkpoints)).fit(labelled)
    history, summary = model.history, model.summary
    # Stopped before `rounds`, three rounds after the best one, and says so.
    assert summary["stopped_early"], summary
    assert len(history) < 25
    best = summary["best_round"]
    assert len(history) == best + 1 + 3, (summary, len(history))
    assert "did not improve for 3 rounds" in summary["stop_reason"]
    assert summary["eval_metric"] == "loss"
    # Every round has the validation metrics of a two-class classifier; the best
    # round is the one with the lowest validation loss.
    for h in history:
        assert set(h["validation"]) == CLASSIFIER_METRICS, h
    losses = [h["validation"]["loss"] for h in history]
    assert best == losses.index(min(losses))
    assert math.isclose(summary["best_value"], min(losses), rel_tol=1e-12)
    # The returned model is the best round's state: its predictions equal those of a
    # model rebuilt from that round's checkpoint, and differ from the last round's.
    validation = labelled.filter("is_val").orderBy("id")
    rebuilt = model.with_state((checkpoints / f"round-{best:05d}.safetensors").read_bytes())
    last = model.with_state(
        (checkpoints / f"round-{len(history) - 1:05d}.safetensors").read_bytes()
    )
    ours = [r.probability[1] for r in model.transform(validation).select("probability").collect()]
    theirs = [
        r.probability[1] for r in rebuilt.transform(validation).select("probability").collect()
    ]
    later = [r.probability[1] for r in last.transform(validation).select("probability").collect()]
    assert ours == theirs
    assert ours != later

    # The servers' metrics of the returned state are Spark's evaluators' on the
    # model's own predictions of the validation rows.
    scored = model.transform(validation)
    metrics = history[best]["validation"]
    auc = BinaryClassificationEvaluator(
        rawPredictionCol="probability", labelCol="label", metricName="areaUnderROC", numBins=0
    ).evaluate(scored)
    accuracy = MulticlassClassificationEvaluator(metricName="accuracy").evaluate(scored)
    logloss = MulticlassClassificationEvaluator(metricName="logLoss").evaluate(scored)
    assert abs(metrics["auc"] - auc) < 1e-6, (metrics, auc)
    assert abs(metrics["accuracy"] - accuracy) < 1e-6, (metrics, accuracy)
    assert abs(metrics["logloss"] - logloss) < 1e-6, (metrics, logloss)
    # A two-class cross-entropy model's loss is its log loss (clipping aside).
    assert abs(metrics["loss"] - logloss) < 1e-5

    # The history plot has the validation curve; a saved model keeps its summary.
    png = model.plot_history(tmp_path / "history.png")
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model.write().overwrite().save(str(tmp_path / "model"))
    loaded = stoker.spark.StokerModel.load(str(tmp_path / "model"))
    assert loaded.summary == summary
    assert loaded.history[best]["validation"] == metrics


def test_regression_on_an_integer_count_with_validation_metrics(labelled):
    # An integer label is a count, not a class, when the objective says so: the
    # default network becomes a regressor (no num_classes needed or wanted).
    est = StokerEstimator(
        featureCols=["x", "y"],
        labelCol="visits",
        objective="regression",
        learningRate=0.01,
        batchSize=64,
        localEpochs=2,
        rounds=4,
        seed=2,
        validationIndicatorCol="is_val",
        evalMetric="rmse",
    )
    model = est.fit(labelled)
    assert model.task == "regression"
    history, summary = model.history, model.summary
    assert len(history) == 4 and not summary["stopped_early"]
    assert summary["stop_reason"] == "completed all 4 rounds"
    rmses = [h["validation"]["rmse"] for h in history]
    assert summary["best_round"] == rmses.index(min(rmses))
    for h in history:
        assert set(h["validation"]) == REGRESSION_METRICS
    # Without early stopping the model is the last round's state: its metrics are
    # RegressionEvaluator's on its predictions of the validation rows.
    scored = model.transform(labelled.filter("is_val")).withColumn(
        "visits", F.col("visits").cast("double")
    )
    last = history[-1]["validation"]
    for name in ["rmse", "mse", "mae", "r2"]:
        theirs = RegressionEvaluator(labelCol="visits", metricName=name).evaluate(scored)
        assert abs(last[name] - theirs) < 1e-6 * max(1.0, abs(theirs)), (name, last[name], theirs)
    assert last["r2"] > 0.5, last


def test_a_validation_fraction_holds_rows_out(labelled):
    model = StokerEstimator(
        featureCols=["x", "y"],
        labelCol="spend",
        objective="regression",
        rounds=2,
        seed=3,
        validationFraction=0.25,
    ).fit(labelled)
    history = model.history
    # About a quarter of 1600 rows trained on nothing but were scored.
    assert 1000 < history[0]["samples"] < 1400, history[0]
    assert set(history[0]["validation"]) == REGRESSION_METRICS


def test_the_integer_label_error_names_both_ways_out(labelled):
    # The default spec is a two-class classifier; a count label does not fit it, and
    # the error says how to make it a regression or a classifier with more classes,
    # naming the partition once.
    est = StokerEstimator(featureCols=["x", "y"], labelCol="visits", rounds=1)
    with pytest.raises(stoker.InvalidInputError) as e:
        est.fit(labelled)
    text = str(e.value)
    assert "label column 'visits'" in text and "2-class classifier" in text, text
    assert "objective 'regression'" in text and "num_classes" in text, text
    assert "cast the label to double" in text, text
    assert text.count("partition") == 1, text


def test_bad_validation_inputs_get_clear_errors(labelled):
    def fit_error(data=labelled, **kw) -> str:
        with pytest.raises(stoker.InvalidInputError) as e:
            overfitting(rounds=1, **kw).fit(data)
        return str(e.value)

    text = fit_error(validationIndicatorCol="visits")
    assert "validationIndicatorCol 'visits'" in text and "int" in text and "boolean" in text
    assert "is not a column" in fit_error(validationIndicatorCol="nope")
    text = fit_error(validationIndicatorCol="is_val", validationFraction=0.2)
    assert "set one of them" in text
    # AUC on a regressor is refused before training.
    text = fit_error(
        labelCol="spend",
        objective="regression",
        model={"type": "mlp", "hidden": [8]},
        evalMetric="auc",
    )
    assert "evalMetric 'auc' does not apply to a regression model" in text, text
    assert "rmse" in text
    # Early stopping needs validation rows.
    with pytest.raises(stoker.InvalidInputError, match="need a validation set"):
        StokerEstimator(featureCols=["x", "y"], earlyStoppingRounds=2).fit(labelled)
    # An indicator that is true on no row: an empty validation set.
    empty = labelled.withColumn("never", F.lit(False))
    text = fit_error(empty, validationIndicatorCol="never")
    assert "validation set is empty" in text and "'never'" in text, text
    # Values out of range or unknown fail when set, naming what is valid.
    with pytest.raises(stoker.InvalidInputError, match=r"earlyStoppingRounds must be at least 1"):
        StokerEstimator(earlyStoppingRounds=0)
    with pytest.raises(stoker.InvalidInputError, match=r"evalMetric must be one of .*'auc'"):
        StokerEstimator().setEvalMetric("areaUnderPR")
    with pytest.raises(stoker.InvalidInputError, match=r"rounds must be at least 1; got 0"):
        StokerEstimator(rounds=0)
    with pytest.raises(stoker.InvalidInputError, match=r"validationFraction must be in \[0, 1\)"):
        StokerEstimator().setValidationFraction(1.5)
    with pytest.raises(stoker.InvalidInputError, match=r"objective must be one of"):
        StokerEstimator(objective="ranking")


def test_the_outer_optimizer_steps_from_the_rounds_change(labelled):
    def fit(**kw):
        return StokerEstimator(
            featureCols=["x", "y"],
            labelCol="label",
            model=MLP,
            learningRate=0.01,
            batchSize=64,
            localEpochs=2,
            rounds=4,
            seed=6,
            validationIndicatorCol="is_val",
            **kw,
        ).fit(labelled)

    plain = fit()
    # Step size 1 without momentum is plain averaging, to the bit.
    unit = fit(outerOptimizer="nesterov", outerLearningRate=1.0, outerMomentum=0.0)
    assert unit.state == plain.state
    nesterov = fit(outerOptimizer="nesterov")
    assert nesterov.state != plain.state
    # Round 0 has no input state on the driver to step from: it averages alike.
    assert nesterov.history[0]["validation"] == plain.history[0]["validation"]
    assert nesterov.history[1]["validation"] != plain.history[1]["validation"]
    assert all(math.isfinite(h["validation"]["loss"]) for h in nesterov.history)
    with pytest.raises(stoker.InvalidInputError, match="outerMomentum must be in"):
        StokerEstimator(outerMomentum=1.0)


def test_a_cosine_schedule_and_class_weights(labelled):
    base = {
        "featureCols": ["x", "y"],
        "labelCol": "label",
        "model": MLP,
        "learningRate": 0.02,
        "batchSize": 64,
        "rounds": 4,
        "seed": 8,
    }
    model = StokerEstimator(
        lrSchedule="cosine", warmupRounds=1.0, minLearningRate=0.002, **base
    ).fit(labelled)
    rates = [h["learning_rate"] for h in model.history]
    # Warmup through round 0 (its last step is near the full rate), then down the
    # cosine to the floor at the end.
    assert 0.015 < rates[0] < 0.02, rates
    assert rates[0] > rates[1] > rates[2] > rates[3], rates
    assert rates[3] == pytest.approx(0.002, rel=0.05), rates
    constant = StokerEstimator(**base).fit(labelled)
    assert {h["learning_rate"] for h in constant.history} == {0.02}

    # Weighting class 1 far above class 0 predicts class 1 more often.
    def ones(m) -> int:
        return m.transform(labelled).filter("prediction = 1").count()

    weighted = StokerEstimator(classWeights=[0.05, 1.0], **base).fit(labelled)
    assert ones(weighted) > ones(constant) + 50
    with pytest.raises(stoker.InvalidInputError, match="3 class weights for a model with 2"):
        StokerEstimator(classWeights=[1.0, 1.0, 1.0], **{**base, "rounds": 1}).fit(labelled)
    with pytest.raises(stoker.InvalidInputError, match=r"lrGamma must be in \(0, 1\]"):
        StokerEstimator(lrGamma=0.0)
