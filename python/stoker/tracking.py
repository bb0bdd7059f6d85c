"""MLflow logging of stoker fits: `stoker.spark.autolog()`.

With autolog on, every `StokerEstimator.fit` logs to MLflow's active run (or a
run of its own when none is active): the estimator's params, per-round
metrics as the rounds finish (training loss, validation metrics, learning
rate, rows/s; step = round), the fit's summary (best round, why it stopped),
the history plot and JSON, and the model: its state (safetensors) with its
spec, and the TorchScript archive that `torch.jit.load` reads.

The training itself runs on the JVM; this module only reads what the fit
reports (`Progress` while it runs, `history` and `summary` after), so a
Scala fit and a PySpark fit train alike and only the logging is Python's.
"""

from __future__ import annotations

import json
import math
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

_settings: dict[str, Any] | None = None
_lock = threading.Lock()


def autolog(*, log_models: bool = True, disable: bool = False) -> None:
    """Logs every later `StokerEstimator.fit` to MLflow (mlflow must be
    installed; `mlflow-skinny` suffices). `log_models=False` leaves out the
    model artifacts; `disable=True` turns autolog off."""
    global _settings
    if disable:
        _settings = None
        return
    import mlflow  # noqa: F401  (fail now, not at the first fit, if it is missing)

    _settings = {"log_models": log_models}


def enabled() -> bool:
    return _settings is not None


def _round_metrics(h: dict) -> dict[str, float]:
    out = {"train_loss": h["loss"], "train_loss_first_epoch": h["loss_first"]}
    if h.get("seconds"):
        out["rows_per_second"] = h["samples"] / h["seconds"]
        out["round_seconds"] = h["seconds"]
    if h.get("learning_rate") is not None:
        out["learning_rate"] = h["learning_rate"]
    for name, value in (h.get("validation") or {}).items():
        if value is not None:
            out[f"val_{name}"] = value
    return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(float(v))}


class FitLog:
    """One fit's logging: opened before `fit`, fed rounds while it runs,
    finished with the model."""

    def __init__(self, estimator: Any) -> None:
        import mlflow

        self._mlflow = mlflow
        self._own_run = mlflow.active_run() is None
        self.run = mlflow.start_run() if self._own_run else mlflow.active_run()
        self._client = mlflow.MlflowClient()
        self._logged: set[int] = set()
        params = {
            p.name: estimator.getOrDefault(p) for p in estimator.params if estimator.isDefined(p)
        }
        mlflow.log_params(
            {k: json.dumps(v) if isinstance(v, list) else v for k, v in params.items()}
        )

    def round(self, stats: dict) -> None:
        """Logs one finished round (from the progress poller or the history). By run
        id through a client: MLflow's active run is the fitting thread's, and the
        poller runs on its own."""
        from mlflow.entities import Metric

        with _lock:
            r = stats["round"]
            if r in self._logged:
                return
            self._logged.add(r)
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, r) for k, v in _round_metrics(stats).items()]
        self._client.log_batch(self.run.info.run_id, metrics=metrics)

    def finish(self, model: Any) -> None:
        for h in model.history:
            self.round(h)
        summary = model.summary
        mlflow = self._mlflow
        if summary.get("best_round") is not None:
            mlflow.log_metric("best_round", summary["best_round"])
            if summary.get("best_value") is not None:
                mlflow.log_metric(f"best_val_{summary['eval_metric']}", summary["best_value"])
        mlflow.set_tags(
            {
                "stoker.stop_reason": summary["stop_reason"],
                "stoker.stopped_early": str(summary["stopped_early"]).lower(),
                "stoker.task": model.task,
            }
        )
        with tempfile.TemporaryDirectory(prefix="stoker-mlflow-") as tmp:
            d = Path(tmp)
            (d / "history.json").write_text(json.dumps(model.history, indent=1))
            (d / "summary.json").write_text(json.dumps(summary, indent=1))
            model.plot_history(d / "history.png")
            for name in ("history.json", "summary.json", "history.png"):
                mlflow.log_artifact(str(d / name))
            if _settings is not None and _settings["log_models"]:
                m = d / "model"
                m.mkdir()
                (m / "state.safetensors").write_bytes(model.state)
                (m / "model.json").write_text(model.getOrDefault("model"))
                (m / "model.pt").write_bytes(model.to_torchscript())
                mlflow.log_artifacts(str(m), artifact_path="model")
        self.close()

    def close(self, failed: bool = False) -> None:
        if self._own_run:
            self._mlflow.end_run(status="FAILED" if failed else "FINISHED")
            self._own_run = False
