//! The server in-process on 127.0.0.1:0, driven by the Rust client: every
//! action, put, exchange, listing, auth, TLS, the model tiers, concurrent
//! streams, and each bad input with its error kind.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, AsArray, Float32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{Float64Type, Int64Type};
use futures::StreamExt;
use stoker_core::protocol::{CreateJob, ModelKey, PartitionKey, RegisterModel, TrainRound};
use stoker_core::{ErrorKind, State, WeightedSum};
use stoker_engine::DeviceSpec;
use stoker_flight::client::{Client, ClientOptions};
use stoker_flight::server::batcher::BatchLimits;
use stoker_flight::server::{start, RunningServer, ServerConfig};

fn config() -> ServerConfig {
    ServerConfig {
        device: DeviceSpec::Cpu,
        ..Default::default()
    }
}

async fn connect(server: &RunningServer, token: Option<&str>) -> Client {
    let options = ClientOptions {
        token: token.map(String::from),
        ..Default::default()
    };
    Client::connect(&server.uri(), options).await.unwrap()
}

/// Two noisy rings (a non-linear task) plus an id column.
fn rings(rows: usize, seed: u64) -> RecordBatch {
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

fn job(name: &str) -> CreateJob {
    serde_json::from_value(serde_json::json!({
        "job": name,
        "spec": {"type": "mlp", "hidden": [16, 16], "num_classes": 2},
        "features": ["a", "b"], "label": "y",
        "optimizer": {"name": "adam", "lr": 0.02}, "seed": 1, "batch_size": 64,
    }))
    .unwrap()
}

fn key(job: &str, partition: u32, version: &str) -> PartitionKey {
    PartitionKey {
        job: job.into(),
        partition,
        version: version.into(),
    }
}

fn round(job: &str, partition: u32, round: u64) -> TrainRound {
    TrainRound {
        job: job.into(),
        partition,
        version: "v1".into(),
        round,
        epochs: 2,
        steps: None,
    }
}

fn one(
    batch: RecordBatch,
) -> impl futures::Stream<Item = stoker_core::Result<RecordBatch>> + Send + 'static {
    futures::stream::iter([Ok(batch)])
}

/// Column `index` of every batch, concatenated.
fn ints(batches: &[RecordBatch], index: usize) -> Vec<i64> {
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

fn floats(batches: &[RecordBatch], index: usize) -> Vec<f64> {
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

/// Trains a model over two partitions for a few rounds and registers it.
async fn trained_model(client: &mut Client, name: &str) -> Vec<u8> {
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
        .register_model(&req, Some(spec), Some(state.clone()))
        .await
        .unwrap();
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_action_end_to_end() {
    let server = start(config()).await.unwrap();
    let mut client = connect(&server, None).await;
    let health = client.health().await.unwrap();
    assert_eq!(health["status"], "serving");
    assert_eq!(health["device"], "cpu");

    let state = trained_model(&mut client, "rings").await;
    assert_eq!(State::from_bytes(&state).unwrap().meta.samples, 3000);

    // Exchange: order, row counts and pass-through columns.
    let test = rings(5000, 9);
    let batches: Vec<RecordBatch> = (0..5).map(|i| test.slice(i * 1000, 1000)).collect();
    let model = ModelKey {
        name: "rings".into(),
        version: None,
    };
    let out = client
        .predict(&model, &["id".into()], batches)
        .await
        .unwrap();
    let rows: usize = out.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 5000);
    let schema = out[0].schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["id", "prediction", "probability"]);
    let ids = ints(&out, 0);
    assert_eq!(ids, (0..5000).collect::<Vec<_>>());
    let predictions = floats(&out, 1);
    let labels = test.column(2).as_primitive::<Int64Type>();
    let hits = predictions
        .iter()
        .enumerate()
        .filter(|(i, p)| **p as i64 == labels.value(*i))
        .count();
    assert!(
        hits as f64 / 5000.0 > 0.95,
        "accuracy {}",
        hits as f64 / 5000.0
    );

    // A second version; GetFlightInfo on the bare name shows the latest.
    let req = RegisterModel {
        name: "rings".into(),
        version: None,
        spec: None,
        torchscript_path: None,
        features: None,
        loss: None,
        input_width: None,
    };
    let spec = br#"{"type":"mlp","hidden":[16,16],"num_classes":2}"#.to_vec();
    let v2 = client
        .register_model(&req, Some(spec), Some(state.clone()))
        .await
        .unwrap();
    assert_eq!(v2["version"], 2);
    let info = client
        .flight_info(vec!["models".into(), "rings".into()])
        .await
        .unwrap();
    assert_eq!(info.flight_descriptor.unwrap().path[2], "2");
    client.unload_model("rings", Some(2)).await.unwrap();

    // Listing and download.
    let listed = client.list().await.unwrap();
    let paths: Vec<Vec<String>> = listed
        .iter()
        .map(|i| i.flight_descriptor.clone().unwrap().path)
        .collect();
    assert!(paths.contains(&vec!["jobs".to_string(), "rings".to_string()]));
    assert!(paths.contains(&vec![
        "models".to_string(),
        "rings".to_string(),
        "1".to_string()
    ]));
    let job_info = listed
        .iter()
        .find(|i| i.flight_descriptor.as_ref().unwrap().path[0] == "jobs")
        .unwrap();
    assert_eq!(job_info.total_records, 3000);
    assert_eq!(
        client.download_state("models/rings/1").await.unwrap(),
        state
    );
    let initial = client.download_state("jobs/rings").await.unwrap();
    assert_eq!(State::from_bytes(&initial).unwrap().meta.round, 0);

    // Stats, then forgetting.
    let stats = client.stats().await.unwrap();
    assert_eq!(stats["train_rounds"], 6);
    assert_eq!(stats["rows_predicted"], 5000);
    client.unload_model("rings", Some(1)).await.unwrap();
    let e = client
        .predict(&model, &[], vec![test.slice(0, 10)])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    client.drop_job("rings").await.unwrap();
    let e = client
        .train_round(&round("rings", 0, 0), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_inputs_get_their_kinds_and_the_server_keeps_serving() {
    let server = start(ServerConfig {
        max_message_bytes: 1 << 20,
        ..config()
    })
    .await
    .unwrap();
    let mut client = connect(&server, None).await;

    let e = client
        .put_partition(&key("ghost", 0, "v"), one(rings(10, 1)))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.message().contains("no job named 'ghost'"), "{e}");

    client.create_job(&job("j"), None).await.unwrap();
    let e = client
        .train_round(&round("j", 0, 0), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CacheMiss, "{e}");

    // A string where a feature should be.
    let bad = RecordBatch::try_from_iter(vec![
        ("a", Arc::new(StringArray::from(vec!["x"; 4])) as ArrayRef),
        ("b", Arc::new(Float32Array::from(vec![1.0; 4]))),
        ("y", Arc::new(Int64Array::from(vec![0; 4]))),
    ])
    .unwrap();
    let e = client
        .put_partition(&key("j", 0, "v"), one(bad))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.message().contains("'a' has type Utf8"), "{e}");

    // A label out of range.
    let mut b = rings(20, 2);
    let mut y: Vec<i64> = vec![0; 20];
    y[11] = 7;
    b = RecordBatch::try_new(
        b.schema(),
        vec![
            b.column(0).clone(),
            b.column(1).clone(),
            Arc::new(Int64Array::from(y)),
            b.column(3).clone(),
        ],
    )
    .unwrap();
    let e = client
        .put_partition(&key("j", 0, "v"), one(b))
        .await
        .unwrap_err();
    assert!(e.message().contains("'y' has 7 at row 11"), "{e}");

    // Malformed JSON and corrupt TorchScript.
    let bad_job: CreateJob = serde_json::from_value(serde_json::json!({"job": "x", "spec": {"type": "mlp", "hiden": [1]}, "features": ["a"], "label": "y"})).unwrap();
    let e = client.create_job(&bad_job, None).await.unwrap_err();
    assert!(e.message().contains("unknown field `hiden`"), "{e}");
    let req = RegisterModel {
        name: "m".into(),
        version: None,
        spec: None,
        torchscript_path: None,
        features: Some(vec!["a".into()]),
        loss: None,
        input_width: Some(1),
    };
    let e = client
        .register_model(&req, Some(b"PK\x03\x04 junk".to_vec()), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(
        e.message()
            .contains("TorchScript model could not be loaded"),
        "{e}"
    );

    // An oversized message: the client allows more than the server does.
    let options = ClientOptions {
        max_message_bytes: 64 << 20,
        ..Default::default()
    };
    let mut big_client = Client::connect(&server.uri(), options).await.unwrap();
    let e = big_client
        .put_partition(&key("j", 1, "v"), one(rings(200_000, 3)))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ResourceExhausted, "{e}");

    // A client that disconnects mid-stream: the put fails alone.
    let (tx, rx) = futures::channel::mpsc::unbounded::<stoker_core::Result<RecordBatch>>();
    tx.unbounded_send(Ok(rings(100, 4))).unwrap();
    let mut quitter = connect(&server, None).await;
    let pending = tokio::spawn(async move { quitter.put_partition(&key("j", 2, "v"), rx).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    pending.abort();
    drop(tx);

    // Still serving, with the good data intact.
    client
        .put_partition(&key("j", 0, "v1"), one(rings(300, 5)))
        .await
        .unwrap();
    let (res, _) = client.train_round(&round("j", 0, 0), None).await.unwrap();
    assert_eq!(res.samples, 300);
    let stats = client.stats().await.unwrap();
    assert!(stats["requests_failed"].as_u64().unwrap() >= 6, "{stats}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_are_required_and_checked() {
    let server = start(ServerConfig {
        token: Some("s3cret".into()),
        ..config()
    })
    .await
    .unwrap();
    let e = connect(&server, None).await.health().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthenticated);
    let e = connect(&server, Some("wrong"))
        .await
        .health()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthenticated);
    assert!(!e.message().contains("s3cret"));
    assert_eq!(
        connect(&server, Some("s3cret"))
            .await
            .health()
            .await
            .unwrap()["status"],
        "serving"
    );
    server.stop().await.unwrap();

    let e = start(ServerConfig {
        host: "0.0.0.0".into(),
        ..config()
    })
    .await
    .err()
    .unwrap();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.message().contains("without a token"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_with_a_self_signed_certificate() {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let (cert_pem, key_pem) = (cert.cert.pem(), cert.signing_key.serialize_pem());
    let server = start(ServerConfig {
        tls: Some((cert_pem.clone().into_bytes(), key_pem.into_bytes())),
        ..config()
    })
    .await
    .unwrap();
    assert!(server.uri().starts_with("grpc+tls://"));
    let options = ClientOptions {
        ca_pem: Some(cert_pem.into_bytes()),
        ..Default::default()
    };
    let mut client = Client::connect(&server.uri(), options).await.unwrap();
    assert_eq!(client.health().await.unwrap()["status"], "serving");
    // Plain text against a TLS server fails as unavailable, not with a hang.
    let plain = server.uri().replace("grpc+tls", "grpc");
    let result = tokio::time::timeout(Duration::from_secs(20), async {
        match Client::connect(&plain, ClientOptions::default()).await {
            Ok(mut c) => c.health().await.map(|_| ()),
            Err(e) => Err(e),
        }
    })
    .await
    .expect("no hang");
    assert!(result.is_err());
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_streams_are_coalesced_and_stay_in_order() {
    let server = start(ServerConfig {
        batch: BatchLimits {
            max_rows: 65_536,
            max_wait: Duration::from_millis(25),
        },
        ..config()
    })
    .await
    .unwrap();
    let mut client = connect(&server, None).await;
    trained_model(&mut client, "shared").await;
    let reference = client
        .predict(
            &ModelKey {
                name: "shared".into(),
                version: None,
            },
            &["id".into()],
            vec![rings(400, 77)],
        )
        .await
        .unwrap();
    let reference = floats(&reference, 1);

    let uri = server.uri();
    let streams = (0..8).map(|_| {
        let uri = uri.clone();
        tokio::spawn(async move {
            let mut c = Client::connect(&uri, ClientOptions::default())
                .await
                .unwrap();
            let data = rings(400, 77);
            let input = futures::stream::iter((0..4).map(move |i| Ok(data.slice(i * 100, 100))));
            let model = ModelKey {
                name: "shared".into(),
                version: None,
            };
            let out = c
                .predict_stream(&model, &["id".into()], input)
                .await
                .unwrap();
            let batches: Vec<RecordBatch> = out.map(|b| b.unwrap()).collect().await;
            batches
        })
    });
    for s in futures::future::join_all(streams).await {
        let batches = s.unwrap();
        let ids = ints(&batches, 0);
        assert_eq!(ids, (0..400).collect::<Vec<_>>());
        let p = floats(&batches, 1);
        assert_eq!(p, reference);
    }
    let stats = client.stats().await.unwrap();
    let m = &stats["models"][0];
    assert!(
        m["max_pass_rows"].as_u64().unwrap() > 100,
        "no coalescing: {m}"
    );
    assert!(
        m["forward_passes"].as_u64().unwrap() < m["requests"].as_u64().unwrap(),
        "{m}"
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn models_move_between_tiers_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let tiered = || ServerConfig {
        model_dir: Some(dir.path().to_path_buf()),
        // Room for one small model on the device and none in host memory.
        device_model_bytes: 2_000, // one 354-parameter MLP is 1,416 bytes
        host_model_bytes: 0,
        ..config()
    };
    let server = start(tiered()).await.unwrap();
    let mut client = connect(&server, None).await;
    trained_model(&mut client, "first").await;
    trained_model(&mut client, "second").await;
    let stats = client.stats().await.unwrap();
    let tiers: Vec<(&str, &str)> = stats["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap(), m["tier"].as_str().unwrap()))
        .collect();
    assert_eq!(tiers, [("first", "disk"), ("second", "device")]);

    // Asking for the evicted model loads it back, transparently.
    let test = rings(200, 3);
    let first = ModelKey {
        name: "first".into(),
        version: None,
    };
    let a = client
        .predict(&first, &[], vec![test.clone()])
        .await
        .unwrap();
    assert_eq!(a[0].num_rows(), 200);
    let stats = client.stats().await.unwrap();
    assert!(
        stats["tiers"]["device"]["misses"].as_u64().unwrap() >= 1,
        "{stats}"
    );
    assert!(
        stats["tiers"]["disk"]["hits"].as_u64().unwrap() >= 1,
        "{stats}"
    );
    assert!(
        stats["tiers"]["device"]["evictions"].as_u64().unwrap() >= 1,
        "{stats}"
    );
    server.stop().await.unwrap();

    // A new server on the same directory serves the same models.
    let server = start(tiered()).await.unwrap();
    let mut client = connect(&server, None).await;
    let b = client.predict(&first, &[], vec![test]).await.unwrap();
    assert_eq!(a, b);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_metrics_page() {
    let server = start(ServerConfig {
        metrics_port: Some(0),
        ..config()
    })
    .await
    .unwrap();
    let mut client = connect(&server, None).await;
    trained_model(&mut client, "metered").await;
    client
        .predict(
            &ModelKey {
                name: "metered".into(),
                version: None,
            },
            &[],
            vec![rings(100, 1)],
        )
        .await
        .unwrap();
    let addr = server.metrics_addr.unwrap();
    let page = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    })
    .await
    .unwrap();
    assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
    for line in [
        "stoker_rows_in_total 3000",
        "stoker_rows_predicted_total 100",
        "stoker_train_rounds_total 6",
        "stoker_train_round_seconds_count 6",
        "stoker_model_tier_hits_total{tier=\"device\"}",
        "stoker_inference_pass_rows_count{model=\"metered\",version=\"1\"} 1",
    ] {
        assert!(page.contains(line), "missing {line} in\n{page}");
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_leaves_mid_exchange_harms_nobody() {
    let server = start(config()).await.unwrap();
    let mut client = connect(&server, None).await;
    trained_model(&mut client, "steady").await;
    let model = ModelKey {
        name: "steady".into(),
        version: None,
    };
    for _ in 0..3 {
        let (tx, rx) = futures::channel::mpsc::unbounded::<stoker_core::Result<RecordBatch>>();
        tx.unbounded_send(Ok(rings(100, 1))).unwrap();
        let mut quitter = connect(&server, None).await;
        let key = model.clone();
        let pending = tokio::spawn(async move {
            let mut out = quitter.predict_stream(&key, &[], rx).await?;
            // Read one answer, then vanish with the request stream still open.
            out.next().await;
            Ok::<_, stoker_core::Error>(())
        });
        tokio::time::sleep(Duration::from_millis(150)).await;
        pending.abort();
        drop(tx);
    }
    // The model's batcher is not stuck and later streams are served in full.
    let out = client
        .predict(&model, &["id".into()], vec![rings(300, 2)])
        .await
        .unwrap();
    assert_eq!(ints(&out, 0), (0..300).collect::<Vec<_>>());
    let stats = client.stats().await.unwrap();
    assert_eq!(stats["models"][0]["tier"], "device");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_round_whose_caller_leaves_stops_early() {
    let server = start(config()).await.unwrap();
    let mut client = connect(&server, None).await;
    client.create_job(&job("long"), None).await.unwrap();
    client
        .put_partition(&key("long", 0, "v1"), one(rings(20_000, 1)))
        .await
        .unwrap();
    let mut leaver = connect(&server, None).await;
    let endless = TrainRound {
        epochs: 100_000,
        ..round("long", 0, 0)
    };
    let pending = tokio::spawn(async move { leaver.train_round(&endless, None).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    pending.abort();
    let _ = pending.await;
    // Bounded wait for the server to notice; it never trains 100,000 epochs.
    let mut abandoned = 0;
    for _ in 0..600 {
        abandoned = client.stats().await.unwrap()["train_rounds_abandoned"]
            .as_u64()
            .unwrap();
        if abandoned > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(abandoned, 1);
    let (res, _) = client
        .train_round(&round("long", 0, 1), None)
        .await
        .unwrap();
    assert_eq!(res.samples, 20_000);
    server.stop().await.unwrap();
}
