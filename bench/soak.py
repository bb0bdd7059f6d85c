"""`make soak`: one stoker server under steady mixed load for a bounded time:
16 concurrent inference streams (each its own client, one batch after another)
and a training job that runs rounds back to back on two cached partitions, the
way a long Spark application uses a node's server. It reports errors (goal 0),
per-batch latency p50/p99, and the server's resident memory (RSS) growth from
the end of warm-up to the end (goal under 10%), and saves them to
bench/results/soak.json (docs/reliability.md quotes them).

    python -m bench.soak [--seconds 600] [--streams 16] [--rows 2000]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import pyarrow as pa
import stoker

ROOT = Path(__file__).resolve().parents[1]
SPEC = {"type": "mlp", "hidden": [64, 64], "num_classes": 2}


def table(rows: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, size=(rows, 4)).astype(np.float32)
    y = (np.square(x[:, :2]).sum(axis=1) > 1.44).astype(np.int64)
    cols = {f"f{i}": x[:, i] for i in range(4)}
    return pa.table({**cols, "y": y})


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Load:
    """Counts, latencies and errors of the load threads, shared under a lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.batches = 0
        self.rows = 0
        self.rounds = 0

    def error(self, where: str) -> None:
        with self.lock:
            self.errors.append(f"{where}: {traceback.format_exc(limit=2)}")


def stream(server, model: str, rows: int, seed: int, stop: threading.Event, load: Load) -> None:
    client = stoker.Client(server.address, token=server.token)
    data = table(rows, seed).drop(["y"])
    while not stop.is_set():
        started = time.monotonic()
        try:
            out = client.predict(model, data)
            if out.num_rows != rows:
                raise AssertionError(f"{out.num_rows} predictions for {rows} rows")
        except Exception:  # noqa: BLE001 - every error is counted and reported
            load.error(f"stream {seed}")
            continue
        with load.lock:
            load.latencies.append(time.monotonic() - started)
            load.batches += 1
            load.rows += rows


def training(server, stop: threading.Event, load: Load) -> None:
    """A job training round after round, states averaged as the driver does."""
    client = stoker.Client(server.address, token=server.token)
    features = [f"f{i}" for i in range(4)]
    client.create_job("soak", features=features, label="y", spec=SPEC, seed=1, batch_size=128)
    for p in (0, 1):
        client.put_partition("soak", p, table(20_000, 100 + p))
    state, r = None, 0
    while not stop.is_set():
        try:
            results = [client.train_round("soak", p, r, state) for p in (0, 1)]
            state = stoker.average_states(
                [s for _, s in results], [res["samples"] for res, _ in results]
            )
            r += 1
            with load.lock:
                load.rounds += 1
        except Exception:  # noqa: BLE001
            load.error("training")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--warmup", type=float, default=None, help="default: a tenth, at most 60 s")
    args = parser.parse_args()
    warmup = args.warmup if args.warmup is not None else min(60.0, args.seconds / 10)

    with stoker.serve(device="cpu", token="soak") as server:
        client = stoker.Client(server.address, token=server.token)
        # The served model: one round of a small job, registered.
        features = [f"f{i}" for i in range(4)]
        client.create_job("seed", features=features, label="y", spec=SPEC, seed=2)
        client.put_partition("seed", 0, table(5000, 7))
        _, state = client.train_round("seed", 0, 0)
        client.register_model("soak_model", state, spec=SPEC, features=features)
        client.drop_job("seed")

        stop, load = threading.Event(), Load()
        threads = [
            threading.Thread(
                target=stream, args=(server, "soak_model", args.rows, i, stop, load), daemon=True
            )
            for i in range(args.streams)
        ]
        threads.append(threading.Thread(target=training, args=(server, stop, load), daemon=True))
        started = time.monotonic()
        for t in threads:
            t.start()
        pid = server.process.pid
        samples: list[tuple[float, int]] = []
        while (elapsed := time.monotonic() - started) < args.seconds:
            samples.append((elapsed, rss_bytes(pid)))
            time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(60)
        health = client.health()["status"]

    after_warmup = next((r for t, r in samples if t >= warmup), samples[0][1])
    peak = max(r for _, r in samples)
    final = samples[-1][1]
    lat = np.array(load.latencies) * 1000
    result = {
        "seconds": round(args.seconds),
        "streams": args.streams,
        "rows_per_batch": args.rows,
        "batches": load.batches,
        "rows_predicted": load.rows,
        "rows_per_second": round(load.rows / args.seconds),
        "training_rounds": load.rounds,
        "errors": len(load.errors),
        "p50_ms": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
        "rss_after_warmup_mb": round(after_warmup / 2**20, 1),
        "rss_final_mb": round(final / 2**20, 1),
        "rss_peak_mb": round(peak / 2**20, 1),
        "rss_growth_pct": round(100 * (final - after_warmup) / after_warmup, 2),
        "health_at_end": health,
        # RSS every 30 s: a plateau is the allocator's arenas filling, a slope a leak.
        "rss_mb_every_30s": [round(r / 2**20, 1) for t, r in samples if int(t) % 30 == 0],
        "first_errors": load.errors[:3],
    }
    out = ROOT / "bench" / "results" / "soak.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    ok = result["errors"] == 0 and result["rss_growth_pct"] < 10 and health == "serving"
    print("soak " + ("passed" if ok else "FAILED") + f" (saved to {out.relative_to(ROOT)})")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
