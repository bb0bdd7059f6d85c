"""StokerTuner from PySpark on the two-executor cluster: a random space searched by
ASHA, the trials table, the best model predicting, the plot, persistence, and the
errors of a search that cannot run (the JVM suite TunerIT checks the schedule against
the full grid and the puts per server)."""

from __future__ import annotations

from pathlib import Path

import pytest
import stoker
from pyspark.ml import Pipeline, PipelineModel
from pyspark.sql import functions as F
from stoker.spark import StokerEstimator, StokerTuner, StokerTunerModel

from sparkml.tables import customers


@pytest.fixture(scope="module")
def table(spark):
    return (
        customers(spark, 1200, 31)
        .withColumn("is_val", F.rand(2) < 0.25)
        .repartition(2, "id")
        .cache()
    )


def estimator() -> StokerEstimator:
    return StokerEstimator(
        featureCols=["x", "y"],
        labelCol="label",
        model={"type": "mlp", "hidden": [16], "num_classes": 2},
        seed=3,
        validationIndicatorCol="is_val",
    )


SPACE = {
    "learningRate": {"log_uniform": [1e-4, 0.1]},
    "model.hidden": {"choice": [[8], [32, 32]]},
    "batchSize": {"int_range": [32, 128]},
}


def test_a_random_search_finds_a_model_and_reports_every_trial(table, tmp_path: Path):
    tuner = StokerTuner(
        estimator=estimator(),
        space=SPACE,
        numTrials=6,
        maxRounds=4,
        reductionFactor=2,
        tunerMetric="accuracy",
    )
    tuned = tuner.fit(table)
    rows = {r["trial"]: r for r in tuned.trials.collect()}
    assert sorted(rows) == list(range(6))
    assert all(r["rung"] >= 0 for r in rows.values())
    assert sum(r["best"] for r in rows.values()) == 1
    best = next(r for r in rows.values() if r["best"])
    assert best["rung"] == 2 and best["status"] == "completed"
    # The best trial is the best at the top rung by accuracy (higher is better).
    top = [r["metric"] for r in rows.values() if r["rung"] == 2]
    assert best["metric"] == max(top)
    assert set(best["params"]) == {"learningRate", "model.hidden", "batchSize"}
    assert 32 <= int(best["params"]["batchSize"]) <= 128
    assert tuned.best_params == best["params"]
    assert tuned.best_model.summary["best_value"] == pytest.approx(best["metric"])
    predicted = tuned.transform(table)
    assert predicted.filter(F.col("prediction").isNull()).count() == 0
    png = Path(tuned.plot_trials(tmp_path / "trials.png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = tuned.trials_history()
    assert all(len(t["history"]) == t["rounds"] for t in history)

    # As a pipeline stage, saved and loaded, estimator and model alike.
    Pipeline(stages=[tuner]).write().overwrite().save(str(tmp_path / "tuner"))
    loaded = Pipeline.load(str(tmp_path / "tuner")).getStages()[0]
    assert isinstance(loaded, StokerTuner)
    assert loaded.getOrDefault("numTrials") == 6
    assert loaded.getEstimator().getModel() == estimator().getModel()
    tuned.write().overwrite().save(str(tmp_path / "tuned"))
    again = StokerTunerModel.load(str(tmp_path / "tuned"))
    assert again.trials_history() == history
    fitted = PipelineModel(stages=[tuned])
    fitted.write().overwrite().save(str(tmp_path / "fitted"))
    assert PipelineModel.load(str(tmp_path / "fitted")).transform(table).count() == table.count()


def test_a_search_that_cannot_run_says_why(table):
    with pytest.raises(TypeError, match="did you mean 'numTrials'"):
        StokerTuner(estimator=estimator(), num_trials=3)
    with pytest.raises(stoker.InvalidInputError, match="numTrials must be at least 1"):
        StokerTuner(estimator=estimator(), space=SPACE, numTrials=0)
    with pytest.raises(stoker.InvalidInputError, match="'dropout' is not a param"):
        StokerTuner(estimator=estimator(), space={"dropout": {"grid": [0.1]}}).fit(table)
    with pytest.raises(stoker.InvalidInputError, match="search space is empty"):
        StokerTuner(estimator=estimator(), space={}).fit(table)
    with pytest.raises(stoker.InvalidInputError, match="does not apply to a classifier"):
        StokerTuner(estimator=estimator(), space=SPACE, tunerMetric="r2").fit(table)
