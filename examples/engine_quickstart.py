"""stoker's engine from the command line, end to end (what `make demo-engine` runs).

Generates a churn-like table (fixed seed), trains an MLP and a logistic
regression baseline with `stoker train`, scores held-out rows with
`stoker predict`, and prints accuracy, AUC, timings and rows/s. Outputs land
in examples/out/: Parquet predictions, trained states, and a loss plot.
The Spark quickstart (examples/quickstart.py) builds on the same engine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "examples" / "out"
STOKER = os.environ.get("STOKER_BIN", str(ROOT / "target" / "release" / "stoker"))
ROWS = int(os.environ.get("DEMO_ROWS", "400000"))
FEATURES = [
    "tenure_months",
    "monthly_spend",
    "support_calls",
    "logins_30d",
    "discount",
    "late_payments",
    "plan_tier",
    "region_risk",
]


def make_customers(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    tenure = rng.gamma(2.0, 12.0, n)
    spend = rng.lognormal(3.5, 0.5, n)
    calls = rng.poisson(1.5, n).astype(np.float64)
    logins = rng.poisson(12, n).astype(np.float64)
    discount = rng.uniform(0, 0.3, n)
    late = rng.poisson(0.4, n).astype(np.float64)
    tier = rng.integers(0, 3, n).astype(np.float64)
    region = rng.normal(0, 1, n)
    # Churn depends on interactions no linear model captures well.
    score = (
        1.2 * np.tanh((calls - 2.5) * (1.0 - logins / 20))
        + 0.9 * (late > 1) * (spend > 40)
        - 0.05 * np.minimum(tenure, 36)
        + 0.8 * np.sin(region * 2.0) * (tier - 1)
        - 2.0 * discount * (tier == 2)
        + 0.3 * rng.normal(size=n)
    )
    churn = (score > np.quantile(score, 0.7)).astype(np.int64)
    cols = [tenure, spend, calls, logins, discount, late, tier, region]
    # Standardise so the default optimizer settings behave.
    cols = [((c - c.mean()) / c.std()).astype(np.float32) for c in cols]
    return pa.table({**dict(zip(FEATURES, cols)), "churned": churn})


def auc(y: np.ndarray, p: np.ndarray) -> float:
    order = np.argsort(p)
    ranks = np.empty(len(p))
    ranks[order] = np.arange(1, len(p) + 1)
    pos = y == 1
    return (ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum())


def stoker(command: str, data: str, name: str, *args: str) -> float:
    """Seconds `stoker <command>` takes on examples/out/<data> with the model <name>.json."""
    start = time.perf_counter()
    model = str(OUT / f"{name}.json")
    subprocess.run(
        [STOKER, command, "--data", str(OUT / data), "--model", model, *args], check=True
    )
    return time.perf_counter() - start


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    table = make_customers(ROWS, seed=7)
    split = int(ROWS * 0.8)
    pq.write_table(table.slice(0, split), OUT / "train.parquet")
    pq.write_table(table.slice(split), OUT / "test.parquet")
    gen_s = time.perf_counter() - t0
    print(f"generated {ROWS:,} customers ({split:,} train) in {gen_s:.1f}s")

    specs = {
        "mlp": {"type": "mlp", "hidden": [64, 32], "dropout": 0.1, "num_classes": 2},
        "baseline": {"type": "logistic_regression", "num_classes": 2},
    }
    results = {}
    for name, spec in specs.items():
        (OUT / f"{name}.json").write_text(json.dumps(spec))
        print(f"\n== {name}: {json.dumps(spec)}")
        train_s = stoker(
            "train",
            "train.parquet",
            name,
            "--features",
            ",".join(FEATURES),
            "--label",
            "churned",
            "--epochs",
            "8",
            "--batch-size",
            "512",
            "--lr",
            "0.003",
            "--out",
            str(OUT / f"{name}.safetensors"),
            "--history",
            str(OUT / f"{name}_history.json"),
        )
        predict_s = stoker(
            "predict",
            "test.parquet",
            name,
            "--state",
            str(OUT / f"{name}.safetensors"),
            "--out",
            str(OUT / f"{name}_pred.parquet"),
        )
        pred = pq.read_table(OUT / f"{name}_pred.parquet")
        y = pred["churned"].to_numpy()
        p1 = np.stack(pred["probability"].to_numpy(zero_copy_only=False))[:, 1]
        results[name] = {
            "accuracy": float(np.mean(pred["prediction"].to_numpy() == y)),
            "auc": float(auc(y, p1)),
            "train_s": train_s,
            "predict_s": predict_s,
        }

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        for name in specs:
            hist = json.loads((OUT / f"{name}_history.json").read_text())
            ax.plot([h["epoch"] for h in hist], [h["loss"] for h in hist], marker="o", label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss")
        ax.set_title("stoker: training loss per epoch")
        ax.legend()
        fig.tight_layout()
        fig.savefig(OUT / "loss.png", dpi=110)
        plot = OUT / "loss.png"
    except ImportError:
        plot = None

    test_rows = ROWS - split
    print("\n== summary")
    print(
        f"{'model':<10}{'accuracy':>10}{'AUC':>8}{'train s':>10}{'train rows/s':>15}"
        f"{'predict s':>11}{'predict rows/s':>16}"
    )
    for name, r in results.items():
        print(
            f"{name:<10}{r['accuracy']:>10.4f}{r['auc']:>8.4f}{r['train_s']:>10.2f}"
            f"{8 * split / r['train_s']:>15,.0f}{r['predict_s']:>11.2f}"
            f"{test_rows / r['predict_s']:>16,.0f}"
        )
    print(f"\npredictions: {OUT}/mlp_pred.parquet" + (f"\nloss plot:   {plot}" if plot else ""))
    gain = results["mlp"]["auc"] - results["baseline"]["auc"]
    print(f"MLP AUC over the logistic baseline: {gain:+.4f}")
    return 0 if results["mlp"]["auc"] > results["baseline"]["auc"] else 1


if __name__ == "__main__":
    sys.exit(main())
