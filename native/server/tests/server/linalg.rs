//! Matrix jobs and `linalg` (docs/linalg.md): partitions cached by the
//! training put path as matrices, per-partition moments combined in order
//! equal to the whole table's, the dense ops, and the requests refused
//! (a matrix job does not train; a training job has no matrix; a null names
//! its column) without the server stopping.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, RecordBatch};
use stoker_core::linalg::{combine, decode_f64, Moments};
use stoker_core::protocol::{CreateJob, Linalg, MatrixOptions, OnPartition};
use stoker_core::ErrorKind;
use stoker_server::start;

use crate::common::*;

fn matrix_job(name: &str, precision: &str) -> CreateJob {
    serde_json::from_value(serde_json::json!({
        "job": name, "features": ["a", "b", "c"], "label": "",
        "matrix": {"precision": precision},
    }))
    .unwrap()
}

/// Rows `start..start + n` of a three-column table (`c` constant).
fn table(start: usize, n: usize, null_at: Option<usize>) -> RecordBatch {
    let a: Vec<f64> = (start..start + n)
        .map(|i| 1e3 + (i as f64 * 0.7).sin())
        .collect();
    let b: Vec<Option<f64>> = (start..start + n)
        .map(|i| (Some(i) != null_at).then_some(i as f64 * 0.25 - 3.0))
        .collect();
    let c = vec![4.0; n];
    RecordBatch::try_from_iter([
        ("a", Arc::new(Float64Array::from(a)) as ArrayRef),
        ("b", Arc::new(Float64Array::from(b)) as ArrayRef),
        ("c", Arc::new(Float64Array::from(c)) as ArrayRef),
    ])
    .unwrap()
}

fn on(job: &str, partition: u32) -> OnPartition {
    OnPartition {
        job: job.into(),
        partition,
        version: "v1".into(),
        release: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partition_moments_combine_to_the_whole_tables() {
    let server = start(config()).await.unwrap();
    let mut client = connect(&server, None).await;
    for precision in ["float64", "float32"] {
        let name = format!("m-{precision}");
        client
            .create_job(&matrix_job(&name, precision), None)
            .await
            .unwrap();
        let mut combined: Option<Vec<u8>> = None;
        for (p, (start, n)) in [(0, 40), (40, 25), (65, 35)].into_iter().enumerate() {
            client
                .put_partition(&key(&name, p as u32, "v1"), one(table(start, n, None)))
                .await
                .unwrap();
            let got = client
                .linalg(&Linalg::Moments(on(&name, p as u32)), vec![])
                .await
                .unwrap();
            assert_eq!(got.json["rows"], n);
            let bytes = got.blob("result").unwrap().to_vec();
            combined = Some(match combined {
                None => bytes,
                Some(acc) => combine(&acc, &bytes).unwrap(),
            });
        }
        let merged = Moments::from_bytes(combined.as_ref().unwrap()).unwrap();
        let whole = table(0, 100, None);
        let a = floats(std::slice::from_ref(&whole), 0);
        let mean_a = a.iter().sum::<f64>() / 100.0;
        let s_aa: f64 = a.iter().map(|v| (v - mean_a).powi(2)).sum();
        let tol = if precision == "float64" { 1e-9 } else { 1e-3 };
        assert_eq!(merged.rows, 100);
        assert_eq!(merged.columns, vec!["a", "b", "c"]);
        assert!(
            (merged.mean[0] - mean_a).abs() <= tol * mean_a,
            "{precision}"
        );
        assert!(
            (merged.scatter[0] - s_aa).abs() <= tol * s_aa,
            "{precision}"
        );
        assert_eq!(merged.scatter[8], 0.0, "the constant column has no spread");

        // The covariance's leading eigenvector through the server.
        let eigen = client
            .linalg(
                &Linalg::Eigen {
                    k: 2,
                    gramian: false,
                },
                vec![("moments", combined.clone().unwrap())],
            )
            .await
            .unwrap();
        let vectors = decode_f64(eigen.blob("vectors").unwrap(), "vectors").unwrap();
        assert_eq!(vectors.len(), 6);
        assert!(eigen.json["values"][0].as_f64().unwrap() > 0.0);
        let cov = client
            .linalg(
                &Linalg::Matrix {
                    of: "covariance".into(),
                },
                vec![("moments", combined.unwrap())],
            )
            .await
            .unwrap();
        let cov = decode_f64(cov.blob("matrix").unwrap(), "matrix").unwrap();
        assert!((cov[0] - s_aa / 99.0).abs() <= tol * s_aa);
    }
    let stats = client.stats().await.unwrap();
    assert_eq!(stats["linalg_kernels"], 6);
    assert_eq!(stats["linalg_solves"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refusals_fail_only_their_request() {
    let server = start(config()).await.unwrap();
    let mut client = connect(&server, None).await;
    client
        .create_job(&matrix_job("m", "float64"), None)
        .await
        .unwrap();
    // A null is refused at the put, naming the column and row.
    let e = client
        .put_partition(&key("m", 0, "v1"), one(table(0, 10, Some(6))))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(
        e.to_string().contains("'b'") && e.to_string().contains("row 6"),
        "{e}"
    );
    // Nothing cached: a kernel is a cache miss; an unknown job is not found.
    let e = client
        .linalg(&Linalg::Moments(on("m", 0)), vec![])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CacheMiss);
    let e = client
        .linalg(&Linalg::Moments(on("nope", 0)), vec![])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    // A matrix job does not train; a training job has no matrix.
    client
        .put_partition(&key("m", 0, "v1"), one(table(0, 10, None)))
        .await
        .unwrap();
    let e = client
        .train_round(&round("m", 0, 0), None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("matrix job"), "{e}");
    job_with_partition(&mut client, "t", 100).await;
    let e = client
        .linalg(&Linalg::Moments(on("t", 0)), vec![])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("training job"), "{e}");
    // Malformed dense inputs name what is wrong.
    let e = client
        .linalg(
            &Linalg::Eigen {
                k: 1,
                gramian: false,
            },
            vec![],
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("'moments' blob"), "{e}");
    let e = client
        .linalg(
            &Linalg::Orthonormalize { n: 3, k: 2 },
            vec![("matrix", vec![0; 40])],
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("orthonormalize"), "{e}");
    let bad: CreateJob = CreateJob {
        matrix: Some(MatrixOptions {
            precision: "float16".into(),
        }),
        ..matrix_job("bad", "float64")
    };
    let e = client.create_job(&bad, None).await.unwrap_err();
    assert!(e.to_string().contains("float16"), "{e}");
    // And the server still answers, with the good partition's moments.
    let ok = client
        .linalg(&Linalg::Moments(on("m", 0)), vec![])
        .await
        .unwrap();
    assert_eq!(ok.json["rows"], 10);
    let fit = client
        .linalg(
            &Linalg::LeastSquares {
                label: 1,
                intercept: true,
                ridge: 0.0,
            },
            vec![("moments", ok.blob("result").unwrap().to_vec())],
        )
        .await
        .unwrap();
    assert_eq!(fit.json["rank"], 1, "{}", fit.json);
}
