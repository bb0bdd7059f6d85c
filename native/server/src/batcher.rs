//! Dynamic batching: one worker thread per loaded model owns the model and
//! runs every forward pass for it. Streams convert their Arrow batches to
//! feature matrices in parallel and queue them here; the worker takes the
//! first queued request and every request queued behind it (up to `max_rows`
//! rows), runs one forward pass over the concatenation, and hands each
//! request its slice of the outputs. Requests that arrive while a pass runs
//! queue up and go together into the next one, so eight executors feeding one
//! GPU get GPU-sized batches without anyone waiting on a timer.
//!
//! `max_wait` (default zero) additionally holds a pass open for stragglers.
//! It was 2 ms: every request of a lone stream then waited the full 2 ms,
//! which for 10k-row batches of a small model cost a fifth of `transform`'s
//! throughput through Spark (bench/notes.md).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stoker_core::{Error, Outputs, Result};
use stoker_engine::torch::internal;
use stoker_engine::Model;
use tch::Tensor;
use tokio::sync::oneshot;

use crate::histogram::{Histogram, ROW_BOUNDS};

/// Limits of one coalesced forward pass.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_rows: usize,
    pub max_wait: Duration,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_rows: 65_536,
            max_wait: Duration::ZERO,
        }
    }
}

/// Counters of a model's batching, for stats.
pub struct BatchStats {
    /// Rows per forward pass.
    pub pass_rows: Histogram,
    /// Requests queued (one per stream batch).
    pub requests: AtomicU64,
    /// Forward passes run.
    pub forward_passes: AtomicU64,
    pub rows: AtomicU64,
    /// The largest number of rows in one forward pass.
    pub max_pass_rows: AtomicU64,
    /// The most requests merged into one forward pass.
    pub max_pass_requests: AtomicU64,
}

impl Default for BatchStats {
    fn default() -> Self {
        BatchStats {
            pass_rows: Histogram::new(ROW_BOUNDS),
            requests: AtomicU64::new(0),
            forward_passes: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            max_pass_rows: AtomicU64::new(0),
            max_pass_requests: AtomicU64::new(0),
        }
    }
}

struct Request {
    features: Tensor,
    rows: usize,
    reply: oneshot::Sender<Result<Outputs>>,
}

/// The handle streams use; dropping the last one stops the worker and
/// frees the model.
pub struct Batcher {
    queue: Sender<Request>,
}

impl Batcher {
    /// Starts the worker thread that owns `model`.
    pub fn start(
        model: Model,
        limits: BatchLimits,
        stats: Arc<BatchStats>,
        name: String,
    ) -> Result<Batcher> {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name(format!("stoker-model-{name}"))
            .spawn(move || worker(model, rx, limits, stats))
            .map_err(|e| Error::internal(format!("starting the batching thread: {e}")))?;
        Ok(Batcher { queue: tx })
    }

    /// Queues a `[rows, width]` feature matrix and waits for its outputs.
    pub async fn predict(&self, features: Tensor) -> Result<Outputs> {
        let rows = features.size().first().copied().unwrap_or(0) as usize;
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Request {
                features,
                rows,
                reply,
            })
            .map_err(|_| Error::internal("the model's batching thread has stopped"))?;
        answer
            .await
            .map_err(|_| Error::internal("the model's batching thread dropped a request"))?
    }
}

fn worker(mut model: Model, rx: Receiver<Request>, limits: BatchLimits, stats: Arc<BatchStats>) {
    while let Ok(first) = rx.recv() {
        let mut pending = vec![first];
        let mut rows = pending[0].rows;
        let deadline = Instant::now() + limits.max_wait;
        while rows < limits.max_rows {
            let left = deadline.saturating_duration_since(Instant::now());
            // What is already queued joins without waiting; only a nonzero
            // `max_wait` waits for more.
            let next = if left.is_zero() {
                rx.try_recv().ok()
            } else {
                rx.recv_timeout(left).ok()
            };
            let Some(r) = next else { break };
            rows += r.rows;
            pending.push(r);
        }
        stats
            .requests
            .fetch_add(pending.len() as u64, Ordering::Relaxed);
        stats.forward_passes.fetch_add(1, Ordering::Relaxed);
        stats.rows.fetch_add(rows as u64, Ordering::Relaxed);
        stats
            .max_pass_rows
            .fetch_max(rows as u64, Ordering::Relaxed);
        stats
            .max_pass_requests
            .fetch_max(pending.len() as u64, Ordering::Relaxed);
        stats.pass_rows.observe(rows as f64);
        // A panic inside libtorch glue must not kill the thread that owns
        // the model: the requests of this pass fail (their reply channels
        // drop) and the worker goes on serving.
        let pass =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&mut model, pending)));
        if pass.is_err() {
            tracing::error!("a forward pass panicked; its requests failed");
        }
    }
}

/// One forward pass for several requests. A request whose features the
/// model rejects fails alone: the pass is retried without it.
fn run(model: &mut Model, pending: Vec<Request>) {
    if pending.len() == 1 {
        let r = pending.into_iter().next();
        if let Some(r) = r {
            let out = model.predict_tensor(&r.features);
            let _ = r.reply.send(out);
        }
        return;
    }
    let merged = Tensor::f_cat(&pending.iter().map(|r| &r.features).collect::<Vec<_>>(), 0)
        .map_err(internal("concatenating batches"));
    let outputs = merged.and_then(|x| model.predict_tensor(&x));
    let expected: usize = pending.iter().map(|r| r.rows).sum();
    match outputs {
        Ok(out) if out.values.len() == expected * out.task.outputs() => {
            let width = out.task.outputs();
            let mut at = 0;
            for r in pending {
                let end = at + r.rows * width;
                let _ = r.reply.send(Ok(Outputs {
                    task: out.task,
                    values: out.values[at..end].to_vec(),
                }));
                at = end;
            }
        }
        _ => {
            // Something in the merged batch failed (a width mismatch, say):
            // run each request on its own so only the bad one fails.
            for r in pending {
                let out = model.predict_tensor(&r.features);
                let _ = r.reply.send(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stoker_core::Loss;
    use stoker_engine::{ModelSource, ModelSpec};
    use tch::{Device, Kind};

    fn model() -> Model {
        let spec = ModelSpec::from_json(r#"{"type":"mlp","hidden":[8]}"#).unwrap();
        Model::build(&ModelSource::Spec(spec), Loss::Mse, 4, Device::Cpu, 1).unwrap()
    }

    fn request(rows: i64) -> (Request, oneshot::Receiver<Result<Outputs>>) {
        let (reply, answer) = oneshot::channel();
        let features = Tensor::ones([rows, 4], (Kind::Float, Device::Cpu));
        let rows = rows as usize;
        (
            Request {
                features,
                rows,
                reply,
            },
            answer,
        )
    }

    /// Runs the worker over requests queued before it starts (as requests that
    /// arrive during a pass are queued for the next), and returns its stats.
    fn serve_queued(limits: BatchLimits, sizes: &[i64]) -> (Arc<BatchStats>, Vec<usize>) {
        let (tx, rx) = mpsc::channel();
        let answers: Vec<_> = sizes
            .iter()
            .map(|&n| {
                let (r, a) = request(n);
                tx.send(r).unwrap();
                a
            })
            .collect();
        drop(tx);
        let stats = Arc::new(BatchStats::default());
        worker(model(), rx, limits, stats.clone());
        let rows = answers
            .into_iter()
            .map(|a| a.blocking_recv().unwrap().unwrap().values.len())
            .collect();
        (stats, rows)
    }

    fn no_wait(max_rows: usize) -> BatchLimits {
        BatchLimits {
            max_rows,
            max_wait: Duration::ZERO,
        }
    }

    #[test]
    fn queued_requests_share_a_pass_without_a_wait() {
        let (stats, rows) = serve_queued(no_wait(65_536), &[3, 5, 7]);
        assert_eq!(rows, vec![3, 5, 7], "each request gets its own rows back");
        assert_eq!(stats.forward_passes.load(Ordering::Relaxed), 1);
        assert_eq!(stats.max_pass_requests.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_pass_stops_at_max_rows() {
        let (stats, rows) = serve_queued(no_wait(8), &[5, 5, 5]);
        assert_eq!(rows, vec![5, 5, 5]);
        // 5 + 5 reaches the limit; the third request runs in a pass of its own.
        assert_eq!(stats.forward_passes.load(Ordering::Relaxed), 2);
        assert_eq!(stats.max_pass_rows.load(Ordering::Relaxed), 10);
    }
}
