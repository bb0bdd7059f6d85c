"""stoker: Spark DataFrames into native libtorch training and inference.

This package grows with the Spark integration; today it carries the native
extension (state averaging) and the exception hierarchy shared with the
JVM and the server.
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

__all__ = [
    "CacheMissError",
    "InvalidInputError",
    "NotFoundError",
    "ResourceExhaustedError",
    "ServerUnavailableError",
    "StokerError",
    "UnauthenticatedError",
    "__version__",
    "average_states",
]
