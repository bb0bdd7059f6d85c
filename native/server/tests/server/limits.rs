//! Sizes a hostile or mistaken client asks for are refused before anything
//! is allocated, with RESOURCE_EXHAUSTED naming the budget, and the server
//! keeps serving. Before these checks, `hidden: [1000000000]` aborted the
//! server process while it drew the weights.

use arrow::array::RecordBatch;
use stoker_core::protocol::{CreateJob, ModelKey, RegisterModel};
use stoker_core::{ErrorKind, State};
use stoker_engine::model::{export_torchscript, ModelSource};
use stoker_engine::ModelSpec;
use stoker_server::{start, ServerConfig};

use crate::common::*;

/// The trained `state` of common.rs's MLP as a TorchScript archive.
fn exported(state: &[u8]) -> Vec<u8> {
    let spec = ModelSpec::from_json(r#"{"type":"mlp","hidden":[16,16],"num_classes":2}"#).unwrap();
    let state = State::from_bytes(state).unwrap();
    export_torchscript(&ModelSource::Spec(spec), &state, None).unwrap()
}

fn huge_job(name: &str) -> CreateJob {
    CreateJob {
        spec: Some(serde_json::json!({"type": "mlp", "hidden": [1_000_000_000], "num_classes": 2})),
        ..job(name)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_too_large_for_the_device_budget_is_refused_before_it_is_built() {
    let server = start(ServerConfig {
        job_model_bytes: 256 << 20,
        device_model_bytes: 256 << 20,
        ..config()
    })
    .await
    .unwrap();
    let mut client = connect(&server, None).await;
    client.create_job(&huge_job("huge"), None).await.unwrap();
    let e = client
        .put_partition(&key("huge", 0, "v1"), one(rings(50, 1)))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ResourceExhausted, "{e}");
    assert!(e.message().contains("--job-model-mb"), "{e}");
    assert!(e.message().contains("5000000002 parameters"), "{e}");

    // A state that claims a billion inputs, for a spec that is small.
    let state = trained_model(&mut client, "small").await;
    let mut claimed = State::from_bytes(&state).unwrap();
    claimed
        .meta
        .extra
        .insert("input_width".into(), "1000000000".into());
    let req = RegisterModel {
        name: "wide".into(),
        version: None,
        spec: Some(serde_json::json!({"type": "mlp", "hidden": [16, 16], "num_classes": 2})),
        torchscript_path: None,
        features: Some(vec!["a".into()]),
        loss: None,
        input_width: None,
    };
    let e = client
        .register_model(&req, None, Some(claimed.to_bytes().unwrap()))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ResourceExhausted, "{e}");

    // A TorchScript model probed with a billion inputs.
    let script = exported(&state);
    let req = RegisterModel {
        name: "probe".into(),
        loss: Some("mse".into()),
        input_width: Some(1_000_000_000),
        spec: None,
        ..req
    };
    let e = client
        .register_model(&req, Some(script), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ResourceExhausted, "{e}");
    assert!(e.message().contains("1000000000 inputs"), "{e}");

    // Nothing was lost: the trained model still serves, and the refused
    // ones left nothing behind.
    let health = client.health().await.unwrap();
    assert_eq!(health["status"], "serving");
    let stats = client.stats().await.unwrap();
    let names: Vec<_> = stats["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["small"]);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn model_files_a_client_names_are_read_only_under_the_model_root() {
    let by_path = |name: &str, path: &str| CreateJob {
        spec: None,
        torchscript_path: Some(path.into()),
        ..job(name)
    };
    // Without --model-root the server reads no file a client names.
    let server = start(config()).await.unwrap();
    let mut client = connect(&server, None).await;
    let e = client
        .create_job(&by_path("p", "/etc/passwd"), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.message().contains("--model-root"), "{e}");
    let state = trained_model(&mut client, "small").await;
    server.stop().await.unwrap();

    let root = tempfile::tempdir().unwrap();
    let script = exported(&state);
    std::fs::write(root.path().join("model.pt"), script).unwrap();
    std::fs::create_dir(root.path().join("models")).unwrap();
    let server = start(ServerConfig {
        model_root: Some(root.path().to_path_buf()),
        ..config()
    })
    .await
    .unwrap();
    let mut client = connect(&server, None).await;
    for (path, kind, says) in [
        (
            "/dev/zero",
            ErrorKind::InvalidInput,
            "is outside --model-root",
        ),
        (
            "/etc/passwd",
            ErrorKind::InvalidInput,
            "is outside --model-root",
        ),
        (
            "../../etc/passwd",
            ErrorKind::InvalidInput,
            "is outside --model-root",
        ),
        ("models", ErrorKind::InvalidInput, "is not a regular file"),
        ("nothing.pt", ErrorKind::NotFound, "does not exist"),
    ] {
        let e = client
            .create_job(&by_path("p", path), None)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), kind, "{path}: {e}");
        assert!(e.message().contains(says), "{path}: {e}");
    }
    // A file under the root is read like a `model` blob: a spec file
    // trains, and the exported archive reaches the TorchScript loader (which
    // refuses it for training: its weights are constants).
    let spec = r#"{"type":"mlp","hidden":[8],"num_classes":2}"#;
    std::fs::write(root.path().join("small.json"), spec).unwrap();
    client
        .create_job(&by_path("p", "small.json"), None)
        .await
        .unwrap();
    client
        .put_partition(&key("p", 0, "v1"), one(rings(200, 1)))
        .await
        .unwrap();
    let (result, _) = client.train_round(&round("p", 0, 0), None).await.unwrap();
    assert_eq!(result.samples, 200);
    client
        .create_job(&by_path("q", "model.pt"), None)
        .await
        .unwrap();
    let e = client
        .put_partition(&key("q", 0, "v1"), one(rings(20, 1)))
        .await
        .unwrap_err();
    assert!(e.message().contains("no parameters to train"), "{e}");
    server.stop().await.unwrap();
}

/// DoExchange through a plain Flight client with `keep` as the raw value of
/// `x-stoker-keep`; the number of rows predicted, or the status.
async fn exchange_keeping(uri: &str, keep: &[u8]) -> Result<usize, tonic::Status> {
    use arrow_flight::encode::FlightDataEncoderBuilder;
    use arrow_flight::flight_service_client::FlightServiceClient;
    use arrow_flight::FlightDescriptor;
    use futures::TryStreamExt;

    let channel = tonic::transport::Channel::from_shared(uri.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = FlightServiceClient::new(channel);
    let descriptor = FlightDescriptor::new_path(vec!["models".into(), "small".into()]);
    let data: Vec<_> = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(descriptor))
        .build(futures::stream::iter([Ok(rings(10, 1))]))
        .try_collect()
        .await
        .unwrap();
    let mut request = tonic::Request::new(futures::stream::iter(data));
    let value = tonic::metadata::MetadataValue::try_from(keep).unwrap();
    request.metadata_mut().insert("x-stoker-keep", value);
    let answer = client.do_exchange(request).await?.into_inner();
    let batches: Vec<_> = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
        answer.map_err(arrow_flight::error::FlightError::from),
    )
    .try_collect()
    .await
    .map_err(|e| match e {
        arrow_flight::error::FlightError::Tonic(s) => *s,
        other => tonic::Status::unknown(other.to_string()),
    })?;
    Ok(batches.iter().map(|b| b.num_rows()).sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_or_long_keep_header_is_answered_by_name() {
    let server = start(config()).await.unwrap();
    let mut client = connect(&server, None).await;
    trained_model(&mut client, "small").await;
    let uri = format!("http://{}", server.addr);
    assert_eq!(exchange_keeping(&uri, b"id").await.unwrap(), 10);
    // Not text: refused naming the header.
    let status = exchange_keeping(&uri, b"id,\xff\xfe").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("x-stoker-keep"), "{status:?}");
    // A column that is not there is named.
    let status = exchange_keeping(&uri, b"id,nope").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("nope"), "{status:?}");
    // 100 KB of names is over h2's default 16 KiB header block, not over
    // the server's: the unknown names are what is refused.
    let long: Vec<u8> = (0..10_000)
        .map(|i| format!("col{i:05}"))
        .collect::<Vec<_>>()
        .join(",")
        .into_bytes();
    let status = exchange_keeping(&uri, &long).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("col00000"), "{status:?}");
    // stoker's client refuses a header over half the limit before sending.
    let names: Vec<String> = (0..60_000).map(|i| format!("col{i:05}")).collect();
    let e = client
        .predict(
            &stoker_core::protocol::ModelKey::latest("small"),
            &names,
            vec![rings(5, 1)],
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.message().contains("60000 pass-through columns"), "{e}");
    assert_eq!(client.health().await.unwrap()["status"], "serving");
    server.stop().await.unwrap();
}

/// A batch whose columns give a model more features per row than it takes
/// is refused before its dense matrix is allocated: a sparse Spark vector's
/// declared size sets the width, and a few bytes can declare 2^31 per row.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_wider_than_the_model_is_refused_before_it_is_converted() {
    let server = start(config()).await.unwrap();
    let mut client = connect(&server, None).await;
    let state = trained_model(&mut client, "two").await;
    let req = RegisterModel {
        name: "as_vector".into(),
        version: None,
        spec: Some(serde_json::json!({"type": "mlp", "hidden": [16, 16], "num_classes": 2})),
        torchscript_path: None,
        features: Some(vec!["v".into()]),
        loss: None,
        input_width: None,
    };
    client
        .register_model(&req, None, Some(state))
        .await
        .unwrap();

    // One sparse vector of declared size 2^31 - 1 holding one value.
    let vector = stoker_core::vectors::spark_vectors(&[(0, i32::MAX, vec![0], vec![1.0])]);
    let batch = RecordBatch::try_from_iter([("v", vector)]).unwrap();
    let e = client
        .predict(&ModelKey::latest("as_vector"), &[], vec![batch])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.message().contains("takes 2 features per row"), "{e}");
    assert!(e.message().contains("give 2147483647"), "{e}");
    assert_eq!(client.health().await.unwrap()["status"], "serving");
}
