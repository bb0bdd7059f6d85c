"""stoker states (safetensors with stoker metadata, docs/engine.md) in PyTorch."""

from __future__ import annotations

import json
import struct
from typing import Any


def torch_state_dict(state: bytes, *, optimizer: bool = False) -> dict[str, Any]:
    """The float32 tensors of a state as torch tensors, by name: the parameters a
    PyTorch module's `load_state_dict` takes (and, with `optimizer=True`, the
    `optimizer/...` tensors too)."""
    import numpy as np
    import torch

    (n,) = struct.unpack("<Q", state[:8])
    header = json.loads(state[8 : 8 + n])
    header.pop("__metadata__", None)
    out = {}
    for name, info in header.items():
        if info["dtype"] != "F32" or (name.startswith("optimizer/") and not optimizer):
            continue
        start, end = info["data_offsets"]
        values = np.frombuffer(state[8 + n + start : 8 + n + end], dtype=np.float32)
        out[name] = torch.from_numpy(values.copy().reshape(info["shape"]))
    return out
