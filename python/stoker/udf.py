"""`stoker.predict_udf`: a vectorized Arrow UDF that streams Spark's Arrow
batches to the node's stoker server (DoExchange) and returns predictions.

    predict = stoker.predict_udf("churn")              # a model registered by name
    df.withColumn("p", predict("tenure", "spend", "calls"))
    df.withColumn("p", predict("features"))            # one Vector or array column
    spark.udf.register("churn", predict)               # SQL: SELECT churn(a, b) FROM t

The model may also be a `stoker.spark.StokerModel` (or the path it was saved
to): each node's server then registers it on first use.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
from pyspark.sql.types import ArrayType, DoubleType, FloatType

from stoker._native import NotFoundError
from stoker.client import Client
from stoker.server import local_server

__all__ = ["predict_udf"]


class _Model:
    """What a UDF task needs to reach the model on its node's server."""

    def __init__(self, model: Any, version: int | None):
        self.version = version
        self.registration: tuple[dict, dict[str, bytes]] | None = None
        self.features: list[str] | None = None
        if isinstance(model, str) and "://" not in model and not os.path.exists(model):
            self.name = model
            return
        if version is not None:
            raise TypeError(
                "version applies to a model registered by name; a StokerModel is served as it is"
            )
        java = _java_model(model)
        state = bytes(java.getState())
        blobs = {"state": state}
        torchscript = java.getTorchScript()
        if torchscript.isDefined():
            blobs["model"] = bytes(torchscript.get())
        cols = list(java.getFeatureCols())
        self.features = cols or [java.getFeaturesCol()]
        body: dict[str, Any] = {"version": 1, "features": self.features}
        spec = java.getModel().strip()
        if spec.startswith("{"):
            body["spec"] = json.loads(spec)
        if java.getLoss():
            body["loss"] = java.getLoss()
        digest = hashlib.sha256(state + json.dumps(body, sort_keys=True).encode())
        self.name = f"py-{java.uid()}-{digest.hexdigest()[:16]}"
        body["name"] = self.name
        self.version = 1
        self.registration = (body, blobs)


def _java_model(model: Any) -> Any:
    """The JVM StokerModel behind a Python StokerModel or a saved model's path."""
    from stoker.spark import StokerModel

    if isinstance(model, (str, os.PathLike)):
        model = StokerModel.load(os.fspath(model))
    if not isinstance(model, StokerModel):
        raise TypeError(
            "predict_udf needs a registered model's name, a stoker.spark.StokerModel, or the "
            f"path of a saved one; got {type(model).__name__}"
        )
    return model._java_obj


def predict_udf(
    model: Any,
    *,
    version: int | None = None,
    probability: bool = False,
    server: str | None = None,
    token: str | None = None,
    ca_pem: bytes | str | None = None,
):
    """A Spark UDF computing the model's prediction (a double) for its feature
    columns, in Arrow batches; with `probability=True`, the class
    probabilities (array<float>) instead.

    `server` (with `token`, and for `grpc+tls://` the CA certificate `ca_pem`,
    as `stoker.Client` takes them) names a stoker server; by default each node
    uses its shared, auto-started one (the same one the JVM side uses).
    """
    from pyspark.sql.functions import arrow_udf

    target = _Model(model, version)
    if target.registration is None:
        # A model named, not given: check now, on the driver's server, so a typo
        # fails here with NotFoundError instead of inside every task.
        address, key = (server, token) if server else local_server()
        target.features = _feature_names(Client(address, token=key, ca_pem=ca_pem), target)
    column = "probability" if probability else "prediction"
    return_type = ArrayType(FloatType()) if probability else DoubleType()

    def predict(batches: Iterator[tuple[pa.Array, ...]]) -> Iterator[pa.Array]:
        address, key = (server, token) if server else local_server()
        client = Client(address, token=key, ca_pem=ca_pem)
        names = target.features or []
        for arrays in batches:
            if not isinstance(arrays, tuple):  # one column arrives bare
                arrays = (arrays,)
            if len(arrays) != len(names):
                raise ValueError(
                    f"model '{target.name}' takes {len(names)} feature columns "
                    f"({', '.join(names)}); the UDF was given {len(arrays)}"
                )
            table = pa.table(list(arrays), names=names)
            try:
                out = client.predict(target.name, table, version=target.version)
            except NotFoundError:
                if target.registration is None:
                    raise
                body, blobs = target.registration
                client.action("register_model", body, blobs)
                out = client.predict(target.name, table, version=target.version)
            if column not in out.column_names:
                raise ValueError(f"model '{target.name}' gives no {column} (not a classifier)")
            result = out.column(column).combine_chunks()
            yield result.cast(pa.list_(pa.float32())) if probability else result

    predict.__name__ = f"stoker_{target.name}"
    return arrow_udf(predict, return_type)


def _feature_names(client: Client, target: _Model) -> list[str]:
    """A registered model's feature column names, from the server's stats."""
    versions = [
        m
        for m in client.stats().get("models", [])
        if m.get("name") == target.name and target.version in (None, m.get("version"))
    ]
    if not versions:
        raise NotFoundError(
            f"no model named '{target.name}'"
            + (f" at version {target.version}" if target.version is not None else "")
            + f" on the stoker server at {client.address}"
        )
    return list(max(versions, key=lambda m: m["version"])["features"])
