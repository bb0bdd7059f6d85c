//! Helpers shared by the server tests: a CPU server config, a client,
//! ring-shaped data, and a model trained over two partitions.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Float32Array, Int64Array, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type};
use stoker_client::{Client, ClientOptions};
use stoker_core::protocol::{CreateJob, PartitionKey, RegisterModel, TrainRound};
use stoker_core::WeightedSum;
use stoker_engine::DeviceSpec;
use stoker_server::{RunningServer, ServerConfig};

pub fn config() -> ServerConfig {
    ServerConfig {
        device: DeviceSpec::Cpu,
        ..Default::default()
    }
}

pub async fn connect(server: &RunningServer, token: Option<&str>) -> Client {
    let options = ClientOptions {
        token: token.map(String::from),
        ..Default::default()
    };
    Client::connect(&server.uri(), options).await.unwrap()
}

/// Two noisy rings (a non-linear task) plus an id column.
pub fn rings(rows: usize, seed: u64) -> RecordBatch {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    let mut next = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 40) as f32) / (1u64 << 24) as f32
    };
    let (mut a, mut b, mut y) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rows {
        let class = (next() < 0.5) as i64;
        let r = if class == 1 { 2.0 } else { 1.0 } + 0.2 * (next() - 0.5);
        let t = next() * std::f32::consts::TAU;
        a.push(r * t.cos());
        b.push(r * t.sin());
        y.push(class);
    }
    let id: Vec<i64> = (0..rows as i64).collect();
    RecordBatch::try_from_iter(vec![
        ("a", Arc::new(Float32Array::from(a)) as ArrayRef),
        ("b", Arc::new(Float32Array::from(b))),
        ("y", Arc::new(Int64Array::from(y))),
        ("id", Arc::new(Int64Array::from(id))),
    ])
    .unwrap()
}

pub fn job(name: &str) -> CreateJob {
    serde_json::from_value(serde_json::json!({
        "job": name,
        "spec": {"type": "mlp", "hidden": [16, 16], "num_classes": 2},
        "features": ["a", "b"], "label": "y",
        "optimizer": {"name": "adam", "lr": 0.02}, "seed": 1, "batch_size": 64,
    }))
    .unwrap()
}

pub fn key(job: &str, partition: u32, version: &str) -> PartitionKey {
    PartitionKey::train(job, partition, version)
}

/// Partition `partition` of `job`'s validation rows.
pub fn validation_key(job: &str, partition: u32, version: &str) -> PartitionKey {
    PartitionKey {
        split: stoker_core::protocol::Split::Validation,
        ..key(job, partition, version)
    }
}

pub fn round(job: &str, partition: u32, round: u64) -> TrainRound {
    TrainRound {
        job: job.into(),
        partition,
        version: "v1".into(),
        round,
        epochs: 2,
        steps: None,
        release: false,
        state_id: None,
    }
}

pub fn one(
    batch: RecordBatch,
) -> impl futures::Stream<Item = stoker_core::Result<RecordBatch>> + Send + 'static {
    futures::stream::iter([Ok(batch)])
}

/// Column `index` of every batch, concatenated.
pub fn ints(batches: &[RecordBatch], index: usize) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|b| {
            b.column(index)
                .as_primitive::<Int64Type>()
                .values()
                .to_vec()
        })
        .collect()
}

pub fn floats(batches: &[RecordBatch], index: usize) -> Vec<f64> {
    batches
        .iter()
        .flat_map(|b| {
            b.column(index)
                .as_primitive::<Float64Type>()
                .values()
                .to_vec()
        })
        .collect()
}

/// Creates the job `name` with its partition 0 (version v1) of `rows` rings.
pub async fn job_with_partition(client: &mut Client, name: &str, rows: usize) {
    client.create_job(&job(name), None).await.unwrap();
    client
        .put_partition(&key(name, 0, "v1"), one(rings(rows, 1)))
        .await
        .unwrap();
}

/// Training partition 0 of `name` is a cache miss (nothing cached for it).
pub async fn assert_cache_miss(client: &mut Client, name: &str) {
    let e = client
        .train_round(&round(name, 0, 0), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), stoker_core::ErrorKind::CacheMiss, "{e}");
}

/// Trains a model over two partitions for a few rounds and registers it.
pub async fn trained_model(client: &mut Client, name: &str) -> Vec<u8> {
    client.create_job(&job(name), None).await.unwrap();
    for p in 0..2 {
        client
            .put_partition(&key(name, p, "v1"), one(rings(1500, p as u64)))
            .await
            .unwrap();
    }
    let mut state: Option<Vec<u8>> = None;
    for r in 0..3 {
        let mut sum: Option<WeightedSum> = None;
        for p in 0..2 {
            let (res, out) = client
                .train_round(&round(name, p, r), state.clone())
                .await
                .unwrap();
            assert_eq!(res.samples, 1500);
            match &mut sum {
                None => sum = Some(WeightedSum::from_bytes(&out, 1500.0).unwrap()),
                Some(s) => s.add_bytes(&out, 1500.0).unwrap(),
            }
        }
        state = Some(sum.unwrap().average().unwrap().to_bytes().unwrap());
    }
    let state = state.unwrap();
    register(client, name, &state).await;
    state
}

/// Registers the rings MLP under `name` with `state`; returns the server's
/// answer (`{name, version, task, features}`).
pub async fn register(client: &mut Client, name: &str, state: &[u8]) -> serde_json::Value {
    let spec = br#"{"type":"mlp","hidden":[16,16],"num_classes":2}"#.to_vec();
    let req = RegisterModel {
        name: name.into(),
        version: None,
        spec: None,
        torchscript_path: None,
        features: None,
        loss: None,
        input_width: None,
    };
    client
        .register_model(&req, Some(spec), Some(state.to_vec()))
        .await
        .unwrap()
}
