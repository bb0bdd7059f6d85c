"""`make bench`: runs the benchmarks side by side with their peers, saves the
results (bench/results/*.json) and regenerates docs/benchmarks.md with its plots.

    python -m bench.run                     # BENCH_SCALE=quick (default) or full
    python -m bench.run --only 3,4          # some benchmarks
    python -m bench.run --report-only       # regenerate the report from latest.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from bench.common import ROOT, Context, Result, machine, save

MODULES = {
    1: "bench.b1_feed",
    2: "bench.b2_inference",
    3: "bench.b3_transport",
    4: "bench.b4_train_step",
    5: "bench.b5_end_to_end",
    6: "bench.b6_averaging",
    7: "bench.b7_models",
    8: "bench.b8_target",
    9: "bench.b9_tuning",
    10: "bench.b10_linalg",
}
RESULTS = ROOT / "bench" / "results"


def main() -> None:
    # Spark's Python workers and torchrun's processes unpickle functions defined in
    # bench/: they need the repository on their path too.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--scale", default=os.environ.get("BENCH_SCALE", "quick"), choices=["quick", "full"]
    )
    parser.add_argument("--only", default=os.environ.get("BENCH_ONLY", ""))
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if args.report_only:
        from bench.report import write_report

        write_report(json.loads((RESULTS / "latest.json").read_text()))
        return
    wanted = [int(x) for x in args.only.split(",") if x] or list(MODULES)
    # Five repetitions even when quick: spreads on small VMs reach 2-4x, and a median
    # of three moves with one outlier. A quick run still takes well under 15 minutes.
    repeats = args.repeats or 5
    ctx = Context(
        scale=args.scale, repeats=repeats, work=Path(tempfile.mkdtemp(prefix="stoker-bench-"))
    )
    info = machine()
    info["scale"] = args.scale
    info["repeats"] = repeats
    results: list[Result] = []
    failures: dict[str, str] = {}
    started = time.perf_counter()
    for n in wanted:
        name = MODULES[n]
        print(f"== benchmark {n} ({name})", flush=True)
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(name)
            got = module.run(ctx)
            results.extend(got)
            for r in got:
                print(f"   {r.case} | {r.variant}: {r.value:,.3f} {r.unit}", flush=True)
        except Exception:  # noqa: BLE001 - one failing benchmark must not lose the others
            failures[name] = traceback.format_exc()
            print(failures[name], file=sys.stderr, flush=True)
        print(f"   ({time.perf_counter() - t0:.0f} s)", flush=True)
    info["seconds"] = round(time.perf_counter() - started)
    info["failures"] = failures
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = RESULTS / f"{stamp}-{args.scale}.json"
    save(results, info, path)
    latest = RESULTS / "latest.json"
    previous = json.loads(latest.read_text()) if latest.exists() else None
    merged = merge(previous, {"machine": info, "results": [asdict(r) for r in results]})
    latest.write_text(json.dumps(merged, indent=1))
    from bench.report import write_report

    write_report(merged)
    print(f"results: {path}; report: docs/benchmarks.md ({info['seconds']} s)")
    if failures:
        sys.exit(f"{len(failures)} benchmark(s) failed: {', '.join(failures)}")


def merge(previous: dict | None, current: dict) -> dict:
    """Results of benchmarks not rerun now stay in the report, with their machine."""
    if not previous:
        return current
    rerun = {r["bench"] for r in current["results"]}
    kept = [r for r in previous["results"] if r["bench"] not in rerun]
    for r in kept:
        r.setdefault("extra", {})["from_earlier_run"] = previous["machine"].get("date", "")
    current["machine"]["date"] = time.strftime("%Y-%m-%d %H:%M")
    current["results"] = kept + current["results"]
    return current


if __name__ == "__main__":
    main()
