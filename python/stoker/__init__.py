"""stoker: Spark DataFrames into native libtorch training and inference.

- `stoker.spark`: `StokerEstimator` / `StokerModel` for PySpark ML pipelines,
  and `configure(builder)` to add stoker to a SparkSession.
- `stoker.predict_udf`: a vectorized Arrow UDF that predicts through the node's
  stoker server, for DataFrame expressions and SQL.
- `stoker.Client` and `stoker.serve`: the Arrow Flight client and a server
  process, usable without Spark.
- `stoker.torch_state_dict`: a trained state's tensors for a PyTorch module.
- `stoker.StokerError` and its subclasses: one per native error kind.
"""

from stoker._native import (
    CacheMissError,
    InvalidInputError,
    NotFoundError,
    ResourceExhaustedError,
    ServerUnavailableError,
    StokerError,
    UnauthenticatedError,
    __version__,
    average_states,
)
from stoker.client import Client
from stoker.server import Server, find_binary, serve
from stoker.state import torch_state_dict


def predict_udf(*args, **kwargs):
    """See `stoker.udf.predict_udf` (imported lazily: it needs pyspark)."""
    from stoker.udf import predict_udf as make

    return make(*args, **kwargs)


__all__ = [
    "CacheMissError",
    "Client",
    "InvalidInputError",
    "NotFoundError",
    "ResourceExhaustedError",
    "Server",
    "ServerUnavailableError",
    "StokerError",
    "UnauthenticatedError",
    "__version__",
    "average_states",
    "find_binary",
    "predict_udf",
    "serve",
    "torch_state_dict",
]
