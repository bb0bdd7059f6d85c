"""The Python examples run end to end (small sizes where they have a knob), so
`make demo` and the digits example cannot rot."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_example(name: str, **env: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)],
        check=False,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "STOKER_PROGRESS": "0", **env},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_digits_torchscript_cnn_reaches_95_percent_in_pytorch():
    out = run_example("digits_torchscript.py")
    accuracy = float(re.search(r"held-out accuracy in PyTorch: ([0-9.]+)", out).group(1))
    assert accuracy >= 0.95, out


def test_quickstart_beats_its_baseline_and_writes_its_outputs():
    out = run_example("quickstart.py", DEMO_CUSTOMERS="30000")
    stoker_line = re.search(r"stoker MLP 64-64\s+([0-9.]+)\s+([0-9.]+)", out)
    baseline_line = re.search(r"logistic regression\s+([0-9.]+)\s+([0-9.]+)", out)
    assert stoker_line and baseline_line, out
    assert float(stoker_line.group(2)) > float(baseline_line.group(2)), out
    assert (ROOT / "examples" / "out" / "quickstart_loss.png").exists()
    assert (ROOT / "examples" / "out" / "quickstart_predictions.parquet").exists()
