"""`stoker.Client`: the Flight client for Python, over `stoker._native`.

Arrow data goes in as any object with `__arrow_c_stream__` (pyarrow Tables
and RecordBatchReaders, polars DataFrames, ...) without a copy; predictions
come back as a pyarrow Table. Every network call releases the GIL.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import pyarrow as pa

from stoker import _native


def _arrow(data: Any) -> Any:
    """Anything Arrow-like as an object with `__arrow_c_stream__`."""
    try:
        import pandas as pd

        # Before __arrow_c_stream__: pandas' own export keeps the index as a column.
        if isinstance(data, pd.DataFrame):
            return pa.Table.from_pandas(data, preserve_index=False)
    except ImportError:  # pragma: no cover - pandas is a pyspark dependency
        pass
    if hasattr(data, "__arrow_c_stream__"):
        return data
    if hasattr(data, "__arrow_c_array__"):
        return pa.Table.from_batches([pa.record_batch(data)])
    raise TypeError(
        f"expected Arrow data (pyarrow, polars, or a pandas DataFrame), got {type(data).__name__}"
    )


class Client:
    """A connection to a stoker server.

    >>> with stoker.serve() as server:
    ...     client = stoker.Client(server.address)
    ...     client.health()["status"]
    'serving'

    `address` is `grpc://host:port` or `grpc+tls://host:port`; `token` is the
    server's bearer token, if it wants one. Over TLS the server's certificate
    must be signed by `ca_pem` (the CA certificate's PEM, bytes or str), the
    only CA trusted, or without it by one of the operating system's root
    certificates (docs/security.md). `liveness_s` (default 20) is how long the
    server may stay silent, not answering even a ping, before calls fail with
    `stoker.ServerUnavailableError`; a long call to a live server is unaffected.
    Errors raise the `stoker.StokerError` subclass of their kind.
    """

    def __init__(
        self,
        address: str,
        token: str | None = None,
        ca_pem: bytes | str | None = None,
        liveness_s: float | None = None,
    ):
        if isinstance(ca_pem, str):
            ca_pem = ca_pem.encode("ascii")
        self._native = _native.Client(address, token, ca_pem, liveness_s)
        self.address = address

    # --- actions (docs/protocol.md) ----------------------------------------

    def action(
        self, kind: str, body: dict | None = None, blobs: dict[str, bytes] | None = None
    ) -> tuple[dict, dict[str, bytes]]:
        """Runs any action; returns its JSON result and its blobs."""
        text, out = self._native.action(
            kind, json.dumps(body or {}), list((blobs or {}).items()) or None
        )
        return json.loads(text), out

    def health(self) -> dict:
        return self.action("health")[0]

    def stats(self) -> dict:
        return self.action("stats")[0]

    def create_job(
        self,
        job: str,
        *,
        features: Iterable[str],
        label: str,
        spec: dict | None = None,
        torchscript: bytes | None = None,
        loss: str | None = None,
        optimizer: dict | None = None,
        device: str | None = None,
        seed: int = 0,
        batch_size: int = 256,
        keep_existing: bool = False,
    ) -> dict:
        """Defines a training job: the model (a built-in `spec` or a TorchScript
        archive's bytes), its feature and label columns, loss and optimizer."""
        body: dict[str, Any] = {
            "job": job,
            "features": list(features),
            "label": label,
            "seed": seed,
            "batch_size": batch_size,
            "keep_existing": keep_existing,
        }
        for key, value in (
            ("spec", spec),
            ("loss", loss),
            ("optimizer", optimizer),
            ("device", device),
        ):
            if value is not None:
                body[key] = value
        blobs = {"model": torchscript} if torchscript is not None else None
        return self.action("create_job", body, blobs)[0]

    def put_partition(
        self, job: str, partition: int, data: Any, version: str = "1", *, split: str = "train"
    ) -> dict:
        """Sends one partition of a job's data (DoPut): its training rows, or with
        `split="validation"` rows that `evaluate` scores and training never sees."""
        if split not in ("train", "validation"):
            raise ValueError(f"split is {split!r}; it must be 'train' or 'validation'")
        return json.loads(
            self._native.put_partition(job, partition, version, _arrow(data), split == "validation")
        )

    def train_round(
        self,
        job: str,
        partition: int,
        round: int,
        state: bytes | None = None,
        *,
        version: str = "1",
        epochs: int = 1,
        steps: int | None = None,
        release: bool = False,
        state_id: str | None = None,
    ) -> tuple[dict, bytes]:
        """Trains one cached partition for one round from `state` (None: the job's
        seeded initial weights); returns the result and the new state's bytes.

        `state_id` names the round's input state: the server keeps the last state
        sent with an id, so the round's other partitions on that server can pass the
        id with `state=None`. A server that does not hold it trains nothing and
        answers `{"needs_state": True, ...}` with empty state bytes: call again with
        the state."""
        body: dict[str, Any] = {
            "job": job,
            "partition": partition,
            "version": version,
            "round": round,
            "epochs": epochs,
            "release": release,
        }
        if steps is not None:
            body["steps"] = steps
        if state_id is not None:
            body["state_id"] = state_id
        result, blobs = self.action("train_round", body, {"state": state} if state else None)
        return result, blobs.get("state", b"")

    def evaluate(
        self,
        job: str,
        partition: int,
        state: bytes | None = None,
        *,
        round: int = 0,
        version: str = "1",
        split: str = "validation",
        release: bool = False,
        state_id: str | None = None,
    ) -> dict:
        """Scores `state` (None: the job's initial weights) on one cached partition
        without training. The result holds `metrics` for this partition alone and
        `evaluation`, sums that merge across partitions (docs/protocol.md)."""
        body: dict[str, Any] = {
            "job": job,
            "split": split,
            "partition": partition,
            "version": version,
            "round": round,
            "release": release,
        }
        if state_id is not None:
            body["state_id"] = state_id
        return self.action("evaluate", body, {"state": state} if state else None)[0]

    def drop_job(self, job: str) -> dict:
        return self.action("drop_job", {"name": job})[0]

    def register_model(
        self,
        name: str,
        state: bytes,
        *,
        spec: dict | None = None,
        torchscript: bytes | None = None,
        features: Iterable[str] | None = None,
        version: int | None = None,
        loss: str | None = None,
    ) -> dict:
        """Registers trained weights for inference under `name` (a new version
        unless `version` is given)."""
        body: dict[str, Any] = {"name": name}
        if spec is not None:
            body["spec"] = spec
        if features is not None:
            body["features"] = list(features)
        if version is not None:
            body["version"] = version
        if loss is not None:
            body["loss"] = loss
        blobs = {"state": state}
        if torchscript is not None:
            blobs["model"] = torchscript
        return self.action("register_model", body, blobs)[0]

    def unload_model(self, name: str, version: int | None = None) -> dict:
        body: dict[str, Any] = {"name": name}
        if version is not None:
            body["version"] = version
        return self.action("unload_model", body)[0]

    # --- data -------------------------------------------------------------------

    def predict(
        self, model: str, data: Any, *, version: int | None = None, keep: Iterable[str] = ()
    ) -> pa.Table:
        """Predictions (DoExchange) in input order: the `keep` columns, then
        `prediction` and, for classifiers, `probability`."""
        stream = self._native.predict(model, _arrow(data), version, list(keep) or None)
        return pa.table(stream)

    def download_state(self, ticket: str) -> bytes:
        """A stored state (DoGet): `jobs/JOB` or `models/NAME[/VERSION]`."""
        return self._native.download_state(ticket)

    def __repr__(self) -> str:
        return f"stoker.Client({self.address!r})"
