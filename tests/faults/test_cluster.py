"""Faults and cluster managers that need whole applications, run as child
processes of this test (each test kills only the pids it started):

- the driver of a fit is killed (SIGKILL) after its third checkpoint; a new
  application resumes from the checkpoint directory and ends with the state of an
  uninterrupted run, and the node's server the dead driver started stops by
  itself once no process uses it;
- a Spark standalone cluster (a master and two workers started from pyspark's own
  jars with spark-class) runs the quickstart pipeline, so a real cluster manager
  with executors on two workers is exercised, not only local-cluster."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from stoker.state import torch_state_dict

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("driver_app.py")


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


def app_env(run_dir: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "STOKER_RUN_DIR": str(run_dir),
        "STOKER_PROGRESS": "0",
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_HOME": str(spark_home()),
        **extra,
    }


def wait_for(condition, what: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def server_pid(run_dir: Path) -> int | None:
    info = run_dir / "server.properties"
    if not info.exists():
        return None
    m = re.search(r"^pid=(\d+)$", info.read_text(), re.MULTILINE)
    return int(m.group(1)) if m else None


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


# --- the driver dies mid-fit ---------------------------------------------------------


def run_driver(run_dir: Path, checkpoints: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(DRIVER), str(checkpoints), str(out)],
        env=app_env(run_dir),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_a_fit_whose_driver_was_killed_resumes_in_a_new_application(tmp_path):
    run_dir = tmp_path / "run"
    straight = run_driver(run_dir, tmp_path / "ckpt-straight", tmp_path / "straight.state")
    assert straight.returncode == 0, straight.stderr[-3000:]

    checkpoints = tmp_path / "ckpt"
    driver = subprocess.Popen(
        [sys.executable, str(DRIVER), str(checkpoints), str(tmp_path / "killed.state")],
        env=app_env(run_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: (checkpoints / "round-00002.safetensors").exists() or driver.poll() is not None,
            "the third checkpoint",
        )
        assert driver.poll() is None, "the fit ended before its driver was killed"
        server = server_pid(run_dir)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    finally:
        stop(driver)
    assert not (tmp_path / "killed.state").exists()
    assert not (checkpoints / f"round-{9:05d}.safetensors").exists()
    # The driver's JVM (its child, which exits when its stdin closes) and then the
    # node's server, which no live process uses any more, go away by themselves.
    if server is not None:
        wait_for(lambda: not alive(server), "the dead application's server to stop", 60)

    resumed = run_driver(run_dir, checkpoints, tmp_path / "resumed.state")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "rounds 10" in resumed.stdout
    a = torch_state_dict((tmp_path / "straight.state").read_bytes())
    b = torch_state_dict((tmp_path / "resumed.state").read_bytes())
    assert a.keys() == b.keys()
    for name in a:
        assert np.allclose(a[name].numpy(), b[name].numpy(), atol=1e-6), name


# --- a standalone cluster --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spark_class(cls: str, *args: str, log: Path, env: dict[str, str]) -> subprocess.Popen:
    # spark-class execs java, so the pid is the daemon's own.
    with open(log, "wb") as out:
        return subprocess.Popen(
            [str(spark_home() / "bin" / "spark-class"), cls, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


@pytest.fixture
def standalone(tmp_path):
    """A master and two one-core workers on loopback; yields the master URL."""
    run_dir = tmp_path / "run"
    env = app_env(run_dir, SPARK_LOCAL_IP="127.0.0.1", SPARK_WORKER_DIR=str(tmp_path / "work"))
    port = free_port()
    url = f"spark://127.0.0.1:{port}"
    daemons = [
        spark_class(
            "org.apache.spark.deploy.master.Master",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--webui-port",
            str(free_port()),
            log=tmp_path / "master.log",
            env=env,
        )
    ]
    try:
        for i in range(2):
            daemons.append(
                spark_class(
                    "org.apache.spark.deploy.worker.Worker",
                    url,
                    "--host",
                    "127.0.0.1",
                    "--cores",
                    "1",
                    "--memory",
                    "1536m",
                    "--webui-port",
                    str(free_port()),
                    "--work-dir",
                    str(tmp_path / f"work{i}"),
                    log=tmp_path / f"worker{i}.log",
                    env=env,
                )
            )
        for i in range(2):
            log = tmp_path / f"worker{i}.log"
            wait_for(
                lambda log=log: "Successfully registered with master" in log.read_text(),
                f"worker {i} to register",
                120,
            )
        yield url, tmp_path, run_dir
    finally:
        # Workers first: a worker stopping kills the executors it launched.
        for daemon in reversed(daemons):
            stop(daemon)


def test_quickstart_runs_on_a_standalone_cluster(standalone):
    url, tmp_path, run_dir = standalone
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        env=app_env(run_dir, MASTER=url, DEMO_CUSTOMERS="20000"),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stoker_line = re.search(r"stoker MLP 64-64\s+([0-9.]+)\s+([0-9.]+)", proc.stdout)
    baseline_line = re.search(r"logistic regression\s+([0-9.]+)\s+([0-9.]+)", proc.stdout)
    assert stoker_line and baseline_line, proc.stdout
    assert float(stoker_line.group(2)) > float(baseline_line.group(2)), proc.stdout
    # Both workers ran an executor for the application (its directory per worker).
    for i in range(2):
        apps = list((tmp_path / f"work{i}").glob("app-*/*/stderr"))
        assert apps, f"worker {i} ran no executor"
