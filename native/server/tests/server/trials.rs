//! Jobs that train on another job's cached partitions (`create_job`'s
//! `data`): the trials of a search share one copy of the data, train on it
//! at once, and each keeps its own model and optimizer.

use stoker_core::protocol::{CreateJob, Evaluate, Split, TrainRound};
use stoker_core::ErrorKind;
use stoker_server::start;

use crate::common::*;

fn trial(name: &str, data: &str, lr: f64) -> CreateJob {
    let mut req = job(name);
    req.data = Some(data.into());
    req.optimizer = Some(serde_json::json!({"name": "adam", "lr": lr}));
    req.keep_existing = true;
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trials_share_the_data_jobs_partitions() {
    let server = start(config()).await.unwrap();
    let mut client = connect(&server, None).await;
    job_with_partition(&mut client, "data", 2000).await;
    client
        .put_partition(&validation_key("data", 0, "v1"), one(rings(500, 3)))
        .await
        .unwrap();
    for (name, lr) in [("fast", 0.05), ("slow", 0.0001)] {
        client
            .create_job(&trial(name, "data", lr), None)
            .await
            .unwrap();
    }
    // Both trials train on partition 0 at once, on two connections.
    let mut other = connect(&server, None).await;
    let (fast_round, slow_round) = (round("fast", 0, 0), round("slow", 0, 0));
    let (fast, slow) = tokio::join!(
        client.train_round(&fast_round, None),
        other.train_round(&slow_round, None),
    );
    let ((fast, fast_state), (slow, _)) = (fast.unwrap(), slow.unwrap());
    assert_eq!((fast.samples, slow.samples), (2000, 2000));
    assert!(fast.loss_last < slow.loss_last, "{fast:?} vs {slow:?}");
    // Validation rows are the data job's too.
    let scored = client
        .evaluate(
            &Evaluate {
                job: "fast".into(),
                partition: 0,
                split: Split::Validation,
                version: "v1".into(),
                round: 0,
                state_id: None,
                release: false,
            },
            Some(fast_state),
        )
        .await
        .unwrap();
    assert_eq!(scored.rows, 500);
    let stats = client.stats().await.unwrap();
    assert_eq!(stats["partitions_in"], 2, "{stats}");
    let jobs = stats["jobs"].as_array().unwrap();
    let data = jobs.iter().find(|j| j["name"] == "data").unwrap();
    assert_eq!(data["partitions"], 2, "{stats}");
    // Dropping a trial leaves the data (and the other trial) in place.
    client.drop_job("fast").await.unwrap();
    // A trial's release frees its models, not the shared data.
    let last = TrainRound {
        release: true,
        ..round("slow", 0, 1)
    };
    client.train_round(&last, None).await.unwrap();
    let stats = client.stats().await.unwrap();
    let data = stats["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == "data");
    assert_eq!(data.unwrap()["partitions"], 2, "{stats}");
    // Dropping the data job drops the trials that train on it.
    client.drop_job("data").await.unwrap();
    let stats = client.stats().await.unwrap();
    assert_eq!(stats["jobs"].as_array().unwrap().len(), 0, "{stats}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trial_without_its_data_job_is_not_found_and_without_data_a_miss() {
    let server = start(config()).await.unwrap();
    let mut client = connect(&server, None).await;
    client
        .create_job(&trial("t", "absent", 0.01), None)
        .await
        .unwrap();
    let e = client
        .train_round(&round("t", 0, 0), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("job 'absent'"), "{e}");
    // The data job exists but holds no partitions: a miss, sent to the data job.
    client.create_job(&job("absent"), None).await.unwrap();
    assert_cache_miss(&mut client, "t").await;
    client
        .put_partition(&key("absent", 0, "v1"), one(rings(300, 1)))
        .await
        .unwrap();
    let (res, _) = client.train_round(&round("t", 0, 0), None).await.unwrap();
    assert_eq!(res.samples, 300);
    // A job cannot be its own data job.
    let e = client
        .create_job(&trial("self", "self", 0.01), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    server.stop().await.unwrap();
}
