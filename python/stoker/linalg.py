"""Matrix work on the stoker servers from PySpark (docs/linalg.md): each partition's
moments (mean, centered scatter) or products are computed where the partition is
cached, on the server's device; the driver combines them in partition order with
native code and solves the small dense problem on its node's server. The JVM's
dev.stoker.spark classes do the work; this module wraps them.

    from stoker.linalg import StokerPCA, StokerLinearRegression, covariance, svd

    pca = StokerPCA(inputCol="features", k=8).fit(df)      # pc, explained_variance
    lr = StokerLinearRegression(featureCols=["a", "b"], labelCol="y").fit(df)
    cov = covariance(df, ["a", "b", "c"])                  # numpy (3, 3)
    s, v = svd(df, "features", k=4)                        # singular values, (n, 4)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pyspark import keyword_only
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.util import JavaMLWritable
from pyspark.ml.wrapper import JavaEstimator, JavaModel
from pyspark.sql import DataFrame

__all__ = [
    "StokerLinearRegression",
    "StokerLinearRegressionModel",
    "StokerPCA",
    "StokerPCAModel",
    "covariance",
    "gramian",
    "lstsq",
    "svd",
]

_S, _I, _F, _B = (
    TypeConverters.toString,
    TypeConverters.toInt,
    TypeConverters.toFloat,
    TypeConverters.toBoolean,
)
_L = TypeConverters.toListString

_MATRIX: dict[str, tuple[str, Any, Any]] = {
    "precision": ("float64 or float32: what the servers cache and compute in", _S, "float64"),
    "serverAddress": ("grpc://host:port, a per-host map, or empty (auto-started)", _S, ""),
}

_PCA: dict[str, tuple[str, Any, Any]] = {
    **_MATRIX,
    "inputCol": ("a Spark ML Vector or array column (or set inputCols)", _S, "features"),
    "inputCols": ("numeric input columns, instead of inputCol", _L, []),
    "outputCol": ("the projection onto the components (a Vector)", _S, "pca_features"),
    "k": ("number of principal components", _I, None),
    "method": ("auto, exact or randomized", _S, "auto"),
    "powerIterations": ("randomized: subspace iterations", _I, 4),
    "oversampling": ("randomized: extra basis vectors beyond k", _I, 10),
    "seed": ("randomized: the start basis's seed", _I, 0),
    "centerOutput": ("subtract the means before projecting (Spark ML does not)", _B, False),
}

_LSQ: dict[str, tuple[str, Any, Any]] = {
    **_MATRIX,
    "featuresCol": ("a Spark ML Vector or array column (or set featureCols)", _S, "features"),
    "featureCols": ("numeric feature columns, instead of featuresCol", _L, []),
    "labelCol": ("label column", _S, "label"),
    "predictionCol": ("prediction column", _S, "prediction"),
    "fitIntercept": ("fit an intercept (not penalized)", _B, True),
    "regParam": ("ridge penalty: (1/2n)|y - Xb - c|^2 + (reg/2)|b|^2", _F, 0.0),
}


def _params_class(name: str, table: dict[str, tuple[str, Any, Any]]) -> type:
    """A Params class with `table`'s params, getX / setX for each, and the
    estimator's rules for setting them (JVM-validated at set time)."""
    from stoker.spark import _accessors, _StokerParams

    def __init__(self: Any) -> None:
        Params.__init__(self)
        self._setDefault(**{n: d for n, (_, _, d) in table.items() if d is not None})

    cls = type(
        name,
        (Params,),
        {
            "_NAMES": tuple(table),
            "__init__": __init__,
            "_set_params": _StokerParams._set_params,
            "_checked_set": _StokerParams._checked_set,
        },
    )
    for param, (doc, converter, _) in table.items():
        setattr(cls, param, Param(Params._dummy(), param, doc, typeConverter=converter))
        get, put = _accessors(param)
        cap = param[0].upper() + param[1:]
        setattr(cls, f"get{cap}", get)
        setattr(cls, f"set{cap}", put)
    return cls


_PCAParams = _params_class("_PCAParams", _PCA)
_LeastSquaresParams = _params_class("_LeastSquaresParams", _LSQ)


def _readable(cls: type) -> type:
    from stoker.spark import _Reader

    cls.read = classmethod(lambda c: _Reader(c))  # type: ignore[attr-defined]
    cls.load = classmethod(lambda c, path: c.read().load(path))  # type: ignore[attr-defined]
    return cls


def _doubles(java_array: Any) -> np.ndarray:
    """A JVM double[] as a numpy array, in one py4j call: py4j hands a byte[] over
    whole, while list() on its proxy fetches element by element (3.5 s for a
    2,048 x 16 matrix here)."""
    from pyspark import SparkContext

    raw = SparkContext._jvm.dev.stoker.spark.MatrixJob.bytes(java_array)  # type: ignore[union-attr]
    return np.frombuffer(bytes(raw), dtype="<f8").copy()


def _matrix(java_matrix: Any) -> np.ndarray:
    """A Spark ML DenseMatrix (through py4j) as a numpy array."""
    rows, cols = java_matrix.numRows(), java_matrix.numCols()
    return _doubles(java_matrix.toArray()).reshape((cols, rows)).T.copy()


class _JavaStage:
    """Construction and fit shared by the two estimators."""

    _java_class = ""

    def _init_java(self, kwargs: dict[str, Any]) -> None:
        self._java_obj = self._new_java_obj(f"dev.stoker.spark.{self._java_class}", self.uid)
        self._set_params(**kwargs)

    def _fit_java(self, dataset: DataFrame) -> Any:
        from stoker.spark import _stoker_errors

        with _stoker_errors():
            return super()._fit_java(dataset)  # type: ignore[misc]


@_readable
class StokerPCA(_JavaStage, JavaEstimator, _PCAParams, JavaMLWritable):
    """Principal components on the servers (dev.stoker.spark.StokerPCA): Spark ML's
    PCA's components (up to sign: each component's largest entry is positive),
    explained variance and uncentered projection."""

    _java_class = "StokerPCA"

    @keyword_only
    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self._init_java(self._input_kwargs)

    @keyword_only
    def setParams(self, **kwargs: Any) -> StokerPCA:
        return self._set_params(**self._input_kwargs)

    def _create_model(self, java_model: Any) -> StokerPCAModel:
        return StokerPCAModel(java_model)


@_readable
class StokerPCAModel(JavaModel, _PCAParams, JavaMLWritable):
    """A fitted StokerPCA: `pc` (n, k), `explained_variance` (k,), `mean` (n,)."""

    def __init__(self, java_model: Any = None) -> None:
        super().__init__(java_model)
        if java_model is not None:
            self._transfer_params_from_java()

    @property
    def pc(self) -> np.ndarray:
        return _matrix(self._java_obj.pc())

    @property
    def explained_variance(self) -> np.ndarray:
        return _doubles(self._java_obj.explainedVariance().toArray())

    @property
    def mean(self) -> np.ndarray:
        return _doubles(self._java_obj.mean().toArray())


@_readable
class StokerLinearRegression(_JavaStage, JavaEstimator, _LeastSquaresParams, JavaMLWritable):
    """Ordinary or ridge least squares on the servers
    (dev.stoker.spark.StokerLinearRegression): Spark ML's
    LinearRegression(solver="normal") answers, the minimum-norm one when the
    data is rank deficient."""

    _java_class = "StokerLinearRegression"

    @keyword_only
    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self._init_java(self._input_kwargs)

    @keyword_only
    def setParams(self, **kwargs: Any) -> StokerLinearRegression:
        return self._set_params(**self._input_kwargs)

    def _create_model(self, java_model: Any) -> StokerLinearRegressionModel:
        return StokerLinearRegressionModel(java_model)


@_readable
class StokerLinearRegressionModel(JavaModel, _LeastSquaresParams, JavaMLWritable):
    """A fitted StokerLinearRegression: `coefficients`, `intercept`, and `summary`
    (rows, rank, rss, r2, coefficient_standard_errors: the coefficients' then the
    intercept's, empty where undefined)."""

    def __init__(self, java_model: Any = None) -> None:
        super().__init__(java_model)
        if java_model is not None:
            self._transfer_params_from_java()

    @property
    def coefficients(self) -> np.ndarray:
        return _doubles(self._java_obj.coefficients().toArray())

    @property
    def intercept(self) -> float:
        return float(self._java_obj.intercept())

    @property
    def summary(self) -> dict[str, Any]:
        s = self._java_obj.summary()
        return {
            "rows": int(s.rows()),
            "rank": int(s.rank()),
            "rss": float(s.rss()),
            "r2": float(s.r2()),
            "coefficient_standard_errors": _doubles(s.coefficientStandardErrors()),
        }


def _columns(columns: str | list[str]) -> Any:
    from pyspark import SparkContext

    names = [columns] if isinstance(columns, str) else list(columns)
    gateway = SparkContext._gateway
    array = gateway.new_array(gateway.jvm.java.lang.String, len(names))
    for i, name in enumerate(names):
        array[i] = name
    return array


def _linalg() -> Any:
    from pyspark import SparkContext

    return SparkContext._jvm.dev.stoker.spark.StokerLinalg


def _square(of: str, df: DataFrame, columns: str | list[str], precision: str, server: str):
    from stoker.spark import _stoker_errors

    with _stoker_errors():
        m = getattr(_linalg(), of)(df._jdf, _columns(columns), precision, server)
    return _matrix(m)


def gramian(
    df: DataFrame,
    columns: str | list[str],
    *,
    precision: str = "float64",
    server_address: str = "",
) -> np.ndarray:
    """AᵀA of numeric columns (or one vector / array column), as numpy (n, n)."""
    return _square("gramian", df, columns, precision, server_address)


def covariance(
    df: DataFrame,
    columns: str | list[str],
    *,
    precision: str = "float64",
    server_address: str = "",
) -> np.ndarray:
    """The sample covariance (numpy.cov of the columns, rowvar=False)."""
    return _square("covariance", df, columns, precision, server_address)


def svd(
    df: DataFrame,
    columns: str | list[str],
    k: int,
    *,
    method: str = "auto",
    precision: str = "float64",
    server_address: str = "",
) -> tuple[np.ndarray, np.ndarray]:
    """The k leading singular values (largest first) and right singular vectors
    (n, k) of A, as RowMatrix.computeSVD(k) without U."""
    from stoker.spark import _stoker_errors

    with _stoker_errors():
        pair = _linalg().svd(df._jdf, _columns(columns), k, precision, server_address, method)
    return _doubles(pair._1().toArray()), _matrix(pair._2())


def lstsq(
    df: DataFrame,
    features: str | list[str],
    label: str,
    *,
    intercept: bool = True,
    ridge: float = 0.0,
    precision: str = "float64",
    server_address: str = "",
) -> dict[str, Any]:
    """Least squares of `label` on `features`: coefficients, intercept, and the
    summary fields of StokerLinearRegressionModel."""
    names = [features] if isinstance(features, str) else list(features)
    vector = isinstance(features, str) and _is_vector(df, features)
    estimator = StokerLinearRegression(
        labelCol=label,
        fitIntercept=intercept,
        regParam=ridge,
        precision=precision,
        serverAddress=server_address,
    )
    if vector:
        estimator.setFeaturesCol(features)
    else:
        estimator.setFeatureCols(names)
    model = estimator.fit(df)
    return {"coefficients": model.coefficients, "intercept": model.intercept, **model.summary}


def _is_vector(df: DataFrame, column: str) -> bool:
    from pyspark.sql.types import NumericType

    field = df.schema[column]
    return not isinstance(field.dataType, NumericType)
