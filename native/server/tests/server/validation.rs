//! `evaluate`: a state scored on a cached validation partition, what Spark's
//! validation stage calls once per partition and round.

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use stoker_core::evaluation::merged_metrics;
use stoker_core::protocol::{Evaluate, ModelKey, Split};
use stoker_core::ErrorKind;
use stoker_server::start;

use crate::common::*;

fn evaluate(job: &str, partition: u32, state_id: Option<&str>) -> Evaluate {
    Evaluate {
        job: job.into(),
        partition,
        split: Split::Validation,
        version: "v1".into(),
        round: 0,
        state_id: state_id.map(String::from),
        release: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_state_is_scored_on_a_cached_validation_partition() {
    let server = start(config()).await.unwrap();
    let mut client = connect(&server, None).await;
    job_with_partition(&mut client, "val", 2000).await;
    let held_out = rings(600, 2);
    for (p, rows) in [(0u32, 0..400), (1, 400..600)] {
        client
            .put_partition(
                &validation_key("val", p, "v1"),
                one(held_out.slice(rows.start, rows.len())),
            )
            .await
            .unwrap();
    }

    // The job's initial weights, then one trained round's state.
    let initial = client
        .evaluate(&evaluate("val", 0, None), None)
        .await
        .unwrap();
    assert_eq!(initial.rows, 400);
    let (_, state) = client.train_round(&round("val", 0, 0), None).await.unwrap();
    let mut scored = Vec::new();
    for p in 0..2 {
        // The first request sends the state under its id, the second names it.
        let blob = (p == 0).then(|| state.clone());
        let r = client
            .evaluate(&evaluate("val", p, Some("s1")), blob)
            .await
            .unwrap();
        assert!(!r.needs_state);
        scored.push(r);
    }
    let trained = &scored[0];
    assert!(
        trained.metrics["accuracy"].unwrap() > initial.metrics["accuracy"].unwrap(),
        "{:?} then {:?}",
        initial.metrics,
        trained.metrics
    );
    for name in ["loss", "logloss", "accuracy", "auc"] {
        assert!(
            trained.metrics[name].is_some(),
            "{name}: {:?}",
            trained.metrics
        );
    }

    // The merged metrics are those of all 600 rows: accuracy equals what the
    // same state predicts through DoExchange.
    let parts: Vec<String> = scored
        .iter()
        .map(|r| serde_json::to_string(r.evaluation.as_ref().unwrap()).unwrap())
        .collect();
    let merged = merged_metrics(&parts).unwrap();
    assert_eq!(merged["rows"], 600);
    register(&mut client, "val-model", &state).await;
    let predicted = client
        .predict(&ModelKey::latest("val-model"), &[], vec![held_out.clone()])
        .await
        .unwrap();
    let labels = held_out.column(2).as_primitive::<Int64Type>();
    let hits = floats(&predicted, 0)
        .iter()
        .enumerate()
        .filter(|(i, p)| **p as i64 == labels.value(*i))
        .count();
    let accuracy = merged["metrics"]["accuracy"].as_f64().unwrap();
    assert!(
        (accuracy - hits as f64 / 600.0).abs() < 1e-12,
        "{accuracy} vs {hits}/600"
    );

    // The next round's training names the same state without sending it.
    let mut next = round("val", 0, 1);
    next.state_id = Some("s1".into());
    let (r, _) = client.train_round(&next, None).await.unwrap();
    assert!(!r.needs_state);

    // A state id the server does not hold, sent without the state.
    let r = client
        .evaluate(&evaluate("val", 0, Some("other")), None)
        .await
        .unwrap();
    assert!(r.needs_state && r.evaluation.is_none());

    // The last evaluation releases its partition; after it, a cache miss.
    let mut last = evaluate("val", 1, None);
    last.release = true;
    client.evaluate(&last, Some(state.clone())).await.unwrap();
    let e = client
        .evaluate(&evaluate("val", 1, None), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CacheMiss, "{e}");
    let e = client
        .evaluate(&evaluate("nope", 0, None), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let e = client
        .evaluate(&evaluate("val", 0, None), Some(b"not a state".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");

    let stats = client.stats().await.unwrap();
    // Four scored: initial, two partitions, the releasing one (needs_state scores none).
    assert_eq!(stats["evaluations"], 4, "{stats}");
    assert_eq!(client.health().await.unwrap()["status"], "serving");
}
