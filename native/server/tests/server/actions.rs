use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, AsArray, Float32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::Int64Type;
use stoker_client::{Client, ClientOptions};
use stoker_core::protocol::{CreateJob, ModelKey, RegisterModel};
use stoker_core::{ErrorKind, State};
use stoker_server::{start, ServerConfig};

use crate::common::*;

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
    let model = ModelKey::latest("rings");
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
    let v2 = register(&mut client, "rings", &state).await;
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
    assert_cache_miss(&mut client, "j").await;

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
        .predict(&ModelKey::latest("metered"), &[], vec![rings(100, 1)])
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
async fn an_ipc_stream_is_put_and_predicted_as_is_or_split_when_its_messages_are_too_large() {
    let server = start(config()).await.unwrap();
    let batch = rings(20_000, 4);
    let ipc =
        stoker_core::ipc::write_stream(&batch.schema(), std::slice::from_ref(&batch)).unwrap();
    // Default limits: the stream's one batch message goes through unchanged.
    let mut client = connect(&server, None).await;
    client.create_job(&job("j"), None).await.unwrap();
    let answer = client
        .put_partition_ipc(&key("j", 0, "v1"), ipc.clone().into())
        .await
        .unwrap();
    assert_eq!(answer["rows"], 20_000, "{answer}");
    // A client whose messages must stay under 256 KiB: the ~400 KB batch is
    // decoded and sent in pieces, and the server still gets every row.
    let options = ClientOptions {
        max_message_bytes: 512 * 1024,
        ..Default::default()
    };
    let mut small = Client::connect(&server.uri(), options).await.unwrap();
    let answer = small
        .put_partition_ipc(&key("j", 1, "v1"), ipc.into())
        .await
        .unwrap();
    assert_eq!(answer["rows"], 20_000, "{answer}");
    // Both partitions train.
    for p in 0..2 {
        let (res, _) = client.train_round(&round("j", p, 0), None).await.unwrap();
        assert_eq!(res.samples, 20_000);
    }
    // Features as an IPC stream predict the same as the decoded batches,
    // whether passed through or split, with pass-through columns.
    trained_model(&mut client, "m").await;
    let model = ModelKey::latest("m");
    let keep = vec!["id".to_string()];
    let want = client
        .predict(&model, &keep, vec![batch.clone()])
        .await
        .unwrap();
    let ipc =
        stoker_core::ipc::write_stream(&batch.schema(), std::slice::from_ref(&batch)).unwrap();
    for c in [&mut client, &mut small] {
        let got: Vec<RecordBatch> = futures::TryStreamExt::try_collect(
            c.predict_ipc(&model, &keep, ipc.clone().into())
                .await
                .unwrap(),
        )
        .await
        .unwrap();
        let concat = |b: &[RecordBatch]| arrow::compute::concat_batches(&b[0].schema(), b).unwrap();
        assert_eq!(concat(&got), concat(&want));
    }
    // Not an IPC stream: invalid input, and the server keeps serving.
    let e = client
        .put_partition_ipc(
            &key("j", 2, "v1"),
            bytes::Bytes::from_static(b"\xff\xff\xff\xffjunk"),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert_eq!(client.health().await.unwrap()["status"], "serving");
}

/// stoker's client sends requests as raw HTTP/2 chunks: an error in the
/// caller's own batches must abort the request (not end it early, which the
/// server would take for a complete partition) and come back as itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_whose_batches_fail_midway_is_aborted_and_keeps_its_error() {
    let server = start(config()).await.unwrap();
    let mut client = connect(&server, None).await;
    client.create_job(&job("j"), None).await.unwrap();

    let broken = || {
        futures::stream::iter([
            Ok(rings(200, 1)),
            Err(stoker_core::Error::invalid("the source broke at row 200")),
            Ok(rings(200, 2)),
        ])
    };
    let e = client
        .put_partition(&key("j", 0, "v"), broken())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.message().contains("the source broke at row 200"), "{e}");
    // Nothing was stored: training the partition is a cache miss.
    assert_cache_miss(&mut client, "j").await;

    trained_model(&mut client, "m").await;
    let model = ModelKey::latest("m");
    let features = || rings(300, 3);
    let input = futures::stream::iter([
        Ok(features()),
        Err(stoker_core::Error::invalid("the reader failed")),
    ]);
    let outcome = async {
        let stream = client.predict_stream(&model, &[], input).await?;
        futures::TryStreamExt::try_collect::<Vec<_>>(stream)
            .await
            .map_err(stoker_wire::status::from_flight)
    }
    .await;
    let e = outcome.unwrap_err();
    assert!(e.message().contains("the reader failed"), "{e}");

    // The connection and the server both go on serving.
    client
        .put_partition(&key("j", 0, "v"), one(rings(200, 4)))
        .await
        .unwrap();
    let got = client.predict(&model, &[], vec![features()]).await.unwrap();
    assert_eq!(got.iter().map(RecordBatch::num_rows).sum::<usize>(), 300);
}
