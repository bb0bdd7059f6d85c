"""What every benchmark shares: the scale, side-by-side timing (peers alternate,
several repetitions, median and spread), the machine, and the result records.

A benchmark module exposes `run(ctx: Context) -> list[Result]`. Each `Result` is
one measured variant (stoker or a peer) of one case; `ratio_to` names the variant
its ratio is computed against in the report.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Self

ROOT = Path(__file__).resolve().parents[1]
STOKER_BIN = os.environ.get("STOKER_BIN", str(ROOT / "target" / "release" / "stoker"))


@dataclass
class Result:
    bench: str  # e.g. "3 Flight transport"
    case: str  # e.g. "DoPut 64k x 32 float32"
    variant: str  # e.g. "stoker serve", "pyarrow.flight", "raw TCP (bound)"
    unit: str  # what `value` measures, higher is better unless `lower_is_better`
    value: float  # the median
    spread: tuple[float, float]  # min and max over repetitions
    samples: list[float] = field(default_factory=list)
    lower_is_better: bool = False
    role: str = "stoker"  # "stoker", "peer" or "bound"
    extra: dict = field(default_factory=dict)


@dataclass
class Context:
    scale: str  # "quick" or "full"
    repeats: int
    work: Path  # scratch directory for this run

    @property
    def quick(self) -> bool:
        return self.scale == "quick"

    def size(self, quick: int, full: int) -> int:
        if os.environ.get("BENCH_TINY"):  # a smoke test of the harness, not a measurement
            return max(1000, quick // 20)
        return quick if self.quick else full


def side_by_side(
    variants: dict[str, Callable[[], float]], repeats: int, warmup: bool = True
) -> dict[str, list[float]]:
    """Runs each variant `repeats` times, alternating between them (so drift in the
    machine's state hits all alike); each call returns its own measurement."""
    if warmup:
        for fn in variants.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            samples[name].append(fn())
    return samples


def summarize(
    bench: str,
    case: str,
    samples: dict[str, list[float]],
    unit: str,
    roles: dict[str, str],
    lower_is_better: bool = False,
    extra: dict[str, dict] | None = None,
) -> list[Result]:
    return [
        Result(
            bench=bench,
            case=case,
            variant=name,
            unit=unit,
            value=statistics.median(values),
            spread=(min(values), max(values)),
            samples=values,
            lower_is_better=lower_is_better,
            role=roles.get(name, "peer"),
            extra=(extra or {}).get(name, {}),
        )
        for name, values in samples.items()
    ]


def mlp(features: int, hidden: list[int], outputs: int):
    """The PyTorch twin of stoker's `{"type": "mlp", "hidden": hidden}` spec: Linear and
    ReLU layers, then a Linear to `outputs`."""
    import torch

    layers: list = []
    width = features
    for h in hidden:
        layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
        width = h
    layers.append(torch.nn.Linear(width, outputs))
    return torch.nn.Sequential(*layers)


def timed(fn: Callable[[], object]) -> float:
    """Seconds `fn` takes."""
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def machine() -> dict:
    """The machine every result was measured on."""
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cores": os.cpu_count(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        gpus = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        info["gpu"] = gpus.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        info["gpu"] = None
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def save(results: list[Result], info: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"machine": info, "results": [asdict(r) for r in results]}, indent=1)
    )


_spark = None


def spark_session():
    """One local Spark session for the Spark benchmarks: local[2] (this machine's
    cores), stoker configured as a user configures it, Arrow on for PySpark."""
    global _spark
    if _spark is None:
        import sys

        from pyspark.sql import SparkSession
        from stoker import spark as stoker_spark

        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ["STOKER_PROGRESS"] = "0"
        builder = (
            SparkSession.builder.master(os.environ.get("BENCH_MASTER", "local[2]"))
            .appName("stoker-bench")
            .config("spark.driver.memory", os.environ.get("BENCH_DRIVER_MEMORY", "8g"))
            .config("spark.sql.shuffle.partitions", "4")
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.stoker.server.device", "cpu")
        )
        _spark = stoker_spark.configure(builder).getOrCreate()
        _spark.sparkContext.setLogLevel("ERROR")
    return _spark


def float_table(spark, rows: int, features: int, partitions: int, seed: int = 1):
    """A cached table built by a join: `features` float columns on one side, the
    label on the other, joined by id (what ETL hands to training)."""
    from pyspark.sql import functions as F

    left = spark.range(rows).select(
        "id", *[(F.rand(seed + i) * 2 - 1).cast("float").alias(f"f{i}") for i in range(features)]
    )
    right = spark.range(rows).select("id", (F.rand(seed + 999) > 0.5).cast("int").alias("label"))
    table = left.join(right, "id").drop("id").repartition(partitions).cache()
    table.count()
    return table


def scaled_float_table(
    ctx: Context, quick: int, full: int, features: int, partitions: int, seed: int = 1
):
    """`float_table` in the benchmarks' Spark session with `ctx.size(quick, full)` rows:
    (rows, table)."""
    rows = ctx.size(quick, full)
    return rows, float_table(spark_session(), rows, features, partitions, seed)


class RssSampler:
    """Peak resident memory of the processes whose command line matches, sampled
    every 50 ms while a `with` block runs."""

    def __init__(self, *patterns: str):
        self.patterns = patterns
        self.peak = 0
        self._stop = False

    def _pids(self) -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if any(p in cmd for p in self.patterns):
                pids.append(int(entry.name))
        return pids

    def __enter__(self) -> Self:
        import threading

        def loop() -> None:
            while not self._stop:
                self.peak = max(self.peak, sum(rss_bytes(p) for p in self._pids()))
                time.sleep(0.05)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._thread.join()
