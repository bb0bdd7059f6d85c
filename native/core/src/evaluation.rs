//! Held-out scores: what a server measures of a model on one cached
//! validation partition, kept as sums that add across partitions, and the
//! metrics read from their total.
//!
//! Validation partitions stay on their servers like training partitions; a
//! round's validation sends each server the averaged state and gets back one
//! [`Evaluation`] per partition, a few numbers and a bounded score histogram,
//! never rows or predictions. The driver merges them in partition order and
//! reads the metrics once ([`Evaluation::metrics`]), so a metric over many
//! partitions is the metric of their union: RMSE, MAE, R², accuracy and log
//! loss exactly (up to float rounding), AUC exactly while the scores'
//! distinct values fit [`MAX_SCORE_BINS`] (below).
//!
//! The definitions follow Spark ML's evaluators, so a user can check them
//! against `RegressionEvaluator`, `BinaryClassificationEvaluator` (areaUnderROC,
//! ties counted half, as its trapezoids do) and
//! `MulticlassClassificationEvaluator` (accuracy; logLoss with probabilities
//! clipped to [1e-15, 1 - 1e-15]) on the same predictions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::task::Task;

/// The most distinct score keys a histogram keeps. A validation set with
/// more distinct positive-class probabilities than this is binned by
/// dropping low mantissa bits of the float32 score (one bit per halving), so
/// the histogram (and the JSON a server returns) stays under about 300 KB;
/// AUC then counts pairs whose scores share a bin as ties. 16,384 distinct
/// scores with 23 mantissa bits over the few exponents real probabilities
/// span keep their first dropped bit beyond about 10^-4 relative.
pub const MAX_SCORE_BINS: usize = 1 << 14;

/// Spark's `MulticlassClassificationEvaluator` clips probabilities to this
/// before taking the log (its `eps`), so one confident miss is large, not
/// infinite.
pub const LOG_LOSS_EPS: f64 = 1e-15;

/// The metrics an evaluation of `task` reports, in the order they are shown.
pub fn metric_names(task: Task) -> &'static [&'static str] {
    match task {
        Task::Regression => &["loss", "rmse", "mse", "mae", "r2"],
        Task::Binary | Task::Multiclass { classes: 2 } => &["loss", "logloss", "accuracy", "auc"],
        Task::Multiclass { .. } => &["loss", "logloss", "accuracy"],
    }
}

/// Every metric name any task reports (what `evalMetric` accepts).
pub const ALL_METRICS: &[&str] = &[
    "loss", "rmse", "mse", "mae", "r2", "logloss", "accuracy", "auc",
];

/// Whether a larger value of `metric` is better (accuracy, AUC, R²) or a
/// smaller one (losses and errors). None for an unknown name.
pub fn higher_is_better(metric: &str) -> Option<bool> {
    match metric {
        "accuracy" | "auc" | "r2" => Some(true),
        "loss" | "rmse" | "mse" | "mae" | "logloss" => Some(false),
        _ => None,
    }
}

/// Sums over one or more validation partitions' rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// The model's task (`Task::encode`): evaluations of different tasks do
    /// not merge.
    pub task: String,
    pub rows: u64,
    /// Σ of the training loss per row (the model's own loss: mse, cross
    /// entropy or bce on its outputs).
    pub loss_sum: f64,
    /// Regression: Σ (prediction − label)², Σ |prediction − label|.
    #[serde(default)]
    pub squared_error_sum: f64,
    #[serde(default)]
    pub absolute_error_sum: f64,
    /// Regression: the labels' mean and Σ (label − mean)² (merged with Chan's
    /// update, which keeps R² accurate where Σy² − (Σy)²/n would cancel).
    #[serde(default)]
    pub label_mean: f64,
    #[serde(default)]
    pub label_m2: f64,
    /// Classifiers: rows whose predicted class is the label.
    #[serde(default)]
    pub correct: u64,
    /// Classifiers: Σ −ln(clip(p[label])).
    #[serde(default)]
    pub log_loss_sum: f64,
    /// Two-class classifiers: the positive class's scores.
    #[serde(default)]
    pub scores: ScoreHistogram,
}

/// Counts of positive and negative rows per score key, ascending by key. A
/// key is the float32 score's bits shifted right by `shift`: for scores in
/// [0, 1] the bits of a non-negative float sort as the floats do, so
/// `shift` 0 is exact and each further bit merges neighbouring scores.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScoreHistogram {
    pub shift: u32,
    pub keys: Vec<u32>,
    pub positives: Vec<u64>,
    pub negatives: Vec<u64>,
}

impl ScoreHistogram {
    /// The histogram of `(score, is_positive)` pairs.
    pub fn of(scores: impl Iterator<Item = (f32, bool)>) -> ScoreHistogram {
        let mut counts: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
        for (score, positive) in scores {
            // max(0.0) maps NaN and −0.0 (whose bits sort above every
            // positive float) to +0.0.
            let entry = counts.entry(score.max(0.0).to_bits()).or_default();
            if positive {
                entry.0 += 1;
            } else {
                entry.1 += 1;
            }
        }
        let mut h = ScoreHistogram::default();
        for (key, (p, n)) in counts {
            h.push(key, p, n);
        }
        h.bound();
        h
    }

    fn push(&mut self, key: u32, positives: u64, negatives: u64) {
        if self.keys.last() == Some(&key) {
            // Saturating: counts past u64 are no real validation set (a hostile
            // server's), and must not wrap into small ones.
            let last = self.keys.len() - 1;
            self.positives[last] = self.positives[last].saturating_add(positives);
            self.negatives[last] = self.negatives[last].saturating_add(negatives);
        } else {
            self.keys.push(key);
            self.positives.push(positives);
            self.negatives.push(negatives);
        }
    }

    fn check(&self) -> Result<()> {
        let n = self.keys.len();
        if self.positives.len() != n || self.negatives.len() != n || self.shift > 32 {
            return Err(Error::invalid(format!(
                "score histogram has {n} keys, {} positive and {} negative counts, shift {}",
                self.positives.len(),
                self.negatives.len(),
                self.shift
            )));
        }
        if self.keys.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::invalid("score histogram keys are not ascending"));
        }
        Ok(())
    }

    /// This histogram's keys at a coarser `shift`.
    fn coarsened(&self, shift: u32) -> ScoreHistogram {
        let by = shift - self.shift;
        let mut h = ScoreHistogram {
            shift,
            ..ScoreHistogram::default()
        };
        for i in 0..self.keys.len() {
            let key = self.keys[i].checked_shr(by).unwrap_or(0);
            h.push(key, self.positives[i], self.negatives[i]);
        }
        h
    }

    /// Coarsens until at most [`MAX_SCORE_BINS`] keys remain.
    fn bound(&mut self) {
        while self.keys.len() > MAX_SCORE_BINS {
            *self = self.coarsened(self.shift + 1);
        }
    }

    fn merge(&self, other: &ScoreHistogram) -> ScoreHistogram {
        let shift = self.shift.max(other.shift);
        let (a, b) = (self.coarsened(shift), other.coarsened(shift));
        let mut h = ScoreHistogram {
            shift,
            ..ScoreHistogram::default()
        };
        let (mut i, mut j) = (0, 0);
        while i < a.keys.len() || j < b.keys.len() {
            let take_a = j == b.keys.len() || (i < a.keys.len() && a.keys[i] <= b.keys[j]);
            if take_a {
                h.push(a.keys[i], a.positives[i], a.negatives[i]);
                i += 1;
            } else {
                h.push(b.keys[j], b.positives[j], b.negatives[j]);
                j += 1;
            }
        }
        h.bound();
        h
    }

    /// Area under the ROC curve: the chance that a random positive scores
    /// above a random negative, ties counted half (the trapezoids of the ROC
    /// curve through every distinct score). NaN without both classes.
    pub fn auc(&self) -> f64 {
        let (mut negatives_below, mut area) = (0.0f64, 0.0f64);
        for i in 0..self.keys.len() {
            let (p, n) = (self.positives[i] as f64, self.negatives[i] as f64);
            area += p * (negatives_below + 0.5 * n);
            negatives_below += n;
        }
        let positives: f64 = self.positives.iter().map(|&p| p as f64).sum();
        if positives == 0.0 || negatives_below == 0.0 {
            return f64::NAN;
        }
        area / (positives * negatives_below)
    }
}

impl Evaluation {
    /// Scores a model of `task`: `outputs` holds what the engine predicts per
    /// row (the value, P(class 1), or `classes` probabilities: see
    /// [`crate::Outputs`]), `labels` the labels as numbers, and `loss_sum`
    /// the model's loss summed over the rows.
    pub fn score(task: Task, outputs: &[f32], labels: &[f64], loss_sum: f64) -> Result<Evaluation> {
        let width = task.outputs();
        if outputs.len() != labels.len() * width {
            return Err(Error::invalid(format!(
                "{} outputs for {} rows of a {} model",
                outputs.len(),
                labels.len(),
                task.encode()
            )));
        }
        let mut e = Evaluation::empty(task);
        e.rows = labels.len() as u64;
        e.loss_sum = loss_sum;
        match task {
            Task::Regression => {
                let mut n = 0.0;
                for (&p, &y) in outputs.iter().zip(labels) {
                    let err = p as f64 - y;
                    e.squared_error_sum += err * err;
                    e.absolute_error_sum += err.abs();
                    n += 1.0;
                    let delta = y - e.label_mean;
                    e.label_mean += delta / n;
                    e.label_m2 += delta * (y - e.label_mean);
                }
            }
            Task::Binary => {
                for (&p, &y) in outputs.iter().zip(labels) {
                    let positive = y >= 0.5;
                    e.correct += u64::from((p >= 0.5) == positive);
                    let p_true = if positive { p as f64 } else { 1.0 - p as f64 };
                    e.log_loss_sum += -clip(p_true).ln();
                }
                e.scores =
                    ScoreHistogram::of(outputs.iter().zip(labels).map(|(&p, &y)| (p, y >= 0.5)));
            }
            Task::Multiclass { classes } => {
                for (row, &y) in outputs.chunks_exact(classes).zip(labels) {
                    let label = y as usize;
                    let mut best = 0;
                    for (i, &p) in row.iter().enumerate() {
                        if p > row[best] {
                            best = i;
                        }
                    }
                    e.correct += u64::from(best == label);
                    let p_true = row.get(label).copied().unwrap_or(0.0) as f64;
                    e.log_loss_sum += -clip(p_true).ln();
                }
                if classes == 2 {
                    e.scores = ScoreHistogram::of(
                        outputs
                            .chunks_exact(2)
                            .zip(labels)
                            .map(|(row, &y)| (row[1], y >= 0.5)),
                    );
                }
            }
        }
        Ok(e)
    }

    /// An evaluation of no rows (what merging starts from).
    pub fn empty(task: Task) -> Evaluation {
        Evaluation {
            task: task.encode(),
            rows: 0,
            loss_sum: 0.0,
            squared_error_sum: 0.0,
            absolute_error_sum: 0.0,
            label_mean: 0.0,
            label_m2: 0.0,
            correct: 0,
            log_loss_sum: 0.0,
            scores: ScoreHistogram::default(),
        }
    }

    /// Reads an evaluation a server sent (JSON), checking its histogram.
    pub fn from_json(json: &str) -> Result<Evaluation> {
        let e: Evaluation = serde_json::from_str(json)
            .map_err(|e| Error::invalid(format!("malformed evaluation: {e}")))?;
        Task::decode(&e.task)?;
        e.scores.check()?;
        Ok(e)
    }

    /// The evaluation of both partitions' rows together.
    pub fn merge(&self, other: &Evaluation) -> Result<Evaluation> {
        if self.task != other.task {
            return Err(Error::invalid(format!(
                "evaluations of a {} and a {} model do not merge",
                self.task, other.task
            )));
        }
        let overflow = || Error::invalid("evaluations hold more rows than a u64 counts");
        let rows = self.rows.checked_add(other.rows).ok_or_else(overflow)?;
        let correct = self
            .correct
            .checked_add(other.correct)
            .ok_or_else(overflow)?;
        let (na, nb) = (self.rows as f64, other.rows as f64);
        let (label_mean, label_m2) = if rows == 0 {
            (0.0, 0.0)
        } else {
            let delta = other.label_mean - self.label_mean;
            let n = na + nb;
            (
                self.label_mean + delta * nb / n,
                self.label_m2 + other.label_m2 + delta * delta * na * nb / n,
            )
        };
        Ok(Evaluation {
            task: self.task.clone(),
            rows,
            loss_sum: self.loss_sum + other.loss_sum,
            squared_error_sum: self.squared_error_sum + other.squared_error_sum,
            absolute_error_sum: self.absolute_error_sum + other.absolute_error_sum,
            label_mean,
            label_m2,
            correct,
            log_loss_sum: self.log_loss_sum + other.log_loss_sum,
            scores: self.scores.merge(&other.scores),
        })
    }

    /// The metrics of [`metric_names`] for this evaluation's task, by name.
    /// A metric an empty set cannot define (or R² of constant labels, AUC of
    /// one class) is NaN.
    pub fn metrics(&self) -> Result<BTreeMap<String, f64>> {
        let task = Task::decode(&self.task)?;
        let n = self.rows as f64;
        let per_row = |sum: f64| if self.rows == 0 { f64::NAN } else { sum / n };
        let mut m = BTreeMap::new();
        for &name in metric_names(task) {
            let value = match name {
                "loss" => per_row(self.loss_sum),
                "mse" => per_row(self.squared_error_sum),
                "rmse" => per_row(self.squared_error_sum).sqrt(),
                "mae" => per_row(self.absolute_error_sum),
                "r2" if self.label_m2 > 0.0 => 1.0 - self.squared_error_sum / self.label_m2,
                "r2" => f64::NAN,
                "logloss" => per_row(self.log_loss_sum),
                "accuracy" => per_row(self.correct as f64),
                "auc" => self.scores.auc(),
                _ => f64::NAN,
            };
            m.insert(name.to_string(), value);
        }
        Ok(m)
    }
}

fn clip(p: f64) -> f64 {
    p.clamp(LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS)
}

/// The metrics of the union of `evaluations` (JSON, as servers return them),
/// merged in the order given, with their row count: `{"rows": n,
/// "metrics": {...}}`. What the JVM driver calls once per round.
pub fn merged_metrics(evaluations: &[String]) -> Result<serde_json::Value> {
    let mut iter = evaluations.iter();
    let first = iter
        .next()
        .ok_or_else(|| Error::invalid("no evaluations to merge"))?;
    let mut total = Evaluation::from_json(first)?;
    for json in iter {
        total = total.merge(&Evaluation::from_json(json)?)?;
    }
    let metrics = total.metrics()?;
    // JSON has no NaN: an undefined metric is null.
    let metrics: serde_json::Map<String, serde_json::Value> = metrics
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, Into::into),
            )
        })
        .collect();
    Ok(serde_json::json!({"rows": total.rows, "task": total.task, "metrics": metrics}))
}

#[cfg(test)]
mod tests;
