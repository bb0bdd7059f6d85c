"""Benchmark 3, Flight transport: how fast `stoker serve` moves Arrow data over
Flight, against a pyarrow.flight server (Arrow C++'s Flight stack), with raw
loopback TCP as the bound.

What is measured: GB/s of Arrow payload (rows x cols x 4 bytes of float32) for
- DoPut: the client streams the batches, the server reads and drops them
  (stoker: descriptor `["_echo"]`);
- DoGet: the server streams ROWS rows of zeros built once as one batch and sent
  repeatedly (stoker: ticket `_zeros/ROWS/COLS/BATCH_ROWS`; the peer answers
  the same ticket with the same batch);
- DoExchange: the server echoes every batch back (stoker: `["_echo"]`). Only
  the bytes sent are counted; the same bytes also come back, so twice as many
  cross the loopback;
- raw TCP (bound): a socket process that reads and discards, the client
  `sendall`s the same total bytes in 8 MiB chunks and waits for the sink's
  byte count (so the time covers delivery, not just the send buffer).

How it is fair: both Flight servers run on loopback in their own processes
(the pyarrow server is a separate Python process, so the client's GIL never
touches it), and both are driven by the same client (pyarrow.flight.FlightClient,
one connection per server, reused), with the same batch objects: 64Ki rows x 32
float32 columns (8 MiB each). The peer does no per-row Python work: DoGet hands
Arrow C++ a RecordBatchStream of the prebuilt batch repeated, DoPut and
DoExchange loop over the 8 MiB batches in Python only once per batch. DoExchange
writes from a second thread while the main thread reads, for both servers.
All variants (and the TCP bound) alternate within each repetition
(`side_by_side`); the value is the median over `ctx.repeats` transfers, at
least TRANSFERS (a single transfer is short and noisy).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pyarrow as pa
from pyarrow import flight

try:
    from bench.common import Context, Result, rss_bytes, side_by_side, summarize
except ModuleNotFoundError:  # bench/ itself on sys.path (also: run as a script)
    from common import Context, Result, rss_bytes, side_by_side, summarize

BENCH = "3 Flight transport"
BATCH_ROWS = 65536
COLS = 32
TCP_CHUNK = 8 << 20
TRANSFERS = 15
STOKER = "stoker serve"
PEER = "pyarrow.flight (Arrow C++)"
BOUND = "raw TCP (bound)"
ROLES = {STOKER: "stoker", PEER: "peer", BOUND: "bound"}
ECHO = flight.FlightDescriptor.for_path("_echo")


def zeros_batch(rows: int, cols: int) -> pa.RecordBatch:
    zeros = pa.py_buffer(bytes(rows * 4))
    array = pa.Array.from_buffers(pa.float32(), rows, [None, zeros])
    return pa.record_batch([array] * cols, names=[f"f{c}" for c in range(cols)])


# --- the peer: a pyarrow.flight server and a TCP sink, each its own process ----


class PeerFlightServer(flight.FlightServerBase):
    """DoPut reads and drops, DoExchange echoes, DoGet `_zeros/ROWS/COLS/BATCH_ROWS`
    streams one prebuilt batch repeatedly: what stoker's transport endpoints do."""

    def __init__(self, location: str):
        super().__init__(location)
        self._batches: dict[tuple[int, int], pa.RecordBatch] = {}

    def do_put(self, context, descriptor, reader, writer):
        for _ in reader:
            pass

    def do_exchange(self, context, descriptor, reader, writer):
        writer.begin(reader.schema)
        for chunk in reader:
            writer.write_batch(chunk.data)

    def do_get(self, context, ticket):
        _, rows, cols, batch_rows = ticket.ticket.decode().split("/")
        rows, cols, batch_rows = int(rows), int(cols), int(batch_rows)
        key = (cols, batch_rows)
        if key not in self._batches:
            self._batches[key] = zeros_batch(batch_rows, cols)
        full = self._batches[key]
        batches = [full] * (rows // batch_rows)
        if rows % batch_rows:
            batches.append(full.slice(0, rows % batch_rows))
        # Arrow C++ streams the table itself; no Python runs per batch.
        return flight.RecordBatchStream(pa.Table.from_batches(batches, schema=full.schema))


def _serve_flight() -> None:
    server = PeerFlightServer("grpc://127.0.0.1:0")
    print(server.port, flush=True)
    server.serve()


def _serve_tcp_sink() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    view = memoryview(bytearray(TCP_CHUNK))
    while True:
        conn, _ = listener.accept()
        with conn:
            total = 0
            while n := conn.recv_into(view):
                total += n
            conn.sendall(total.to_bytes(8, "little"))


def _start(mode: str) -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen([sys.executable, __file__, mode], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.isdigit():
        _stop(process)
        raise RuntimeError(f"the {mode} peer process did not start (said {line!r})")
    return process, int(line)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- the client side: one measured transfer each, returning GB/s -------------------


def _put(client: flight.FlightClient, batches: list[pa.RecordBatch], payload: int) -> float:
    started = time.perf_counter()
    writer, _ = client.do_put(ECHO, batches[0].schema)
    for batch in batches:
        writer.write_batch(batch)
    writer.done_writing()
    writer.close()  # returns once the server has read everything
    return payload / (time.perf_counter() - started) / 1e9


def _get(client: flight.FlightClient, ticket: bytes, rows: int, payload: int) -> float:
    started = time.perf_counter()
    got = 0
    for chunk in client.do_get(flight.Ticket(ticket)):
        got += chunk.data.num_rows
    elapsed = time.perf_counter() - started
    if got != rows:
        raise RuntimeError(f"DoGet returned {got} rows, expected {rows}")
    return payload / elapsed / 1e9


def _exchange(
    client: flight.FlightClient, batches: list[pa.RecordBatch], rows: int, payload: int
) -> float:
    failed: list[BaseException] = []
    started = time.perf_counter()
    writer, reader = client.do_exchange(ECHO)
    writer.begin(batches[0].schema)

    def send() -> None:
        try:
            for batch in batches:
                writer.write_batch(batch)
            writer.done_writing()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            failed.append(e)

    sender = threading.Thread(target=send)
    sender.start()
    got = 0
    for chunk in reader:
        got += chunk.data.num_rows
    sender.join()
    writer.close()
    elapsed = time.perf_counter() - started
    if failed:
        raise failed[0]
    if got != rows:
        raise RuntimeError(f"DoExchange echoed {got} rows, expected {rows}")
    return payload / elapsed / 1e9


def _tcp(port: int, payload: int) -> float:
    chunk = memoryview(bytes(TCP_CHUNK))
    with socket.create_connection(("127.0.0.1", port)) as s:
        started = time.perf_counter()
        left = payload
        while left > 0:
            n = min(left, TCP_CHUNK)
            s.sendall(chunk[:n])
            left -= n
        s.shutdown(socket.SHUT_WR)
        ack = b""
        while len(ack) < 8 and (part := s.recv(8 - len(ack))):
            ack += part
        elapsed = time.perf_counter() - started
    if int.from_bytes(ack, "little") != payload:
        raise RuntimeError(f"the TCP sink got {ack!r}, expected {payload} bytes")
    return payload / elapsed / 1e9


def run(ctx: Context, *, batches: int | None = None) -> list[Result]:
    """`batches` overrides the number of 64Ki-row batches (quick 16, full 64)."""
    import stoker

    n_batches = batches or ctx.size(16, 64)
    rows = n_batches * BATCH_ROWS
    payload = rows * COLS * 4
    batch = zeros_batch(BATCH_ROWS, COLS)
    sent = [batch] * n_batches  # the same batch objects for every server
    ticket = f"_zeros/{rows}/{COLS}/{BATCH_ROWS}".encode()

    ctx.work.mkdir(parents=True, exist_ok=True)
    server = stoker.serve(
        device="cpu", args=["--max-message-mb", "256"], log=ctx.work / "b3-stoker.log"
    )
    peer = sink = None
    clients: list[flight.FlightClient] = []
    try:
        peer, peer_port = _start("flight")
        sink, sink_port = _start("tcp")
        ours = flight.FlightClient(server.address)
        theirs = flight.FlightClient(f"grpc://127.0.0.1:{peer_port}")
        clients = [ours, theirs]
        variants = {
            ("DoPut", STOKER): lambda: _put(ours, sent, payload),
            ("DoPut", PEER): lambda: _put(theirs, sent, payload),
            ("DoGet", STOKER): lambda: _get(ours, ticket, rows, payload),
            ("DoGet", PEER): lambda: _get(theirs, ticket, rows, payload),
            ("DoExchange", STOKER): lambda: _exchange(ours, sent, rows, payload),
            ("DoExchange", PEER): lambda: _exchange(theirs, sent, rows, payload),
            ("TCP", BOUND): lambda: _tcp(sink_port, payload),
        }
        keys = list(variants)
        # One transfer takes 0.05-0.2 s and single ones vary by 2x on a shared
        # 2-core VM: take at least TRANSFERS samples of each, still alternating.
        by_name = side_by_side(
            {f"{c}/{v}": variants[(c, v)] for c, v in keys}, max(ctx.repeats, TRANSFERS)
        )
        rss = {
            STOKER: rss_bytes(server.process.pid),
            PEER: rss_bytes(peer.pid),
        }
    finally:
        for c in clients:
            c.close()
        for p in (peer, sink):
            if p is not None:
                _stop(p)
        server.stop()

    shape = {
        "rows": rows,
        "cols": COLS,
        "batch_rows": BATCH_ROWS,
        "batches": n_batches,
        "payload_bytes": payload,
        "client": "pyarrow.flight.FlightClient",
    }
    bound = by_name[f"TCP/{BOUND}"]
    results: list[Result] = []
    for case in ("DoPut", "DoGet", "DoExchange"):
        samples = {
            STOKER: by_name[f"{case}/{STOKER}"],
            PEER: by_name[f"{case}/{PEER}"],
            BOUND: bound,
        }
        extra = {name: dict(shape) for name in samples}
        for name in (STOKER, PEER):
            extra[name]["server_rss_mb"] = round(rss[name] / 2**20, 1)
        extra[BOUND]["note"] = (
            "one-way loopback TCP, the same total bytes in 8 MiB sendall chunks to a "
            "process that reads and discards; the same measurement in every case"
        )
        if case == "DoExchange":
            for name in (STOKER, PEER):
                extra[name]["note"] = (
                    "GB/s counts the bytes sent; the server echoes them, so twice as "
                    "many cross the loopback"
                )
        results += summarize(BENCH, case, samples, "GB/s", ROLES, extra=extra)
    return results


if __name__ == "__main__":
    {"flight": _serve_flight, "tcp": _serve_tcp_sink}[sys.argv[1]]()
