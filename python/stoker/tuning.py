"""PySpark's face of the hyperparameter search: `StokerTuner` / `StokerTunerModel`
wrap the JVM's dev.stoker.spark.StokerTuner (docs/tuning.md), so the search runs
on the driver JVM exactly as it does for Scala users: one cached copy of the data
on each node server, trials as jobs training on it at once, ASHA stopping the low
performers early.

    tuned = StokerTuner(
        estimator=StokerEstimator(featureCols=["x", "y"], labelCol="label"),
        space={"learningRate": {"log_uniform": [1e-4, 0.1]},
               "model.hidden": {"choice": [[32], [64, 64]]}},
        numTrials=16, maxRounds=9,
    ).fit(train)
    tuned.trials.show()
    tuned.plot_trials("trials.png")
"""

from __future__ import annotations

import json
import os
from typing import Any

from pyspark import keyword_only
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.util import JavaMLWritable
from pyspark.ml.wrapper import JavaEstimator, JavaModel
from pyspark.sql import DataFrame

from stoker.progress import ProgressBar

__all__ = ["StokerTuner", "StokerTunerModel"]


def _space_converter(value: Any) -> str:
    """A space as a dict (param -> spec), a list of configurations, or JSON text."""
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return TypeConverters.toString(value)


_S, _I, _F = TypeConverters.toString, TypeConverters.toInt, TypeConverters.toFloat

# The JVM's StokerTunerParams, by name: doc, converter, default.
_PARAMS: dict[str, tuple[str, Any, Any]] = {
    "space": ("search space: dict or JSON (docs/tuning.md)", _space_converter, ""),
    "numTrials": ("configurations drawn from a random space", _I, 16),
    "maxRounds": ("rounds of the trials that go furthest", _I, 9),
    "minRounds": ("ASHA: rounds before the first comparison", _I, 1),
    "reductionFactor": ("ASHA: eta, each rung keeps its top 1/eta", _I, 3),
    "scheduler": ("asha, or none (every trial trains maxRounds)", _S, "asha"),
    "parallelism": ("trials training at once", _I, 2),
    "timeoutSeconds": ("wall-time budget; 0: none", _F, 0.0),
    "tunerSeed": ("seed of the random space's draws", _I, 0),
    "tunerMetric": ("validation metric trials are ranked by; empty: evalMetric or loss", _S, ""),
}


class _TunerParams(Params):
    _NAMES = tuple(_PARAMS)

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(**{name: d for name, (_, _, d) in _PARAMS.items()})


for _name, (_doc, _converter, _) in _PARAMS.items():
    setattr(_TunerParams, _name, Param(Params._dummy(), _name, _doc, typeConverter=_converter))


class StokerTuner(JavaEstimator, _TunerParams, JavaMLWritable):
    """Hyperparameter search over a `StokerEstimator` on the node servers
    (dev.stoker.spark.StokerTuner; docs/tuning.md). `estimator` is the estimator
    whose params the trials start from; `space` names what they vary."""

    @keyword_only
    def __init__(self, *, estimator: Any = None, **kwargs: Any) -> None:
        super().__init__()
        self._java_obj = self._new_java_obj("dev.stoker.spark.StokerTuner", self.uid)
        self._estimator = estimator
        self._set_params(**{k: v for k, v in self._input_kwargs.items() if k != "estimator"})

    def _set_params(self, **kwargs: Any) -> StokerTuner:
        # The estimator's rules: unknown names suggest the closest, the JVM's
        # validators check each value now (numTrials=0 fails here).
        from stoker.spark import _StokerParams

        return _StokerParams._set_params(self, **kwargs)

    def _checked_set(self, **kwargs: Any) -> StokerTuner:
        from stoker.spark import _StokerParams

        return _StokerParams._checked_set(self, **kwargs)

    @keyword_only
    def setParams(self, **kwargs: Any) -> StokerTuner:
        return self._set_params(**self._input_kwargs)

    def setEstimator(self, estimator: Any) -> StokerTuner:
        self._estimator = estimator
        return self

    def getEstimator(self) -> Any:
        """The estimator (a loaded tuner's comes back from the JVM)."""
        from stoker.spark import StokerEstimator

        if getattr(self, "_estimator", None) is None and self._java_obj is not None:
            java = self._java_obj
            self._estimator = StokerEstimator._from_java(java.getEstimator())
        return self._estimator

    def copy(self, extra: Any = None) -> StokerTuner:
        """A copy with its own copy of the estimator (as CrossValidator copies its)."""
        that = super().copy(extra)
        estimator = self.getEstimator()
        if estimator is not None:
            that._estimator = estimator.copy()
        return that

    def _transfer_params_to_java(self) -> None:
        super()._transfer_params_to_java()
        estimator = getattr(self, "_estimator", None)
        if estimator is not None:
            estimator._transfer_params_to_java()
            self._java_obj.setEstimator(estimator._java_obj)

    def _fit_java(self, dataset: DataFrame) -> Any:
        from stoker.spark import _stoker_errors

        with (
            ProgressBar(self.uid, 0, what="stoker tuner", unit="trial"),
            _stoker_errors(),
        ):
            return super()._fit_java(dataset)

    def _create_model(self, java_model: Any) -> StokerTunerModel:
        return StokerTunerModel(java_model)

    @classmethod
    def read(cls) -> Any:
        from stoker.spark import _Reader

        return _Reader(cls)

    @classmethod
    def load(cls, path: str) -> StokerTuner:
        return cls.read().load(path)


class StokerTunerModel(JavaModel, _TunerParams, JavaMLWritable):
    """What a search found (dev.stoker.spark.StokerTunerModel): `best_model`
    (`transform` predicts with it), `trials` (one row per trial), and each
    trial's rounds (`trials_history`, `plot_trials`)."""

    def __init__(self, java_model: Any = None) -> None:
        super().__init__(java_model)
        if java_model is not None:
            self._transfer_params_from_java()

    @property
    def best_model(self) -> Any:
        from stoker.spark import StokerModel

        return StokerModel(self._java_obj.bestModel())

    @property
    def trials(self) -> DataFrame:
        """trial, params (param -> value), status, rung, rounds, metric, rung_metrics,
        seconds, best."""
        from pyspark.sql import SparkSession

        return DataFrame(self._java_obj.trials(), SparkSession.active())

    @property
    def best_params(self) -> dict[str, str]:
        return dict(self._java_obj.bestParams())

    def trials_history(self) -> list[dict]:
        """The trials as `trials` shows them, each with `history`: its rounds as
        `StokerModel.history` gives them (validation metrics at the rungs)."""
        return json.loads(self._java_obj.trialsJson())

    def plot_trials(self, path: str | os.PathLike) -> str:
        """Writes a PNG (matplotlib) of the validation metric against rounds, one
        line per trial, the rungs marked and the best trial drawn bold; returns its
        path."""
        from matplotlib.figure import Figure

        metric = self.best_model.summary.get("eval_metric") or "loss"
        fig = Figure(figsize=(7, 4))
        ax = fig.subplots()
        for trial in self.trials_history():
            points = [
                (h["round"] + 1, (h.get("validation") or {}).get(metric))
                for h in trial["history"]
                if (h.get("validation") or {}).get(metric) is not None
            ]
            if not points:
                continue
            rounds, values = zip(*points, strict=True)
            if trial["best"]:
                ax.plot(
                    rounds,
                    values,
                    marker="o",
                    linewidth=2.5,
                    color="C3",
                    zorder=3,
                    label=f"best: trial {trial['trial']}",
                )
            else:
                ax.plot(rounds, values, marker=".", linewidth=1, alpha=0.5, color="C0")
        ax.set_xlabel("round")
        ax.set_ylabel(f"validation {metric}")
        ax.set_title(f"stoker tuner: {len(self.trials_history())} trials")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        return os.fspath(path)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        from stoker.spark import _stoker_errors

        with _stoker_errors():
            return super()._transform(dataset)

    @classmethod
    def read(cls) -> Any:
        from stoker.spark import _Reader

        return _Reader(cls)

    @classmethod
    def load(cls, path: str) -> StokerTunerModel:
        return cls.read().load(path)
