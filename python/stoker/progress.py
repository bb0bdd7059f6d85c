"""The progress line `StokerEstimator.fit` draws: it polls the driver JVM's
`dev.stoker.spark.Progress` for the fit (rounds done, the last round's loss,
validation loss and rows/s, and what the fit waits for) and, for MLflow
autolog, hands each finished round to a callback."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # typing.Self is Python 3.11+; annotations are not evaluated
    from typing import Self


class ProgressBar:
    """Polls the driver JVM's Progress for this fit and draws one line on stderr."""

    def __init__(
        self,
        uid: str,
        total: int,
        interval: float = 0.5,
        on_round: Callable[[dict], None] | None = None,
        what: str = "stoker fit",
        unit: str = "round",
    ) -> None:
        forced = os.environ.get("STOKER_PROGRESS")
        self.enabled = sys.stderr.isatty() if forced is None else forced not in ("0", "")
        self.uid, self.total, self.interval = uid, total, interval
        # "stoker fit ... round 3/10", or a search's "stoker tuner ... trial 3/16".
        self.what, self.unit = what, unit
        # Called with each finished round's statistics the poll sees (MLflow autolog).
        self.on_round = on_round
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()

    def __enter__(self) -> Self:
        if self.enabled or self.on_round is not None:
            self._thread = threading.Thread(target=self._run, daemon=True, name="stoker-progress")
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            if self.enabled:
                self._draw(final=True)

    def _snapshot(self) -> dict | None:
        from pyspark import SparkContext

        sc = SparkContext._active_spark_context
        if sc is None:
            return None
        text = sc._jvm.dev.stoker.spark.Progress.json(self.uid)
        return json.loads(text) if text else None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            snap = self._snapshot()
            if self.on_round is not None and snap and snap.get("last"):
                with contextlib.suppress(Exception):
                    self.on_round(snap["last"])
            if self.enabled:
                self._draw(snap)

    def _draw(self, snap: dict | None = None, final: bool = False) -> None:
        if snap is None:
            snap = self._snapshot()
        done = snap["done"] if snap else 0
        total = snap["total"] if snap else self.total
        width = 24
        filled = int(width * done / max(total, 1))
        bar = "#" * filled + "." * (width - filled)
        line = f"{self.what} [{bar}] {self.unit} {done}/{total}"
        last = (snap or {}).get("last")
        phase = (snap or {}).get("phase")
        if phase and not final and (snap or {}).get("running"):
            # What the fit waits for now: the first round's wait (servers starting,
            # partitions streaming) says so instead of looking stuck.
            line += f"  [{phase}]"
        if last:
            rate = last["samples"] / last["seconds"] if last["seconds"] > 0 else 0.0
            line += f"  loss {last['loss']:.4f}"
            val = last.get("validation") or {}
            if val.get("loss") is not None:
                line += f"  val_loss {val['loss']:.4f}"
            line += f"  {rate / 1000:.1f}k rows/s"
        line += f"  {time.monotonic() - self._started:.0f}s"
        sys.stderr.write("\r" + line + ("\n" if final else ""))
        sys.stderr.flush()
