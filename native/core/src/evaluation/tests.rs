use super::*;

/// A deterministic stream of numbers in [0, 1) (no rand dependency here).
fn uniform(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64
        })
        .collect()
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + a.abs().max(b.abs()))
}

/// AUC by counting every (positive, negative) pair, ties half.
fn pairwise_auc(scores: &[f32], labels: &[f64]) -> f64 {
    let (mut wins, mut pairs) = (0.0, 0.0);
    for (i, &si) in scores.iter().enumerate() {
        for (j, &sj) in scores.iter().enumerate() {
            if labels[i] == 1.0 && labels[j] == 0.0 {
                pairs += 1.0;
                wins += if si > sj {
                    1.0
                } else if si == sj {
                    0.5
                } else {
                    0.0
                };
            }
        }
    }
    wins / pairs
}

#[test]
fn regression_metrics_are_spark_regression_evaluators() {
    let labels = [1.0, 2.0, 4.0, 7.0];
    let preds = [1.5f32, 2.0, 3.0, 8.0];
    let e = Evaluation::score(Task::Regression, &preds, &labels, 2.25).unwrap();
    let m = e.metrics().unwrap();
    // errors 0.5, 0, -1, 1: SSE 2.25, SAE 2.5; mean label 3.5, SST 21.
    assert!(close(m["mse"], 2.25 / 4.0, 1e-15));
    assert!(close(m["rmse"], (2.25f64 / 4.0).sqrt(), 1e-15));
    assert!(close(m["mae"], 2.5 / 4.0, 1e-15));
    assert!(close(m["r2"], 1.0 - 2.25 / 21.0, 1e-15));
    assert!(close(m["loss"], 2.25 / 4.0, 1e-15));
    assert_eq!(m.len(), 5, "{m:?}");
}

#[test]
fn merged_partitions_give_the_metrics_of_their_union() {
    let n = 1000;
    let labels: Vec<f64> = uniform(n, 1).iter().map(|u| 1e6 + 10.0 * u).collect();
    let preds: Vec<f32> = uniform(n, 2)
        .iter()
        .zip(&labels)
        .map(|(u, y)| (y + u - 0.5) as f32)
        .collect();
    let whole = Evaluation::score(Task::Regression, &preds, &labels, 0.0).unwrap();
    for cut in [1, 10, 333, 999] {
        let a = Evaluation::score(Task::Regression, &preds[..cut], &labels[..cut], 0.0).unwrap();
        let b = Evaluation::score(Task::Regression, &preds[cut..], &labels[cut..], 0.0).unwrap();
        let (m, w) = (
            a.merge(&b).unwrap().metrics().unwrap(),
            whole.metrics().unwrap(),
        );
        for k in ["rmse", "mae", "r2"] {
            assert!(
                close(m[k], w[k], 1e-9),
                "{k} at cut {cut}: {} vs {}",
                m[k],
                w[k]
            );
        }
    }
    // Labels near 1e6 with variance ~8: the naive Σy² − (Σy)²/n would lose
    // most digits of SST; the merged mean/M2 keeps R² to 1e-9.
    assert!(whole.metrics().unwrap()["r2"] > 0.9);
}

#[test]
fn binary_auc_is_the_pairwise_probability_with_ties_half() {
    let n = 300;
    let u = uniform(n, 7);
    let labels: Vec<f64> = uniform(n, 8)
        .iter()
        .map(|&v| if v < 0.4 { 1.0 } else { 0.0 })
        .collect();
    // Scores rounded to 0.05 make many ties; positives score a little higher.
    let scores: Vec<f32> = u
        .iter()
        .zip(&labels)
        .map(|(&v, &y)| (((v * 0.8 + 0.2 * y) * 20.0).round() / 20.0) as f32)
        .collect();
    let e = Evaluation::score(Task::Binary, &scores, &labels, 0.0).unwrap();
    let m = e.metrics().unwrap();
    assert!(
        close(m["auc"], pairwise_auc(&scores, &labels), 1e-12),
        "{}",
        m["auc"]
    );
    // Merged from three partitions: the same.
    let parts: Vec<String> = [0..50, 50..51, 51..300]
        .into_iter()
        .map(|r| {
            serde_json::to_string(
                &Evaluation::score(Task::Binary, &scores[r.clone()], &labels[r], 0.0).unwrap(),
            )
            .unwrap()
        })
        .collect();
    let merged = merged_metrics(&parts).unwrap();
    assert_eq!(merged["rows"], 300);
    assert!(close(
        merged["metrics"]["auc"].as_f64().unwrap(),
        m["auc"],
        1e-12
    ));
    let correct = scores
        .iter()
        .zip(&labels)
        .filter(|(&s, &y)| (s >= 0.5) == (y == 1.0))
        .count();
    assert!(close(m["accuracy"], correct as f64 / n as f64, 1e-15));
}

#[test]
fn a_two_class_softmax_scores_auc_on_its_second_probability() {
    let labels = [0.0, 1.0, 1.0, 0.0];
    let probs = [0.9f32, 0.1, 0.3, 0.7, 0.6, 0.4, 0.2, 0.8];
    let m = Evaluation::score(Task::Multiclass { classes: 2 }, &probs, &labels, 0.0)
        .unwrap()
        .metrics()
        .unwrap();
    // p1 = 0.1, 0.7, 0.4, 0.8 for labels 0, 1, 1, 0: of the pairs (0.7, 0.1),
    // (0.7, 0.8), (0.4, 0.1), (0.4, 0.8), two are won.
    assert!(close(m["auc"], 0.5, 1e-15));
    assert!(close(m["accuracy"], 0.5, 1e-15));
    let three = Evaluation::score(
        Task::Multiclass { classes: 3 },
        &[0.2, 0.3, 0.5],
        &[2.0],
        0.0,
    )
    .unwrap();
    assert!(!three.metrics().unwrap().contains_key("auc"));
}

#[test]
fn log_loss_clips_a_certain_miss_as_spark_does() {
    let m = Evaluation::score(Task::Binary, &[0.0], &[1.0], 0.0)
        .unwrap()
        .metrics()
        .unwrap();
    assert!(
        close(m["logloss"], -(1e-15f64).ln(), 1e-12),
        "{}",
        m["logloss"]
    );
    let m = Evaluation::score(
        Task::Multiclass { classes: 3 },
        &[0.25, 0.25, 0.5],
        &[2.0],
        0.0,
    )
    .unwrap()
    .metrics()
    .unwrap();
    assert!(close(m["logloss"], -(0.5f64).ln(), 1e-15));
}

#[test]
fn many_distinct_scores_are_binned_within_the_bound_and_stay_close() {
    let n = 3 * MAX_SCORE_BINS;
    let labels: Vec<f64> = uniform(n, 3)
        .iter()
        .map(|&v| if v < 0.5 { 1.0 } else { 0.0 })
        .collect();
    let scores: Vec<f32> = uniform(n, 4)
        .iter()
        .zip(&labels)
        .map(|(&v, &y)| (0.7 * v + 0.3 * y) as f32)
        .collect();
    let e = Evaluation::score(Task::Binary, &scores, &labels, 0.0).unwrap();
    assert!(e.scores.keys.len() <= MAX_SCORE_BINS);
    assert!(e.scores.shift > 0);
    // Exact AUC by sorting (pairwise is too slow at this size).
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let exact = ScoreHistogram {
        shift: 0,
        ..ScoreHistogram::default()
    };
    let exact = order.iter().fold(exact, |mut h, &i| {
        h.push(
            scores[i].to_bits(),
            u64::from(labels[i] == 1.0),
            u64::from(labels[i] == 0.0),
        );
        h
    });
    assert!(
        (e.scores.auc() - exact.auc()).abs() < 1e-4,
        "{} vs {}",
        e.scores.auc(),
        exact.auc()
    );
}

#[test]
fn what_does_not_fit_is_refused_by_name() {
    let r = Evaluation::score(Task::Regression, &[1.0], &[1.0], 0.0).unwrap();
    let b = Evaluation::score(Task::Binary, &[1.0], &[1.0], 0.0).unwrap();
    let err = r.merge(&b).unwrap_err().to_string();
    assert!(
        err.contains("regression") && err.contains("binary"),
        "{err}"
    );
    let err = Evaluation::score(Task::Multiclass { classes: 3 }, &[0.5; 4], &[1.0, 2.0], 0.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("4 outputs for 2 rows"), "{err}");
    let mut bad = serde_json::to_value(&b).unwrap();
    bad["scores"]["keys"] = serde_json::json!([3, 2]);
    bad["scores"]["positives"] = serde_json::json!([1, 1]);
    bad["scores"]["negatives"] = serde_json::json!([0, 0]);
    let err = Evaluation::from_json(&bad.to_string())
        .unwrap_err()
        .to_string();
    assert!(err.contains("not ascending"), "{err}");
    assert!(merged_metrics(&[]).is_err());
    let empty = Evaluation::empty(Task::Regression).metrics().unwrap();
    assert!(empty["rmse"].is_nan() && empty["r2"].is_nan());
}

#[test]
fn every_metric_has_a_direction() {
    for name in ALL_METRICS {
        assert!(higher_is_better(name).is_some(), "{name}");
    }
    assert_eq!(higher_is_better("areaUnderPR"), None);
}
