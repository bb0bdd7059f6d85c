"""stoker._native: state averaging and the exception hierarchy."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import stoker


def state(values, samples=1, model_id="m"):
    """A stoker state with one F32 tensor 'w', written by hand."""
    values = np.asarray(values, dtype=np.float32)
    header = {
        "__metadata__": {
            "format": "stoker.state.v1",
            "model_id": model_id,
            "round": "0",
            "samples": str(samples),
        },
        "w": {"dtype": "F32", "shape": list(values.shape), "data_offsets": [0, values.nbytes]},
    }
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + values.tobytes()


def values(blob):
    (n,) = struct.unpack("<Q", blob[:8])
    return np.frombuffer(blob[8 + n :], dtype=np.float32)


def test_weighted_average():
    out = stoker.average_states([state([1, 2]), state([3, 6])], [1.0, 3.0])
    np.testing.assert_allclose(values(out), [2.5, 5.0])


def test_errors_are_stoker_exceptions_by_kind():
    with pytest.raises(stoker.InvalidInputError, match="not a valid stoker state"):
        stoker.average_states([state([1]), b"junk"], [1.0, 1.0])
    with pytest.raises(stoker.InvalidInputError, match="tensor 'w'"):
        stoker.average_states([state([1]), state([1, 2])], [1.0, 1.0])
    with pytest.raises(stoker.InvalidInputError, match="different|model"):
        stoker.average_states([state([1]), state([1], model_id="other")], [1.0, 1.0])
    with pytest.raises(stoker.StokerError):
        stoker.average_states([], [])
    assert issubclass(stoker.InvalidInputError, stoker.StokerError)
    assert issubclass(stoker.ServerUnavailableError, stoker.StokerError)
