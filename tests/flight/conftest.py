"""A real `stoker serve` process and a pyarrow.flight client for it."""

from __future__ import annotations

import json
import signal
import struct
import subprocess
from pathlib import Path

import pytest
from pyarrow import flight


class Server:
    def __init__(self, binary: str, tmp: Path, *args: str):
        self.stderr_path = tmp / "server.log"
        self.stderr = open(self.stderr_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [binary, "serve", "--port", "0", "--device", "cpu", *args],
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )
        self.uri = self.proc.stdout.readline().strip()
        if not self.uri.startswith("grpc"):
            self.stop()
            raise RuntimeError(f"server did not start: {self.stderr_path.read_text()}")

    def log(self) -> str:
        return self.stderr_path.read_text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self.stderr.close()
        return code


@pytest.fixture
def server(stoker_bin, tmp_path):
    s = Server(stoker_bin, tmp_path)
    yield s
    assert s.stop() == 0, s.log()


def envelope(body: dict, **blobs: bytes) -> bytes:
    """Encodes an action body the way docs/protocol.md describes."""
    if not blobs:
        return json.dumps(body).encode()
    head = dict(body, blobs=[{"name": k, "size": len(v)} for k, v in blobs.items()])
    h = json.dumps(head).encode()
    return b"STK1" + struct.pack("<I", len(h)) + h + b"".join(blobs.values())


def decode(body: bytes) -> tuple[dict, dict[str, bytes]]:
    if not body.startswith(b"STK1"):
        return json.loads(body), {}
    (n,) = struct.unpack("<I", body[4:8])
    head = json.loads(body[8 : 8 + n])
    blobs, at = {}, 8 + n
    for b in head.pop("blobs", []):
        blobs[b["name"]] = body[at : at + b["size"]]
        at += b["size"]
    return head, blobs


def act(client: flight.FlightClient, kind: str, body: dict | None = None, **blobs: bytes):
    results = list(client.do_action(flight.Action(kind, envelope(body or {}, **blobs))))
    return decode(results[0].body.to_pybytes())
