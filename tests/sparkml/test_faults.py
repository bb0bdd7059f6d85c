"""Faults injected into a running application on local-cluster[2,1,1024]: the
node's stoker server or one executor JVM is killed (SIGKILL) in the middle of a
fit, a transform and a SQL query, and the server is stopped (SIGSTOP) in the
middle of a fit. Each ends with what the fault-free run gives. Every test kills
only processes of this session's own run directory (its server, its executors),
found by pid, never by name.

A stopped server is noticed within spark.stoker.server.timeoutSeconds (10 here,
conftest.py): its calls fail, Spark retries the tasks, and the next task finds
the server silent, kills it and starts another (LocalServer.stopSilent)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import stoker
from stoker.spark import StokerEstimator
from stoker.state import torch_state_dict

from sparkml.tables import customers

MLP = {"type": "mlp", "hidden": [32, 32], "num_classes": 2}
ROUNDS = 8


def estimator(**kw) -> StokerEstimator:
    params = {
        "featureCols": ["x", "y"],
        "labelCol": "label",
        "model": MLP,
        "learningRate": 0.01,
        "batchSize": 64,
        "localEpochs": 3,
        "rounds": ROUNDS,
        "seed": 5,
    }
    params.update(kw)
    return StokerEstimator(**params)


@pytest.fixture(scope="module")
def data(spark):
    table = customers(spark, 4000, 13)
    train, test = table.randomSplit([0.8, 0.2], seed=17)
    train = train.repartition(4, "id").sortWithinPartitions("id").cache()
    test = test.orderBy("id").cache()
    train.count(), test.count()
    return train, test


@pytest.fixture(scope="module")
def baseline(data):
    """The fault-free fit, and its predictions on the test rows."""
    model = estimator().fit(data[0])
    predictions = {r.id: r.prediction for r in model.transform(data[1]).collect()}
    return model, predictions


# --- the processes of this session's run directory -------------------------------


def run_dir(spark) -> Path:
    return Path(spark.conf.get("spark.stoker.server.runDir"))


def properties(spark) -> dict[str, str]:
    text = (run_dir(spark) / "server.properties").read_text()
    return dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#")
    )


def server_pid(spark) -> int:
    return int(properties(spark)["pid"])


def server_client(spark) -> stoker.Client:
    p = properties(spark)
    # java.util.Properties escapes ':' in values.
    uri = p["uri"].replace("\\:", ":")
    token = Path(p["token_file"].replace("\\:", ":")).read_text().strip()
    return stoker.Client(uri, token=token, liveness_s=5)


def executor_pids(spark) -> list[int]:
    """Executor JVMs that use this run directory's server (they register there)."""
    pids = []
    for entry in (run_dir(spark) / "users").iterdir():
        try:
            cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if b"CoarseGrainedExecutorBackend" in cmdline:
            pids.append(int(entry.name))
    return sorted(pids)


def live_executors(spark) -> int:
    """Executors the cluster manager runs now (a replacement has joined once this
    is back to two; it registers with the server only when a task uses it)."""
    infos = spark.sparkContext._jsc.sc().statusTracker().getExecutorInfos()
    return len(infos) - 1  # the driver is listed too


def rounds_done(spark, uid: str) -> int:
    text = spark.sparkContext._jvm.dev.stoker.spark.Progress.json(uid)
    return json.loads(text)["done"] if text else 0


def wait_for(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Background(threading.Thread):
    """Runs `work` (a Spark action) while the test injects a fault."""

    def __init__(self, work) -> None:
        super().__init__(daemon=True)
        self.work, self.result, self.error = work, None, None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.work()
        except BaseException as e:  # noqa: BLE001 - re-raised by outcome()
            self.error = e

    def outcome(self, timeout: float = 600.0):
        self.join(timeout)
        assert not self.is_alive(), "the Spark action did not finish: it hangs"
        if self.error is not None:
            raise self.error
        return self.result


def assert_same_state(a: bytes, b: bytes) -> None:
    x, y = torch_state_dict(a), torch_state_dict(b)
    assert x.keys() == y.keys()
    for name in x:
        assert np.allclose(x[name].numpy(), y[name].numpy(), atol=1e-6), name


# --- faults in the middle of a fit --------------------------------------------------


def fit_with_fault(spark, data, fault) -> tuple[object, float]:
    """Starts a fit, applies `fault` once two rounds are done; returns the model and
    the seconds from the fault to the end of the fit."""
    est = estimator()
    fit = Background(lambda: est.fit(data[0]))
    wait_for(lambda: rounds_done(spark, est.uid) >= 2 or not fit.is_alive(), "round 2")
    assert fit.is_alive() and rounds_done(spark, est.uid) < ROUNDS, "the fit ended before the fault"
    fault()
    faulted = time.monotonic()
    model = fit.outcome()
    return model, time.monotonic() - faulted


def running(pid: int) -> bool:
    """Whether `pid` is a process that has not exited (a zombie has)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_server_killed_mid_fit(spark, data, baseline):
    killed = server_pid(spark)
    model, _ = fit_with_fault(spark, data, lambda: os.kill(killed, signal.SIGKILL))
    assert server_pid(spark) != killed, "no new server was started: the fault came too late"
    assert len(model.history) == ROUNDS
    assert_same_state(model.state, baseline[0].state)


def test_executor_killed_mid_fit(spark, data, baseline):
    executors = executor_pids(spark)
    assert len(executors) == 2, executors
    model, _ = fit_with_fault(spark, data, lambda: os.kill(executors[0], signal.SIGKILL))
    assert len(model.history) == ROUNDS
    assert_same_state(model.state, baseline[0].state)
    assert executors[0] not in executor_pids(spark)
    wait_for(lambda: live_executors(spark) == 2, "a replacement executor")


def test_server_stopped_mid_fit_fails_its_tasks_in_time_and_the_fit_recovers(spark, data, baseline):
    stopped = server_pid(spark)
    try:
        model, after_fault = fit_with_fault(spark, data, lambda: os.kill(stopped, signal.SIGSTOP))
        # The next task found it silent and killed it: nothing stopped is left.
        replaced = server_pid(spark) != stopped and not running(stopped)
    finally:
        # If the fit failed, leave no stopped process behind (it is ours: this
        # session's server, by the pid its run directory records).
        try:
            os.kill(stopped, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert replaced
    assert len(model.history) == ROUNDS
    assert_same_state(model.state, baseline[0].state)
    # The round's tasks failed within the 10 s timeout, their retries found the
    # server silent within another 10 s, and the fit went on. A bound, not a speed
    # figure: with the 50 s ping timeout of before, and each retry asking the
    # silent server again, this took minutes.
    assert after_fault < 90, after_fault


# --- faults in the middle of inference ---------------------------------------------


def slowed(df, parts: int = 8):
    """`df` in `parts` partitions that each take a moment, so that inference over
    it is still running when the fault comes."""

    def slow(batches):
        time.sleep(0.4)
        yield from batches

    return df.repartition(parts).mapInPandas(slow, df.schema)


def predicted_rows(spark) -> int:
    try:
        return server_client(spark).stats()["rows_predicted"]
    except stoker.StokerError:
        return 0


def with_fault_once_predicting(spark, action, fault):
    before = predicted_rows(spark)
    work = Background(action)
    wait_for(lambda: predicted_rows(spark) > before or not work.is_alive(), "the first predictions")
    assert work.is_alive(), "the query ended before the fault"
    fault()
    return work.outcome()


def test_server_killed_mid_transform(spark, data, baseline):
    model, expected = baseline
    killed = server_pid(spark)
    rows = with_fault_once_predicting(
        spark,
        lambda: model.transform(slowed(data[1])).select("id", "prediction").collect(),
        lambda: os.kill(killed, signal.SIGKILL),
    )
    assert server_pid(spark) != killed
    assert {r.id: r.prediction for r in rows} == expected


def predict_query(model, data, name: str) -> str:
    """A `stoker_predict` query over the slowed test rows, the model registered as `name`."""
    model.register(name)
    slowed(data[1]).createOrReplaceTempView(f"{name}_people")
    return f"SELECT id, stoker_predict('{name}', x, y) AS p FROM {name}_people"


def test_executor_killed_mid_sql_query(spark, data, baseline):
    model, expected = baseline
    query = predict_query(model, data, "faults_sql")
    executors = executor_pids(spark)
    assert executors, "no executor uses this run directory's server"
    rows = with_fault_once_predicting(
        spark,
        lambda: spark.sql(query).collect(),
        lambda: os.kill(executors[-1], signal.SIGKILL),
    )
    assert {r.id: r.p for r in rows} == expected
    wait_for(lambda: live_executors(spark) == 2, "a replacement executor")


def test_server_killed_mid_sql_query(spark, data, baseline):
    model, expected = baseline
    query = predict_query(model, data, "faults_sql2")
    killed = server_pid(spark)
    rows = with_fault_once_predicting(
        spark, lambda: spark.sql(query).collect(), lambda: os.kill(killed, signal.SIGKILL)
    )
    assert {r.id: r.p for r in rows} == expected
