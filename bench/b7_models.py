"""Benchmark 7, inference under many models: one `stoker serve` serving more
models than its device and host budgets hold, so requests load models back from
the host and disk tiers (docs/protocol.md, "Model tiers").

What is measured: a client sends 1,000-row predict requests (DoExchange,
`stoker.Client.predict`), one at a time, cycling over N registered MLPs
(32-256-256-2: 0.3 MB of float32 parameters each; the state as trained, with
the optimizer's moments, is about 0.9 MB). The tiered server runs with
`--model-dir` and budgets, in whole MiB, computed from those sizes to hold about
3 models on the device (`--device-model-mb`, parameter bytes) and about 6
artifacts on the host (`--host-model-mb`, counting the artifacts of the models on
the device too), so the rest live only on disk. Two request orders: round robin
(every model in turn: the worst case for LRU, every request misses the device
and the host) and skewed (model k drawn with probability proportional to
1/(k+1)^1.1, fixed seed: a few hot models, a long tail). Reported: requests/s
(the value), rows/s, p50 and p99 latency per request (ms, measured at the
client, over all measured passes), and the deltas of `stats()["tiers"]` (hits,
misses, evictions per tier) over the measured requests.

How it is fair: the bound is the same server binary, device, models (the same
state bytes) and request sequence, with budgets large enough that every model
stays on the device (`stoker (all resident)`, role "bound"): the difference is
what the tiers cost. Both servers run side by side and are measured alternately
(`side_by_side`, after a warm-up request to every model on each server); the
value is the median over `ctx.repeats` passes of the whole sequence. The models
are trained one tiny round each on a server (create_job, put_partition,
train_round), without Spark, and the same states are registered on both.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

try:
    from bench.common import Context, Result, side_by_side, summarize
except ModuleNotFoundError:  # bench/ itself on sys.path
    from common import Context, Result, side_by_side, summarize

BENCH = "7 Inference under many models"
SPEC = {"type": "mlp", "hidden": [256, 256], "num_classes": 2}
FEATURES = [f"f{i}" for i in range(32)]
DEVICE_FITS = 3  # models the tiered server's device budget holds
HOST_FITS = 6  # model artifacts its host budget holds (those on the device count too)
RESIDENT_MB = 4096
REQUEST_ROWS = 1000
TRAIN_ROWS = 256
TIERED = "stoker (tiered)"
RESIDENT = "stoker (all resident)"
ROLES = {TIERED: "stoker", RESIDENT: "bound"}


def _table(rows: int, seed: int, label: bool) -> pa.Table:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, len(FEATURES)), dtype=np.float32)
    columns = {name: x[:, i] for i, name in enumerate(FEATURES)}
    if label:
        columns["label"] = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    return pa.table(columns)


def _states(client, n: int) -> list[bytes]:
    """One tiny training round per model, each from its own seed and data."""
    states = []
    for i in range(n):
        job = f"b7-train-{i}"
        client.create_job(job, features=FEATURES, label="label", spec=SPEC, seed=i, batch_size=64)
        client.put_partition(job, 0, _table(TRAIN_ROWS, seed=1000 + i, label=True))
        # release: the partition, and with it the job, leaves the server's cache
        _, state = client.train_round(job, 0, 0, release=True)
        states.append(state)
    return states


def _tiers(client) -> dict[str, dict[str, int]]:
    return client.stats()["tiers"]


def _delta(before: dict, after: dict) -> dict[str, dict[str, int]]:
    return {
        tier: {k: after[tier][k] - before[tier].get(k, 0) for k in after[tier]} for tier in after
    }


def _add(total: dict, delta: dict) -> None:
    for tier, counts in delta.items():
        for k, v in counts.items():
            total.setdefault(tier, {}).setdefault(k, 0)
            total[tier][k] += v


class _Runs:
    """Measured passes of one variant: latencies and tier counters."""

    def __init__(self, client, sequence: list[str], batch: pa.Table):
        self.client, self.sequence, self.batch = client, sequence, batch
        self.passes: list[tuple[list[float], dict]] = []

    def __call__(self) -> float:
        latencies = []
        before = _tiers(self.client)
        started = time.perf_counter()
        for name in self.sequence:
            t0 = time.perf_counter()
            out = self.client.predict(name, self.batch)
            latencies.append(time.perf_counter() - t0)
            if out.num_rows != self.batch.num_rows:
                raise RuntimeError(f"{name} returned {out.num_rows} rows")
        elapsed = time.perf_counter() - started
        self.passes.append((latencies, _delta(before, _tiers(self.client))))
        return len(self.sequence) / elapsed

    def extra(self, value: float) -> dict:
        passes = self.passes
        latencies = sorted(t for lat, _ in passes for t in lat)
        tiers: dict = {}
        for _, delta in passes:
            _add(tiers, delta)
        device = tiers.get("device", {})
        hits, misses = device.get("hits", 0), device.get("misses", 0)
        return {
            "rows_per_s": round(value * self.batch.num_rows),
            "p50_ms": round(1e3 * statistics.median(latencies), 3),
            "p99_ms": round(
                1e3 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 3
            ),
            "requests_per_pass": len(self.sequence),
            "passes": len(passes),
            "tiers": tiers,
            "device_hit_rate": round(hits / (hits + misses), 3) if hits + misses else None,
        }


def _patterns(n_models: int, n_requests: int) -> dict[str, list[int]]:
    weights = 1.0 / np.arange(1, n_models + 1) ** 1.1
    rng = np.random.default_rng(7)
    skewed = rng.choice(n_models, size=n_requests, p=weights / weights.sum())
    return {
        "round robin": [i % n_models for i in range(n_requests)],
        "skewed (Zipf 1.1)": [int(k) for k in skewed],
    }


def _budget_mb(per_model: int, fits: int) -> int:
    """Whole MiB (the flags' unit) holding about `fits` models of `per_model` bytes."""
    return max(1, math.ceil(fits * per_model / 2**20))


def run(
    ctx: Context,
    *,
    models: int | None = None,
    requests: int | None = None,
    device: str | None = None,
) -> list[Result]:
    """`models` (12), `requests` (quick 300, full 3000) and `device`
    (`STOKER_BENCH_DEVICE`, else auto) override the defaults."""
    import stoker

    n_models = models or 12
    n_requests = requests or ctx.size(300, 3000)
    device = device or os.environ.get("STOKER_BENCH_DEVICE", "auto")
    work = Path(ctx.work) / "b7"
    work.mkdir(parents=True, exist_ok=True)
    names = [f"m{i:03d}" for i in range(n_models)]
    batch = _table(REQUEST_ROWS, seed=1, label=False)

    resident = stoker.serve(
        device=device,
        model_dir=work / "models-resident",
        args=["--device-model-mb", str(RESIDENT_MB), "--host-model-mb", str(RESIDENT_MB)],
        log=work / "resident.log",
    )
    tiered = None
    try:
        states = _states(resident.client(), n_models)
        for name, state in zip(names, states, strict=True):
            resident.client().register_model(name, state, spec=SPEC, features=FEATURES)
        # Budgets from the real sizes: parameters on the device; on the host the
        # artifact, which is the state as trained (with the optimizer's moments).
        param_bytes = resident.client().stats()["models"][0]["bytes"]
        artifact_bytes = max(len(s) for s in states) + len(json.dumps(SPEC))
        budgets = {
            "device": _budget_mb(param_bytes, DEVICE_FITS),
            "host": _budget_mb(artifact_bytes, HOST_FITS),
        }
        tiered = stoker.serve(
            device=device,
            model_dir=work / "models-tiered",
            args=[
                "--device-model-mb", str(budgets["device"]),
                "--host-model-mb", str(budgets["host"]),
            ],
            log=work / "tiered.log",
        )  # fmt: skip
        clients = {TIERED: tiered.client(), RESIDENT: resident.client()}
        for name, state in zip(names, states, strict=True):
            clients[TIERED].register_model(name, state, spec=SPEC, features=FEATURES)
        placed: dict[str, dict[str, int]] = {name: {} for name in clients}
        for variant, client in clients.items():
            for m in client.stats()["models"]:
                placed[variant][m["tier"]] = placed[variant].get(m["tier"], 0) + 1
        if placed[RESIDENT].get("device", 0) != n_models:
            raise RuntimeError(f"the resident server does not hold every model: {placed}")
        on_device = placed[TIERED].get("device", 0)
        in_memory = on_device + placed[TIERED].get("host", 0)
        # Warm-up: every model once on each server (libtorch, connections).
        for client in clients.values():
            for name in names:
                client.predict(name, batch)

        results: list[Result] = []
        for pattern, order in _patterns(n_models, n_requests).items():
            sequence = [names[k] for k in order]
            runs = {name: _Runs(client, sequence, batch) for name, client in clients.items()}
            samples = side_by_side(runs, ctx.repeats, warmup=False)
            extra = {}
            for name, r in runs.items():
                extra[name] = r.extra(statistics.median(samples[name]))
                extra[name].update(
                    pattern=pattern,
                    models=n_models,
                    distinct_models_requested=len(set(order)),
                    request_rows=REQUEST_ROWS,
                    model=SPEC,
                    param_bytes=param_bytes,
                    artifact_bytes=artifact_bytes,
                    device=device,
                    tiers_after_register=placed[name],
                )
            extra[TIERED]["budgets_mb"] = budgets
            extra[RESIDENT]["budgets_mb"] = {"device": RESIDENT_MB, "host": RESIDENT_MB}
            case = f"{n_models} models, device holds ~{on_device}, host ~{in_memory}: {pattern}"
            results += summarize(BENCH, case, samples, "requests/s", ROLES, extra=extra)
        return results
    finally:
        if tiered is not None:
            tiered.stop()
        resident.stop()
