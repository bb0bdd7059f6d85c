//! `dev.stoker.jni.NativeBridge` client calls: connect to a stoker server,
//! run actions, put a partition and predict a batch, each partition or
//! batch crossing as one Arrow IPC stream buffer. Calls block the calling
//! JVM thread on a shared runtime; the client itself is in native/client.

use std::sync::{Mutex, OnceLock};

use futures::StreamExt;
use stoker_client::{Client, ClientOptions};
use stoker_core::ipc::{read_stream, write_stream};
use stoker_core::protocol::{ModelKey, PartitionKey};
use stoker_core::{Error, Result};
use tokio::runtime::Runtime;

use crate::handles::Handles;

pub static CLIENTS: Handles<Mutex<Client>> = Handles::new();
const WHAT: &str = "stoker client";

fn runtime() -> Result<&'static Runtime> {
    static RUNTIME: OnceLock<std::result::Result<Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("stoker-jni")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| Error::internal(format!("starting the client runtime: {e}")))
}

fn with_client<T>(id: i64, f: impl AsyncFnOnce(&mut Client) -> Result<T>) -> Result<T> {
    let client = CLIENTS.get(id, WHAT)?;
    let mut guard = client.lock().unwrap_or_else(|p| p.into_inner());
    runtime()?.block_on(f(&mut guard))
}

pub fn connect(uri: &str, token: Option<String>) -> Result<i64> {
    let options = ClientOptions {
        token,
        ..Default::default()
    };
    let client = runtime()?.block_on(Client::connect(uri, options))?;
    Ok(CLIENTS.insert(Mutex::new(client)))
}

pub fn close(id: i64) -> Result<()> {
    CLIENTS.remove(id, WHAT)
}

pub fn action(id: i64, kind: &str, body: Vec<u8>) -> Result<Vec<u8>> {
    with_client(id, async |c| c.action_bytes(kind, body).await)
}

pub fn put_partition(id: i64, key: PartitionKey, ipc: &[u8]) -> Result<String> {
    let (_, batches) = read_stream(ipc)?;
    let stream = futures::stream::iter(batches.into_iter().map(Ok));
    let meta = with_client(id, async |c| c.put_partition(&key, stream).await)?;
    Ok(meta.to_string())
}

pub fn predict(id: i64, model: ModelKey, keep: Vec<String>, ipc: &[u8]) -> Result<Vec<u8>> {
    let (_, batches) = read_stream(ipc)?;
    let input = futures::stream::iter(batches.into_iter().map(Ok));
    with_client(id, async |c| {
        let mut stream = c.predict_stream(&model, &keep, input).await?;
        let mut out = Vec::new();
        while let Some(b) = stream.next().await {
            out.push(b.map_err(stoker_client::status::from_flight)?);
        }
        let schema = match (out.first(), stream.schema()) {
            (Some(b), _) => b.schema(),
            (None, Some(s)) => s.clone(),
            (None, None) => return Err(Error::invalid("no rows to predict")),
        };
        write_stream(&schema, &out)
    })
}
