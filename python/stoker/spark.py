"""PySpark's face of stoker: `StokerEstimator` / `StokerModel` wrap the JVM
classes (dev.stoker.spark), so Python uses the same training loop and the
same fast JVM data path as Scala and Java users; `configure` adds what Spark
needs to a SparkSession builder.

    spark = stoker.spark.configure(SparkSession.builder).getOrCreate()
    model = StokerEstimator(featureCols=["x", "y"], labelCol="label",
                            model={"type": "mlp", "hidden": [64], "num_classes": 2},
                            rounds=10).fit(train)
    model.transform(test)
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import types
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pyspark import keyword_only
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.util import JavaMLReadable, JavaMLReader, JavaMLWritable
from pyspark.ml.wrapper import JavaEstimator, JavaModel
from pyspark.sql import SparkSession

from stoker import _native, tracking
from stoker.progress import ProgressBar
from stoker.server import find_binary

__all__ = [
    "StokerEstimator",
    "StokerModel",
    "StokerTuner",
    "StokerTunerModel",
    "configure",
    "jar_path",
]

_JAVA_PACKAGE = "dev.stoker.spark"


def jar_path() -> str:
    """stoker-spark.jar: the one installed with this package, or a development build."""
    here = Path(__file__).resolve().parent
    for candidate in (
        os.environ.get("STOKER_JAR"),
        here / "jars" / "stoker-spark.jar",
        here.parent.parent / "jvm-shim" / "target" / "stoker-spark.jar",
    ):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    raise FileNotFoundError(
        "stoker-spark.jar not found: set STOKER_JAR or build it with `make jvm`"
    )


# A training task returns its trained state (parameters and optimizer state: 115 MB
# for 10M parameters with Adam). Spark sends task results over 1 MiB through the block
# manager, which the driver then fetches: in local mode that is a loopback transfer and
# several copies per state per round. Up to the RPC message limit (128 MiB by default;
# Spark takes the smaller of the two) the result travels with the task's status
# instead (docs/spark.md, "Tuning").
DIRECT_RESULT_KEY = "spark.task.maxDirectResultSize"
DIRECT_RESULT_SIZE = "128m"


CA_CERT_KEY = "spark.stoker.server.caCert"


def _ca_cert_setting(ca_cert: str | os.PathLike | bytes) -> str:
    """The `spark.stoker.server.caCert` value for `ca_cert`: PEM text (str or
    bytes) as it is, a `pathlib.Path` as a `file:` URI (a local file of the
    driver), any other str as a path on the Hadoop file system (`hdfs://`,
    `s3a://`, `file:`; no scheme: `fs.defaultFS`)."""
    if isinstance(ca_cert, bytes):
        return ca_cert.decode("ascii")
    if isinstance(ca_cert, os.PathLike):
        return Path(ca_cert).resolve().as_uri()
    if isinstance(ca_cert, str):
        return ca_cert
    raise TypeError(f"ca_cert must be PEM text, a path or a URI; got {type(ca_cert).__name__}")


def autolog(*, log_models: bool = True, disable: bool = False) -> None:
    """Logs every later `StokerEstimator.fit` to MLflow's active run (or a run of its
    own): params, per-round metrics as rounds finish, the summary, the history plot
    and the model (state + spec, and TorchScript). See stoker/tracking.py."""
    tracking.autolog(log_models=log_models, disable=disable)


def configure(
    builder: SparkSession.Builder,
    *,
    server_bin: str | None = None,
    device: str | None = None,
    ca_cert: str | os.PathLike | bytes | None = None,
) -> SparkSession.Builder:
    """Adds stoker to a SparkSession builder and returns it: the bundled jar on
    `spark.jars` (driver and executors), the `stoker_predict` SQL extension, the
    server binary (and device) that each node's auto-started server uses, for
    executor JVMs and Python workers alike, and, unless the builder sets it,
    `spark.task.maxDirectResultSize` of 128m, so trained states come back with
    their tasks' status instead of through the block manager.

    `ca_cert` sets `spark.stoker.server.caCert`, the CA certificate that
    `grpc+tls://` servers at a fixed address are checked against (docs/security.md):
    PEM text, a `pathlib.Path` on the driver, or a path or URI on the Hadoop file
    system (`hdfs://`, `s3a://`, `file:`). Without it, the operating system's root
    certificates."""
    options = getattr(builder, "_options", {})

    def append(key: str, value: str) -> str:
        existing = options.get(key)
        return f"{existing},{value}" if existing else value

    binary = server_bin or find_binary()
    builder = builder.config("spark.jars", append("spark.jars", jar_path()))
    builder = builder.config(
        "spark.sql.extensions",
        append("spark.sql.extensions", _JAVA_PACKAGE + ".sql.StokerExtensions"),
    )
    builder = builder.config("spark.stoker.server.bin", binary)
    builder = builder.config("spark.executorEnv.STOKER_BIN", binary)
    if device is not None:
        builder = builder.config("spark.stoker.server.device", device)
        builder = builder.config("spark.executorEnv.STOKER_DEVICE", device)
    if ca_cert is not None:
        builder = builder.config(CA_CERT_KEY, _ca_cert_setting(ca_cert))
    if DIRECT_RESULT_KEY not in options:
        builder = builder.config(DIRECT_RESULT_KEY, DIRECT_RESULT_SIZE)
    return builder


# --- params: the JVM's StokerParams, by name ---------------------------------


def _param(name: str, doc: str, converter: Any) -> Param:
    return Param(Params._dummy(), name, doc, typeConverter=converter)


_S, _I, _F, _B = (
    TypeConverters.toString,
    TypeConverters.toInt,
    TypeConverters.toFloat,
    TypeConverters.toBoolean,
)


def _model_converter(value: Any) -> str:
    """A spec as a dict or JSON text, or a TorchScript path."""
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return TypeConverters.toString(value)


# Every param once: name -> (doc, type converter, default). The class attributes,
# `_NAMES`, the defaults and getX / setX all come from here.
_PARAMS: dict[str, tuple[str, Any, Any]] = {
    "featuresCol": ("features column: a Vector or an array of numbers", _S, "features"),
    "featureCols": (
        "numeric feature columns (instead of featuresCol)",
        TypeConverters.toListString,
        [],
    ),
    "labelCol": ("label column", _S, "label"),
    "predictionCol": ("prediction column", _S, "prediction"),
    "probabilityCol": ("class probability column; empty for none", _S, "probability"),
    "model": (
        "built-in spec (dict or JSON) or TorchScript path",
        _model_converter,
        '{"type": "mlp", "hidden": [64, 64], "num_classes": 2}',
    ),
    "loss": ("mse, cross_entropy or bce; empty: from the model", _S, ""),
    "optimizer": ("sgd, adam or adamw", _S, "adam"),
    "learningRate": ("learning rate", _F, 0.001),
    "momentum": ("sgd momentum", _F, 0.0),
    "weightDecay": ("weight decay", _F, 0.0),
    "batchSize": ("training mini-batch size", _I, 256),
    "localEpochs": ("epochs per partition per round", _I, 1),
    "rounds": ("averaging rounds", _I, 10),
    "averageOptimizerState": ("average optimizer state with the weights", _B, True),
    "seed": ("seed of weights, shuffling and dropout", _I, 42),
    "checkpointDir": ("per-round checkpoints; fit resumes there", _S, ""),
    "serverAddress": ("empty: auto-started server per node", _S, ""),
    "device": ("auto, cpu, cuda or cuda:N", _S, "auto"),
    "inferenceBatchRows": ("rows per Arrow batch in transform", _I, 65536),
    "objective": ("regression, classification or auto (from loss, spec, label type)", _S, "auto"),
    "validationIndicatorCol": ("boolean column: true marks a validation row", _S, ""),
    "validationFraction": ("fraction held out for validation (seeded split); 0: none", _F, 0.0),
    "evalMetric": (
        "validation metric for early stopping: loss, rmse, mse, mae, r2, logloss, accuracy, auc",
        _S,
        "",
    ),
    # No default: unset means no early stopping (the JVM's param has none either).
    "earlyStoppingRounds": ("rounds without improvement before stopping", _I, None),
    "earlyStoppingMinDelta": ("smallest change that counts as an improvement", _F, 0.0),
    "outerOptimizer": ("none (plain averaging) or nesterov (DiLoCo's outer step)", _S, "none"),
    "outerLearningRate": ("outer optimizer step size", _F, 0.7),
    "outerMomentum": ("outer optimizer momentum", _F, 0.9),
    "lrSchedule": ("constant, step or cosine, across rounds and their epochs", _S, "constant"),
    "warmupRounds": ("rounds of linear warmup", _F, 0.0),
    "lrStepRounds": ("step schedule: rounds between decays", _I, 1),
    "lrGamma": ("step schedule: factor at each decay", _F, 0.5),
    "minLearningRate": ("cosine schedule: rate at the end", _F, 0.0),
    "classWeights": (
        "training-loss weight per class (imbalanced labels)",
        TypeConverters.toListFloat,
        [],
    ),
}


class _StokerParams(Params):
    """The JVM's StokerParams, by name; the Param attributes are set from `_PARAMS`
    below the class."""

    _NAMES = tuple(_PARAMS)

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(**{name: d for name, (_, _, d) in _PARAMS.items() if d is not None})

    def _set_params(self, **kwargs: Any) -> Any:
        unknown = set(kwargs) - set(self._NAMES)
        if unknown:
            raise TypeError(_unknown_params(sorted(unknown), self._NAMES))
        return self._checked_set(**{k: v for k, v in kwargs.items() if v is not None})

    def _checked_set(self, **kwargs: Any) -> Any:
        """Sets params after the JVM's validators accept each value, so a bad value
        (`rounds=0`) fails here, with the JVM's message naming the valid range, not
        later at `fit`: one set of rules, on the JVM."""
        self._set(**kwargs)
        java = getattr(self, "_java_obj", None)
        if java is not None:
            for name in kwargs:
                param = self.getParam(name)
                with _stoker_errors():
                    # Building the JVM's ParamPair runs the param's validator.
                    self._make_java_param_pair(param, self._paramMap[param])
        return self


def _unknown_params(unknown: list[str], names: Iterable[str]) -> str:
    """Names the unknown params, each with the closest param when one is near
    (`epochs` -> `localEpochs`, `learning_rate` -> `learningRate`), and lists
    the params there are."""
    import difflib

    by_key = {n.lower().replace("_", ""): n for n in names}
    parts = []
    for name in unknown:
        key = name.lower().replace("_", "")
        close = [by_key[k] for k in difflib.get_close_matches(key, by_key, n=1, cutoff=0.6)]
        close = close or [n for k, n in by_key.items() if key and key in k]
        parts.append(f"'{name}' (did you mean '{close[0]}'?)" if close else f"'{name}'")
    return f"unknown stoker params: {', '.join(parts)}; the params are: {', '.join(sorted(names))}"


def _accessors(name: str) -> tuple[Any, Any]:
    def getter(self: _StokerParams) -> Any:
        param = self.getParam(name)
        # A param without a default (earlyStoppingRounds) reads as None when unset.
        return self.getOrDefault(param) if self.isDefined(param) else None

    def setter(self: Any, value: Any) -> Any:
        return self._checked_set(**{name: value})

    getter.__doc__ = f"The value of `{name}` (or its default)."
    setter.__doc__ = f"Sets `{name}`; returns the stage."
    return getter, setter


# Each param as a class attribute, with getX / setX as Spark's own Python stages have.
for _name, (_doc, _converter, _) in _PARAMS.items():
    setattr(_StokerParams, _name, _param(_name, _doc, _converter))
    _get, _set = _accessors(_name)
    _cap = _name[0].upper() + _name[1:]
    setattr(_StokerParams, f"get{_cap}", _get)
    setattr(_StokerParams, f"set{_cap}", _set)


class _Reader(JavaMLReader):
    @classmethod
    def _java_loader_class(cls, clazz: type) -> str:
        return f"{_JAVA_PACKAGE}.{clazz.__name__}"


class _Readable(JavaMLReadable):
    @classmethod
    def read(cls) -> JavaMLReader:
        return _Reader(cls)


class StokerEstimator(JavaEstimator, _StokerParams, _Readable, JavaMLWritable):
    """Trains a network on a DataFrame with synchronous local SGD on each node's
    stoker server, averaging weights and optimizer state every round (the JVM's
    dev.stoker.spark.StokerEstimator; docs/spark.md lists every param).

    `fit` shows a progress bar (rounds, loss, rows/s) on an interactive terminal,
    or with `STOKER_PROGRESS=1`; set `STOKER_PROGRESS=0` to silence it.
    """

    @keyword_only
    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self._java_obj = self._new_java_obj(f"{_JAVA_PACKAGE}.StokerEstimator", self.uid)
        self._set_params(**self._input_kwargs)

    @keyword_only
    def setParams(self, **kwargs: Any) -> StokerEstimator:
        return self._set_params(**self._input_kwargs)

    def _create_model(self, java_model: Any) -> StokerModel:
        return StokerModel(java_model)

    def feed(self, dataset: Any) -> int:
        """Sends every partition to its node's server cache, converted as `fit` does,
        without training (a warm-up, or a measurement of the data path); returns the
        rows sent."""
        self._transfer_params_to_java()
        with _stoker_errors():
            return self._java_obj.feed(dataset._jdf)

    def _fit_java(self, dataset: Any) -> Any:
        on_round = getattr(self, "_on_round", None)
        with (
            ProgressBar(self.uid, self.getOrDefault(self.rounds), on_round=on_round),
            _stoker_errors(),
        ):
            return super()._fit_java(dataset)

    def _fit(self, dataset: Any) -> StokerModel:
        # With stoker.spark.autolog() on, the fit logs to MLflow (stoker/tracking.py):
        # rounds as the progress poller sees them, the rest once the model is back.
        if not tracking.enabled():
            return super()._fit(dataset)
        log = tracking.FitLog(self)
        self._on_round = log.round
        try:
            model = super()._fit(dataset)
        except BaseException:
            log.close(failed=True)
            raise
        finally:
            self._on_round = None
        log.finish(model)
        return model


class StokerModel(JavaModel, _StokerParams, _Readable, JavaMLWritable):
    """A trained stoker network (dev.stoker.spark.StokerModel): `transform`
    appends `prediction` (and `probability` for classifiers)."""

    def __init__(self, java_model: Any = None) -> None:
        super().__init__(java_model)
        if java_model is not None:
            self._transfer_params_from_java()

    def _transform(self, dataset: Any) -> Any:
        with _stoker_errors():
            return super()._transform(dataset)

    @property
    def history(self) -> list[dict]:
        """Per round: round, loss, loss_first, samples, partitions, seconds,
        train_seconds and, with a validation set, `validation`: the averaged
        state's metrics on it (loss and rmse/mse/mae/r2 or logloss/accuracy/auc;
        an undefined one is None)."""
        return json.loads(self._java_obj.historyJson())

    @property
    def summary(self) -> dict:
        """How the fit ended: `eval_metric`, `best_round` (with early stopping the
        round whose state this model is), `best_value`, `rounds`, `stopped_early`
        and `stop_reason`."""
        return json.loads(self._java_obj.summaryJson())

    @property
    def state(self) -> bytes:
        """The trained state: safetensors bytes (`safetensors.torch.load`)."""
        return bytes(self._java_obj.getState())

    @property
    def task(self) -> str:
        return self._java_obj.task()

    def with_state(self, state: bytes) -> StokerModel:
        """This model with another state of the same network (a checkpoint's
        `round-00004.safetensors`, say)."""
        with _stoker_errors():
            return StokerModel(self._java_obj.withState(bytearray(state)))

    def plot_history(self, path: str | os.PathLike) -> str:
        """Writes a PNG of the history (matplotlib); returns its path: training and
        validation loss per round and, when the fit followed another validation
        metric, that metric beside it, the best round marked."""
        # A Figure without pyplot: no global backend switch, safe in notebooks.
        from matplotlib.figure import Figure

        history = self.history
        summary = self.summary
        metric = summary.get("eval_metric") or ""
        validated = any(h.get("validation") for h in history)
        other = metric not in ("", "loss") and validated
        fig = Figure(figsize=(10 if other else 6, 3.5))
        axes = fig.subplots(1, 2 if other else 1, squeeze=False)[0]
        rounds = [h["round"] + 1 for h in history]

        def values(key: str) -> list[float]:
            out = []
            for h in history:
                v = (h.get("validation") or {}).get(key)
                out.append(float("nan") if v is None else v)
            return out

        ax = axes[0]
        ax.plot(
            rounds, [h["loss"] for h in history], marker="o", label="training loss (last epoch)"
        )
        if validated:
            ax.plot(rounds, values("loss"), marker="s", label="validation loss")
        else:
            ax.plot(
                rounds,
                [h["loss_first"] for h in history],
                marker=".",
                linestyle="--",
                label="training loss (first epoch)",
                alpha=0.6,
            )
        ax.set_ylabel("loss")
        if other:
            axes[1].plot(
                rounds, values(metric), marker="s", color="C1", label=f"validation {metric}"
            )
            axes[1].set_ylabel(metric)
        best = summary.get("best_round")
        for a in axes:
            if best is not None and validated:
                a.axvline(best + 1, color="grey", linestyle=":", label=f"best round ({best + 1})")
            a.set_xlabel("round")
            a.grid(alpha=0.3)
            a.legend()
        title = "stoker training history"
        if summary.get("stopped_early"):
            title += f" (stopped early after round {len(history)})"
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        return os.fspath(path)

    def to_torchscript(self) -> bytes:
        """The trained model as a TorchScript archive (`torch.jit.load`), in eval
        mode, predicting what `transform` predicts (built-in specs give logits)."""
        with _stoker_errors():
            return bytes(self._java_obj.toTorchScript())

    def export_torchscript(self, path: str | os.PathLike) -> None:
        """Writes `to_torchscript()` to `path` (any Hadoop file system)."""
        with _stoker_errors():
            self._java_obj.exportTorchScript(os.fspath(path))

    def unload(self) -> int:
        """Drops the model from every server it was registered on (by `transform`,
        `stoker_predict` or `register`); a later `transform` registers it again.
        Returns the servers reached."""
        with _stoker_errors():
            return self._java_obj.unload()

    def register(self, name: str) -> int:
        """Registers the model under `name` for SQL (`stoker_predict(name, ...)`) in
        this application; returns its version."""
        with _stoker_errors():
            return self._java_obj.register(name)


# --- errors -----------------------------------------------------------------

_JAVA_ERRORS = {
    "dev.stoker.InvalidInputException": _native.InvalidInputError,
    "dev.stoker.NotFoundException": _native.NotFoundError,
    "dev.stoker.CacheMissException": _native.CacheMissError,
    "dev.stoker.ResourceExhaustedException": _native.ResourceExhaustedError,
    "dev.stoker.UnauthenticatedException": _native.UnauthenticatedError,
    "dev.stoker.ServerUnavailableException": _native.ServerUnavailableError,
    "dev.stoker.StokerException": _native.StokerError,
}


@contextlib.contextmanager
def _stoker_errors() -> Iterator[None]:
    """Raises the `stoker.StokerError` subclass of a JVM stoker exception (found
    anywhere in the cause chain, e.g. inside a SparkException), with its message."""
    from py4j.protocol import Py4JJavaError

    try:
        yield
    except Py4JJavaError as e:
        cause = e.java_exception
        while cause is not None:
            error = _JAVA_ERRORS.get(cause.getClass().getName())
            if error is not None:
                raise error(cause.getMessage()) from e
            cause = cause.getCause()
        raise


# --- persistence of pipelines --------------------------------------------------
# PySpark loads each stage of a saved PipelineModel by importing the Python module
# named after its Java class (`dev.stoker.spark`). Alias that name to this module
# so saved pipelines with stoker stages load in Python too.
def _alias_java_package() -> None:
    parts = _JAVA_PACKAGE.split(".")
    for i in range(1, len(parts)):
        name = ".".join(parts[:i])
        if name not in sys.modules:
            sys.modules[name] = types.ModuleType(name)
    sys.modules.setdefault(_JAVA_PACKAGE, sys.modules[__name__])


_alias_java_package()

# The search's stages live in stoker/tuning.py; they are reached here too, as saved
# pipelines look for every dev.stoker.spark stage in this module.
from stoker.tuning import StokerTuner, StokerTunerModel

# The matrix stages live in stoker/linalg.py, which needs this module first; saved
# pipelines find them here (dev.stoker.spark) through the module's __getattr__.
_LINALG_STAGES = (
    "StokerPCA",
    "StokerPCAModel",
    "StokerLinearRegression",
    "StokerLinearRegressionModel",
)


def __getattr__(name: str) -> Any:
    if name in _LINALG_STAGES:
        from stoker import linalg

        return getattr(linalg, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
