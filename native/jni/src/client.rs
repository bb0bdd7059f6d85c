//! `dev.stoker.jni.NativeBridge` client calls: connect to a stoker server,
//! run actions, put a partition and predict a batch, each partition or
//! batch crossing as one Arrow IPC stream buffer. The client and its
//! runtime are native/client's [`BlockingClient`]; this module converts.

use stoker_client::{BlockingClient, ClientOptions};
use stoker_core::ipc::write_stream;
use stoker_core::protocol::{ModelKey, PartitionKey};
use stoker_core::Result;

use crate::handles::Handles;

pub static CLIENTS: Handles<BlockingClient> = Handles::new();
const WHAT: &str = "stoker client";

/// `liveness_seconds` of 0 or less: [`stoker_client::DEFAULT_LIVENESS`].
pub fn connect(
    uri: &str,
    token: Option<String>,
    ca_pem: Option<String>,
    liveness_seconds: i32,
) -> Result<i64> {
    let mut options = ClientOptions {
        token,
        ca_pem: ca_pem.map(String::into_bytes),
        ..Default::default()
    };
    if liveness_seconds > 0 {
        options.liveness = std::time::Duration::from_secs(liveness_seconds as u64);
    }
    Ok(CLIENTS.insert(BlockingClient::connect(uri, options)?))
}

pub fn close(id: i64) -> Result<()> {
    CLIENTS.remove(id, WHAT)
}

pub fn action(id: i64, kind: &str, body: Vec<u8>) -> Result<bytes::Bytes> {
    CLIENTS.get(id, WHAT)?.action(kind, body)
}

pub fn put_partition(id: i64, key: PartitionKey, ipc: Vec<u8>) -> Result<String> {
    Ok(CLIENTS
        .get(id, WHAT)?
        .put_partition_ipc(&key, bytes::Bytes::from(ipc))?
        .to_string())
}

pub fn predict(id: i64, model: ModelKey, keep: Vec<String>, ipc: Vec<u8>) -> Result<Vec<u8>> {
    let (schema, out) =
        CLIENTS
            .get(id, WHAT)?
            .predict_ipc(&model, &keep, bytes::Bytes::from(ipc))?;
    write_stream(&schema, &out)
}
