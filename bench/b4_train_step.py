"""Benchmark 4: the training step, stoker's engine against a plain PyTorch loop.

Same model (MLP 32-256-256-2), optimizer (Adam, lr 1e-3), loss (cross-entropy) and
data (float32 features in memory), samples per second at batch sizes 64, 256 and
4096. stoker trains a partition cached in `stoker serve` (one `train_round`, timed by
the server: shuffling, batching, forward, backward, optimizer step); the peer is the
eager loop a PyTorch user writes over tensors already in memory (a random
permutation per epoch, then zero_grad / forward / loss / backward / step), with the
same number of threads. Both sit on the same libtorch.
"""

from __future__ import annotations

import json
import time

from bench.common import Context, Result, mlp, side_by_side, summarize

FEATURES = 32
BENCH = "4 Training step"
SPEC = {"type": "mlp", "hidden": [256, 256], "num_classes": 2}


def run(ctx: Context) -> list[Result]:
    import numpy as np
    import pyarrow as pa
    import stoker
    import torch

    threads = torch.get_num_threads()
    rng = np.random.default_rng(0)
    results: list[Result] = []
    with stoker.serve(device="cpu") as server:
        client = server.client()
        for batch in (64, 256, 4096):
            rows = ctx.size(20_000 if batch == 64 else 60_000, 200_000)
            x = rng.standard_normal((rows, FEATURES), dtype=np.float32)
            y = (x[:, 0] * x[:, 1] > 0).astype(np.int64)
            table = pa.table({**{f"f{i}": x[:, i] for i in range(FEATURES)}, "y": y})
            job = f"bench-step-{batch}"
            client.create_job(
                job,
                features=[f"f{i}" for i in range(FEATURES)],
                label="y",
                spec=SPEC,
                optimizer={"name": "adam", "lr": 1e-3},
                batch_size=batch,
                seed=1,
            )
            client.put_partition(job, 0, table)
            round_no = iter(range(10**6))

            def engine(job=job, rounds=round_no) -> float:
                result, _ = client.train_round(job, 0, next(rounds), epochs=1)
                return result["samples"] / result["seconds"]

            xt, yt = torch.from_numpy(x), torch.from_numpy(y)

            def pytorch(batch=batch, xt=xt, yt=yt) -> float:
                torch.manual_seed(1)
                model = mlp(FEATURES, [256, 256], 2)
                opt = torch.optim.Adam(model.parameters(), lr=1e-3)
                loss_fn = torch.nn.CrossEntropyLoss()
                started = time.perf_counter()
                order = torch.randperm(xt.shape[0])
                for i in range(0, xt.shape[0], batch):
                    idx = order[i : i + batch]
                    opt.zero_grad()
                    loss = loss_fn(model(xt[idx]), yt[idx])
                    loss.backward()
                    opt.step()
                return xt.shape[0] / (time.perf_counter() - started)

            samples = side_by_side(
                {"stoker engine (train_round)": engine, "PyTorch eager loop": pytorch},
                ctx.repeats,
            )
            results += summarize(
                BENCH,
                f"batch {batch}, {rows:,} rows",
                samples,
                "samples/s",
                {"stoker engine (train_round)": "stoker", "PyTorch eager loop": "peer"},
                extra={"PyTorch eager loop": {"threads": threads}},
            )
            client.drop_job(job)
    return results


if __name__ == "__main__":  # a quick look without the harness
    import tempfile
    from pathlib import Path

    for r in run(Context("quick", 1, Path(tempfile.mkdtemp()))):
        print(json.dumps([r.case, r.variant, round(r.value)]))
