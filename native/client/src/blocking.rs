//! A blocking face of [`Client`] for callers that are not async: the JVM
//! (libstoker_jni) and Python (stoker._native). One process-wide runtime
//! drives every client; each call blocks its calling thread (a JVM task
//! thread, or a Python thread that released the GIL). Calls on one client
//! are serialized.

use std::sync::{Mutex, OnceLock};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow_flight::decode::FlightRecordBatchStream;
use futures::StreamExt;
use stoker_core::protocol::{ModelKey, PartitionKey};
use stoker_core::{Error, Result};
use tokio::runtime::Runtime;

use crate::client::{Client, ClientOptions};
use stoker_wire::status::from_flight;

/// The runtime shared by all blocking clients of the process, started on
/// first use with two worker threads (I/O only; no compute runs here).
pub fn runtime() -> Result<&'static Runtime> {
    static RUNTIME: OnceLock<std::result::Result<Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("stoker-client")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| Error::internal(format!("starting the client runtime: {e}")))
}

/// A connected client whose calls block until the server answers.
pub struct BlockingClient {
    inner: Mutex<Client>,
}

impl BlockingClient {
    pub fn connect(uri: &str, options: ClientOptions) -> Result<BlockingClient> {
        let client = runtime()?.block_on(Client::connect(uri, options))?;
        Ok(BlockingClient {
            inner: Mutex::new(client),
        })
    }

    fn with<T>(&self, f: impl AsyncFnOnce(&mut Client) -> Result<T>) -> Result<T> {
        // A panic elsewhere while holding the lock leaves a usable client:
        // every call starts a fresh request.
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        runtime()?.block_on(f(&mut guard))
    }

    /// Runs an action with an encoded body; returns the encoded result.
    pub fn action(&self, kind: &str, body: Vec<u8>) -> Result<bytes::Bytes> {
        self.with(async |c| c.action_bytes(kind, body).await)
    }

    /// Sends a partition (DoPut); returns the server's `{rows, bytes, replaced}`.
    pub fn put_partition(
        &self,
        key: &PartitionKey,
        batches: Vec<RecordBatch>,
    ) -> Result<serde_json::Value> {
        let stream = futures::stream::iter(batches.into_iter().map(Ok));
        self.with(async |c| c.put_partition(key, stream).await)
    }

    /// Sends a partition given as one Arrow IPC stream (DoPut), its messages
    /// passed through; returns the server's `{rows, bytes, replaced}`.
    pub fn put_partition_ipc(
        &self,
        key: &PartitionKey,
        ipc: bytes::Bytes,
    ) -> Result<serde_json::Value> {
        self.with(async |c| c.put_partition_ipc(key, ipc).await)
    }

    /// Predictions for the batches (DoExchange), collected, with their
    /// schema (known even when there are no rows).
    pub fn predict(
        &self,
        model: &ModelKey,
        keep: &[String],
        batches: Vec<RecordBatch>,
    ) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let input = futures::stream::iter(batches.into_iter().map(Ok));
        self.with(async |c| collect(c.predict_stream(model, keep, input).await?).await)
    }

    /// [`BlockingClient::predict`] for features given as one Arrow IPC
    /// stream, its messages passed through.
    pub fn predict_ipc(
        &self,
        model: &ModelKey,
        keep: &[String],
        ipc: bytes::Bytes,
    ) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        self.with(async |c| collect(c.predict_ipc(model, keep, ipc).await?).await)
    }

    /// A stored state (DoGet): `jobs/JOB` or `models/NAME[/VERSION]`.
    pub fn download_state(&self, ticket: &str) -> Result<Vec<u8>> {
        self.with(async |c| c.download_state(ticket).await)
    }
}

/// A prediction stream's batches and schema (known even when there are no
/// rows).
async fn collect(mut stream: FlightRecordBatchStream) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let mut out = Vec::new();
    while let Some(b) = stream.next().await {
        out.push(b.map_err(from_flight)?);
    }
    let schema = match (out.first(), stream.schema()) {
        (Some(b), _) => b.schema(),
        (None, Some(s)) => s.clone(),
        (None, None) => return Err(Error::invalid("no rows to predict")),
    };
    Ok((schema, out))
}
