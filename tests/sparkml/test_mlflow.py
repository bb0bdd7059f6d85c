"""stoker.spark.autolog() against a real local MLflow tracking store, read back
through MlflowClient."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from stoker import spark as stoker_spark
from stoker.spark import StokerEstimator

from sparkml.tables import customers

mlflow = pytest.importorskip("mlflow")


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    # MLflow 3 keeps the file store for local use behind this switch; a sqlite store
    # needs the full mlflow package, which pins an older pyarrow than stoker's.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri((tmp_path / "mlruns").as_uri())
    mlflow.set_experiment("stoker-test")
    stoker_spark.autolog()
    yield mlflow.MlflowClient()
    stoker_spark.autolog(disable=True)
    mlflow.set_tracking_uri(None)


def test_autolog_logs_params_rounds_summary_plot_and_model(spark, tracking, tmp_path):
    from pyspark.sql import functions as F

    data = customers(spark, 1200, 31).withColumn("is_val", F.rand(3) < 0.25).cache()
    est = StokerEstimator(
        featureCols=["x", "y"],
        labelCol="label",
        model={"type": "mlp", "hidden": [16, 16], "num_classes": 2},
        learningRate=0.02,
        rounds=3,
        seed=5,
        validationIndicatorCol="is_val",
        evalMetric="auc",
    )
    with mlflow.start_run() as run:
        model = est.fit(data)
    run_id = run.info.run_id
    logged = tracking.get_run(run_id)
    assert logged.data.params["rounds"] == "3"
    assert logged.data.params["evalMetric"] == "auc"
    assert logged.data.tags["stoker.stop_reason"] == "completed all 3 rounds"
    # One value per round and metric, at step = round, equal to the history's.
    history = model.history
    for key, pick in [
        ("train_loss", lambda h: h["loss"]),
        ("val_auc", lambda h: h["validation"]["auc"]),
        ("val_loss", lambda h: h["validation"]["loss"]),
    ]:
        values = sorted(tracking.get_metric_history(run_id, key), key=lambda m: m.step)
        assert [m.step for m in values] == [0, 1, 2], key
        assert [m.value for m in values] == pytest.approx([pick(h) for h in history]), key
    assert logged.data.metrics["best_round"] == model.summary["best_round"]
    artifacts = {a.path for a in tracking.list_artifacts(run_id)}
    assert {"history.png", "history.json", "summary.json", "model"} <= artifacts
    files = {a.path for a in tracking.list_artifacts(run_id, "model")}
    assert files == {"model/state.safetensors", "model/model.json", "model/model.pt"}
    # The logged TorchScript archive predicts what transform predicts.
    local = tracking.download_artifacts(run_id, "model", str(tmp_path / "dl"))
    net = torch.jit.load(io.BytesIO(Path(local, "model.pt").read_bytes()))
    rows = data.orderBy("id").limit(20).collect()
    x = torch.tensor([[r.x, r.y] for r in rows], dtype=torch.float32)
    ours = torch.softmax(net(x), dim=1)[:, 1].detach().numpy()
    theirs = [
        r.probability[1]
        for r in model.transform(data.orderBy("id").limit(20)).select("probability").collect()
    ]
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert json.loads(Path(local, "model.json").read_text())["hidden"] == [16, 16]

    # Without an active run the fit opens and closes one of its own.
    before = len(tracking.search_runs([run.info.experiment_id]))
    StokerEstimator(featureCols=["x", "y"], rounds=1, seed=5).fit(data)
    runs = tracking.search_runs([run.info.experiment_id])
    assert len(runs) == before + 1
    assert runs[0].info.status == "FINISHED"
    assert mlflow.active_run() is None
