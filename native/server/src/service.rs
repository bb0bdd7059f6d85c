//! The service's domain operations: caching partitions (DoPut), predicting
//! (DoExchange) and reading states (DoGet), over the job and model
//! registries, with typed keys in and stoker `Result`s out. Nothing here
//! knows gRPC: handler.rs authorizes, decodes descriptors and maps errors
//! to statuses. Compute runs on blocking threads so the gRPC runtime keeps
//! serving other requests meanwhile.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use arrow::array::RecordBatch;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use stoker_core::predictions::{append, OutputColumns};
use stoker_core::protocol::{ModelKey, PartitionKey, StateTicket};
use stoker_core::{Error, ErrorKind, Result};
use stoker_engine::DeviceSpec;

use crate::jobs::Jobs;
use crate::model_root::ModelRoot;
use crate::models::{Models, ServedModel};
use crate::stats::Counters;

/// Shared server state.
pub struct Service {
    pub jobs: Jobs,
    pub models: Models,
    pub device: DeviceSpec,
    pub token: Option<String>,
    pub max_message_bytes: usize,
    /// Where the model files clients name may be read from.
    pub model_root: ModelRoot,
    /// Bound on loading and probing a model being registered.
    pub model_load_timeout: std::time::Duration,
    pub counters: Counters,
}

/// Record batches as they arrive or leave, each a stoker `Result`.
pub type Batches = BoxStream<'static, Result<RecordBatch>>;

/// Runs `f` on a blocking thread.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("worker thread failed: {e}")))?
}

impl Service {
    /// Caches one partition of a job (DoPut): the JSON answer names its
    /// rows and bytes, and whether it replaced an earlier upload.
    pub async fn put(
        self: Arc<Self>,
        key: PartitionKey,
        mut batches: Batches,
    ) -> Result<serde_json::Value> {
        let started = std::time::Instant::now();
        // Fail before reading any data when the job does not exist.
        let job = self.jobs.get(&key.job)?;
        let mut received: Vec<RecordBatch> = Vec::new();
        let mut bytes = 0usize;
        let budget = self.jobs.budget();
        // Partitions arriving at once share the budget while they stream in:
        // eight executors uploading together cannot hold eight budgets.
        let mut reserved = self.jobs.reserve_incoming();
        while let Some(batch) = batches.next().await {
            let batch = batch?;
            // Logical sizes: decoded IPC arrays share one message buffer, so
            // get_array_memory_size would count it once per column.
            let mut size = 0;
            for c in batch.columns() {
                size += c.to_data().get_slice_memory_size().map_err(Error::from)?;
            }
            bytes += size;
            if bytes > budget || !reserved.add(size) {
                return Err(Error::new(
                    ErrorKind::ResourceExhausted,
                    format!(
                        "partition {} of job '{}' does not fit the cache budget of {budget} bytes (--cache-mb) \
                         beside the partitions arriving at the same time",
                        key.partition, key.job
                    ),
                ));
            }
            received.push(batch);
        }
        let rows: usize = received.iter().map(|b| b.num_rows()).sum();
        let k = key.clone();
        let job_for_insert = job.clone();
        let partition = blocking(move || job.prepare(k, &received)).await?;
        let stored = partition.bytes;
        let replaced = self.jobs.insert(&job_for_insert, partition)?;
        self.counters
            .rows_in
            .fetch_add(rows as u64, Ordering::Relaxed);
        self.counters.partitions_in.fetch_add(1, Ordering::Relaxed);
        self.counters
            .put_latency
            .observe(started.elapsed().as_secs_f64());
        tracing::info!(job = %key.job, partition = key.partition, version = %key.version, rows, bytes = stored, replaced, "cached partition");
        Ok(serde_json::json!({"rows": rows, "bytes": stored, "replaced": replaced}))
    }

    /// Predictions for a DoExchange: the model is looked up before any data
    /// is read (an unknown name fails the call at once); batches are
    /// predicted one at a time, in order, each with the `keep` columns
    /// passed through.
    pub fn exchange(
        self: Arc<Self>,
        key: &ModelKey,
        batches: Batches,
        keep: Vec<String>,
    ) -> Result<Batches> {
        let served = self.models.get(key)?;
        let mut rows = 0usize;
        let predictions = batches.and_then(move |batch| {
            let (served, keep, me) = (served.clone(), keep.clone(), self.clone());
            let first_row = rows;
            rows += batch.num_rows();
            async move {
                let out = me.clone().predict(served, batch, keep, first_row).await?;
                me.counters
                    .rows_predicted
                    .fetch_add(out.num_rows() as u64, Ordering::Relaxed);
                Ok(out)
            }
        });
        Ok(predictions.boxed())
    }

    /// One stream batch through the model's batcher: features are
    /// converted on this stream's blocking thread, the forward pass is
    /// shared with concurrent streams.
    async fn predict(
        self: Arc<Self>,
        served: Arc<ServedModel>,
        batch: RecordBatch,
        keep: Vec<String>,
        first_row: usize,
    ) -> Result<RecordBatch> {
        let started = std::time::Instant::now();
        let (s, b) = (served.clone(), batch.clone());
        let features = blocking(move || s.features_of(&b, first_row)).await?;
        let me = self.clone();
        let batcher = blocking(move || me.models.batcher(&served)).await?;
        let outputs = batcher.predict(features).await?;
        let out = append(&batch, Some(&keep), &outputs, &OutputColumns::default());
        self.counters
            .exchange_latency
            .observe(started.elapsed().as_secs_f64());
        out
    }

    /// The state a DoGet ticket names (safetensors bytes).
    pub fn state(&self, ticket: &StateTicket) -> Result<Vec<u8>> {
        match ticket {
            StateTicket::Job(job) => self.jobs.get(job)?.initial_state(),
            StateTicket::Model(key) => {
                let m = self.models.get(key)?;
                self.models.state_bytes(&m)
            }
        }
    }
}
