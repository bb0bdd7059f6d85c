use std::time::Duration;

use arrow::array::RecordBatch;
use futures::StreamExt;
use stoker_client::{Client, ClientOptions};
use stoker_core::protocol::{CreateJob, ModelKey, TrainRound};
use stoker_core::{ErrorKind, State};
use stoker_server::batcher::BatchLimits;
use stoker_server::{start, ServerConfig};

use crate::common::*;

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
            &ModelKey::latest("shared"),
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
            let model = ModelKey::latest("shared");
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
    let first = ModelKey::latest("first");
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
async fn a_client_that_leaves_mid_exchange_harms_nobody() {
    let server = start(config()).await.unwrap();
    let mut client = connect(&server, None).await;
    trained_model(&mut client, "steady").await;
    let model = ModelKey::latest("steady");
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
    job_with_partition(&mut client, "long", 20_000).await;
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

/// What Spark tasks sharing one server rely on: `keep_existing` never drops
/// another task's partitions, and `release` frees a partition after its
/// last round.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_share_a_job_and_release_partitions() {
    let server = start(config()).await.unwrap();
    let mut client = connect(&server, None).await;
    job_with_partition(&mut client, "shared", 500).await;
    let again = CreateJob {
        keep_existing: true,
        ..job("shared")
    };
    client.create_job(&again, None).await.unwrap();
    // Partition 0 survived the second create_job.
    client
        .train_round(&round("shared", 0, 0), None)
        .await
        .unwrap();
    let last = TrainRound {
        release: true,
        ..round("shared", 0, 1)
    };
    client.train_round(&last, None).await.unwrap();
    // Its last partition released, the job is gone too.
    let e = client
        .train_round(&round("shared", 0, 2), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    // Without keep_existing, create_job starts the job anew.
    job_with_partition(&mut client, "shared", 500).await;
    client.create_job(&job("shared"), None).await.unwrap();
    assert_cache_miss(&mut client, "shared").await;
}

/// A round's partitions on one server share one upload of its input state:
/// the first sends it under an id, the others name the id, and a server
/// that does not hold the id asks for the state instead of training.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rounds_partitions_share_one_upload_of_its_state() {
    let server = start(config()).await.unwrap();
    let mut client = connect(&server, None).await;
    let state = trained_model(&mut client, "s").await;
    for p in 0..2 {
        client
            .put_partition(&key("s", p, "v1"), one(rings(400, p as u64)))
            .await
            .unwrap();
    }
    let named = |partition: u32, id: &str| TrainRound {
        state_id: Some(id.into()),
        steps: Some(1),
        ..round("s", partition, 7)
    };
    // No state under this id yet: the server asks for it and trains nothing.
    let (res, out) = client.train_round(&named(0, "r7"), None).await.unwrap();
    assert!(
        res.needs_state && out.is_empty() && res.samples == 0,
        "{res:?}"
    );
    // Sent once with its id, it serves the other partition by id alone,
    // and both start from the same weights as a request carrying the state.
    let (sent, with_state) = client
        .train_round(&named(0, "r7"), Some(state.clone()))
        .await
        .unwrap();
    assert!(!sent.needs_state && sent.samples > 0);
    let (by_id, from_id) = client.train_round(&named(1, "r7"), None).await.unwrap();
    assert!(!by_id.needs_state && by_id.samples > 0, "{by_id:?}");
    let (_, reference) = client
        .train_round(
            &TrainRound {
                state_id: None,
                ..named(1, "r7")
            },
            Some(state.clone()),
        )
        .await
        .unwrap();
    let weights = |b: &[u8]| State::from_bytes(b).unwrap().tensors;
    assert_eq!(weights(&from_id), weights(&reference));
    assert_ne!(
        weights(&with_state),
        weights(&from_id),
        "different partitions"
    );
    // A new id replaces the old one: the old id is asked for again.
    client
        .train_round(&named(0, "r8"), Some(state.clone()))
        .await
        .unwrap();
    let (res, _) = client.train_round(&named(1, "r7"), None).await.unwrap();
    assert!(res.needs_state, "{res:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_model_dir_the_host_budget_holds_by_unloading_the_least_recent() {
    // One model's artifact (spec + state), measured on a server with room.
    let server = start(config()).await.unwrap();
    let mut client = connect(&server, None).await;
    let state = trained_model(&mut client, "probe").await;
    let one = client.stats().await.unwrap()["models"][0]["host_bytes"]
        .as_u64()
        .unwrap() as usize;
    server.stop().await.unwrap();
    assert!(one > state.len(), "{one} vs the state's {}", state.len());

    // Room for two and a half: registering eight (3x the budget) unloads the
    // least recently used, never the one just registered.
    let budget = one * 5 / 2;
    let server = start(ServerConfig {
        host_model_bytes: budget,
        ..config()
    })
    .await
    .unwrap();
    let mut client = connect(&server, None).await;
    let model = |name: &str| ModelKey::latest(name);
    for i in 0..8 {
        register(&mut client, &format!("m{i}"), &state).await;
        if i == 2 {
            // Used after m2 was registered, so m2 goes before m1 does.
            client
                .predict(&model("m1"), &[], vec![rings(10, 1)])
                .await
                .unwrap();
        }
        let stats = client.stats().await.unwrap();
        if i == 3 {
            assert_eq!(model_names(&stats), ["m1", "m3"], "{stats}");
        }
        let held = stats["tiers"]["host"]["bytes"].as_u64().unwrap() as usize;
        assert!(
            held <= budget,
            "{held} bytes held, budget {budget}: {stats}"
        );
        assert_eq!(stats["tiers"]["host"]["budget_bytes"], budget);
    }
    let stats = client.stats().await.unwrap();
    assert_eq!(model_names(&stats), ["m6", "m7"], "{stats}");
    assert_eq!(stats["tiers"]["host"]["evictions"], 6);
    // An unloaded model is NOT_FOUND (what makes Spark register it again).
    let gone = client
        .predict(&model("m1"), &[], vec![rings(10, 1)])
        .await
        .unwrap_err();
    assert_eq!(gone.kind(), ErrorKind::NotFound, "{gone}");
    register(&mut client, "m1", &state).await;
    let back = client
        .predict(&model("m1"), &[], vec![rings(10, 1)])
        .await
        .unwrap();
    assert_eq!(back[0].num_rows(), 10);
    server.stop().await.unwrap();

    // A model that cannot fit even alone is refused with the budget named,
    // and the server keeps serving what it has.
    let server = start(ServerConfig {
        host_model_bytes: one / 2,
        ..config()
    })
    .await
    .unwrap();
    let mut client = connect(&server, None).await;
    let spec = br#"{"type":"mlp","hidden":[16,16],"num_classes":2}"#.to_vec();
    let req: stoker_core::protocol::RegisterModel =
        serde_json::from_value(serde_json::json!({"name": "big"})).unwrap();
    let refused = client
        .register_model(&req, Some(spec), Some(state.clone()))
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::ResourceExhausted, "{refused}");
    assert!(refused.message().contains("--host-model-mb"), "{refused}");
    let stats = client.stats().await.unwrap();
    assert_eq!(stats["models"].as_array().unwrap().len(), 0, "{stats}");
    assert_eq!(stats["tiers"]["host"]["bytes"], 0);
    client.health().await.unwrap();
    server.stop().await.unwrap();
}

/// The names in a `stats` answer's model list, in its order.
fn model_names(stats: &serde_json::Value) -> Vec<&str> {
    stats["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect()
}
